"""The DeepSpeed-wrapped policy that one trainer process holds.

Owns: the DeepSpeed engine around the policy (loaded by `trainer.policy_init`, configured by
`trainer.ds_config`) and its scheduler; one optimizer step of GRPO (`train_step`: logps recomputed, IS correction, loss, backward
per micro-batch, step) with TRL-named metrics reduced over ranks; full-weight export for the weight
sync and HF folders (ZeRO-3 gathered bucket by bucket, LoRA merged); checkpoint save/load (RNG state: `trainer.rng_state`).
Does not know: where batches come from, the sampler (beyond the weight push's bucketing rule,
`sampler.weights.buckets`, which its gathers follow), MLflow, cadences. It runs inside a process
whose torch.distributed default group is already initialised (gloo on CPU, nccl on GPU).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import torch

from sampler.weights.buckets import weight_buckets
from trainer.batch import TrainBatch, split_micro_batches
from trainer.checkpoints import ENGINE_TAG, fsync_tree
from trainer.config import GRPOSettings, ModelConfig
from trainer.ds_config import build_ds_config, warmup_steps
from trainer.loss import completion_logps, grpo_loss, importance_sampling_ratio
from trainer.policy_init import load_policy, make_optimizer
from trainer.rng_state import load_rng_state, save_rng_state

_LORA_PREFIX = "base_model.model."
# DeepSpeed's ops that training here never calls but DeepSpeed would JIT-compile anyway.
_UNUSED_OPS = ("deepspeed_shm_comm",)


def _skip_unused_ops() -> None:
    """Keep DeepSpeed from compiling C++ that training never runs.

    Its CPU comm backend builds the shared-memory all-reduce op (`deepspeed_shm_comm`) whenever it
    starts, for its inference all-reduce (AutoTP) only: training's collectives go through
    torch.distributed. The build took 30-55 s of a 2-core run's start-up, and it is redone whenever
    the cached build was made from another environment (the cache is per user, keyed by the op's
    name, while the build command names the venv's paths). Marked incompatible, the op is skipped
    exactly as on a platform without it (DeepSpeed keeps that table as one dict for such edits).
    """
    import deepspeed.ops

    table = deepspeed.ops.__compatible_ops__
    for name in _UNUSED_OPS:
        table[name] = False


class PolicyEngine:
    """The trainable policy under DeepSpeed, for one trainer rank."""

    def __init__(
        self,
        model_path: str,
        settings: GRPOSettings,
        model_cfg: ModelConfig,
        total_steps: int,
        ds_config: dict[str, Any] | None = None,
    ) -> None:
        import deepspeed
        import torch.distributed as dist
        from transformers import AutoTokenizer, get_scheduler, set_seed

        if not dist.is_initialized():
            raise RuntimeError(
                "PolicyEngine needs torch.distributed initialised (RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT "
                "and init_process_group): launch it with trainer.dist_launch, torchrun or Ray Train"
            )
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        _skip_unused_ops()
        deepspeed.init_distributed(dist_backend=dist.get_backend())
        self.settings = settings
        self.model_cfg = model_cfg
        self.model_path = model_path
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        self.total_steps = total_steps
        self._step = 0
        # Same seed on every rank, before anything random (LoRA init), like HF Trainer's set_seed.
        set_seed(settings.seed)
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        if self.tokenizer.pad_token_id is None:
            raise ValueError(
                f"the tokenizer of {model_path} has no pad token: set one in its tokenizer_config.json"
            )
        model, self.ref_model = load_policy(model_path, settings, model_cfg)
        self.model_dtype = model.dtype
        self.ds_config = build_ds_config(settings, self.world_size, ds_config)
        self.zero_stage = int(self.ds_config["zero_optimization"].get("stage", 0))
        warmup = warmup_steps(settings, total_steps)

        def make_scheduler(opt: Any) -> Any:
            return get_scheduler(
                settings.lr_scheduler_type,
                opt,
                num_warmup_steps=warmup,
                num_training_steps=total_steps,
            )

        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model,
            optimizer=make_optimizer(model, settings),
            lr_scheduler=make_scheduler,
            config=self.ds_config,
        )
        if self.ref_model is not None:
            self.ref_model.to(self.engine.device)

    # ------------------------------------------------------------------ properties

    @property
    def step(self) -> int:
        """Optimizer steps taken (restored by load_checkpoint)."""
        return self._step

    @property
    def module(self) -> torch.nn.Module:
        return self.engine.module

    def _base_model(self) -> torch.nn.Module:
        m = self.engine.module
        return m.get_base_model() if self.model_cfg.use_peft else m

    # ------------------------------------------------------------------ training

    def _ref_logps(self, mb: TrainBatch) -> torch.Tensor:
        with torch.no_grad():
            if self.model_cfg.use_peft:
                with self.engine.module.disable_adapter():
                    lp, _ = self._logps(self.engine, mb)
            else:
                assert self.ref_model is not None
                lp, _ = self._logps(self.ref_model, mb)
        return lp

    def _logps(self, model: Any, mb: TrainBatch) -> tuple[torch.Tensor, torch.Tensor]:
        return completion_logps(
            model,
            mb.input_ids,
            mb.attention_mask,
            mb.completion_length,
            self.settings.temperature,
            mb.position_ids,
        )

    def train_step(
        self, batch: TrainBatch, num_items_in_batch: int | None = None
    ) -> dict[str, float]:
        """This rank's share of one optimizer step; returns TRL-named metrics reduced over ranks.

        `batch` holds per_device_train_batch_size x gradient_accumulation_steps samples (this rank's
        share). `num_items_in_batch`: loss tokens of the whole step over all ranks (dapo's
        normaliser); computed here with an all-reduce when not given. Collective: every rank calls it.
        """
        import torch.distributed as dist

        s = self.settings
        gas = s.gradient_accumulation_steps
        expected = s.per_device_train_batch_size * gas
        if batch.size != expected:
            raise ValueError(
                f"train_step got {batch.size} samples but per_device_train_batch_size x gradient_accumulation_steps "
                f"= {expected}: give each rank exactly its share of the step"
            )
        device = self.engine.device
        batch = batch.to(device)
        if num_items_in_batch is None:
            n = torch.tensor(float(batch.num_loss_tokens), device=device)
            dist.all_reduce(n)
            num_items_in_batch = int(n.item())
        lr = float(self.scheduler.get_last_lr()[0])
        micro_sums: list[dict[str, tuple[float, float]]] = []
        is_stats: list[dict[str, float]] = []
        loss_total = 0.0
        own_norm = None
        for mb in split_micro_batches(batch, gas):
            logps, ent = self._logps(self.engine, mb)
            mask = mb.completion_mask
            is_ratio = None
            if s.vllm_importance_sampling_correction:
                # old logps == current logps (detached): each batch gets exactly one optimizer step
                corr = importance_sampling_ratio(
                    logps,
                    mb.sampler_logprobs,
                    mask,
                    s.importance_sampling_mode,
                    s.vllm_importance_sampling_clip_min,
                    s.vllm_importance_sampling_clip_max,
                )
                is_ratio = corr.ratio
                is_stats.append(corr.metrics)
            out = grpo_loss(
                logps,
                mb.advantages,
                mask,
                loss_type=s.loss_type,
                epsilon_low=s.epsilon,
                epsilon_high=s.epsilon_upper,
                beta=s.beta,
                ref_logps=self._ref_logps(mb) if s.beta != 0.0 else None,
                is_ratio=is_ratio,
                entropies=ent,
                max_completion_length=s.max_completion_length,
                num_items_in_batch=num_items_in_batch,
                num_processes=self.world_size,
                gradient_accumulation_steps=gas,
            )
            # The loss is already normalised for accumulation (TRL's convention): no DeepSpeed rescale.
            self.engine.backward(out.loss, scale_wrt_gas=False)
            if self.zero_stage == 0 and self.engine.is_gradient_accumulation_boundary():
                # DeepSpeed's non-ZeRO fp32 path clips without keeping the norm; the gradients
                # are all-reduced by now, so this is the norm it clips by.
                grads = [p.grad for p in self.engine.module.parameters() if p.grad is not None]
                own_norm = torch.nn.utils.get_total_norm(grads)
            self.engine.step()
            loss_total += float(out.loss.detach().item())
            micro_sums.append(out.token_sums)
        self._step += 1
        grad_norm = self.engine.get_global_grad_norm()
        if grad_norm is None:
            grad_norm = own_norm
        return self._reduce_metrics(micro_sums, is_stats, loss_total, grad_norm, lr)

    def _reduce_metrics(
        self,
        micro_sums: list[dict[str, tuple[float, float]]],
        is_stats: list[dict[str, float]],
        loss_total: float,
        grad_norm: Any,
        lr: float,
    ) -> dict[str, float]:
        """One all-reduce for everything: TRL's per-micro-batch global means, then their mean."""
        import torch.distributed as dist

        names = sorted(micro_sums[0])
        sums = torch.tensor([[ms[n][0] for n in names] for ms in micro_sums], dtype=torch.float64)
        counts = torch.tensor([[ms[n][1] for n in names] for ms in micro_sums], dtype=torch.float64)
        is_names = sorted(is_stats[0]) if is_stats else []
        is_vals = torch.tensor([[st[n] for n in is_names] for st in is_stats], dtype=torch.float64)
        packed = torch.cat(
            [sums.flatten(), counts.flatten(), torch.tensor([loss_total], dtype=torch.float64)]
        )
        # nccl reduces device tensors only; gloo is fine either way
        dev = self.engine.device
        packed = packed.to(dev)
        dist.all_reduce(packed)
        packed = packed.cpu()
        k = sums.numel()
        g_sums, g_counts = packed[:k].view_as(sums), packed[k : 2 * k].view_as(counts)
        per_micro = g_sums / g_counts.clamp(min=1.0)
        metrics = {n: float(per_micro[:, i].mean()) for i, n in enumerate(names)}
        metrics["loss"] = float(packed[-1]) / self.world_size
        if is_names:
            # min of minima, mean of means, max of maxima over micro-batches and ranks (TRL's gather)
            is_vals = is_vals.to(dev)
            gathered = [torch.zeros_like(is_vals) for _ in range(self.world_size)]
            dist.all_gather(gathered, is_vals)
            allv = torch.cat(gathered).cpu()
            for i, n in enumerate(is_names):
                col = allv[:, i]
                metrics[n] = float(
                    col.min()
                    if n.endswith("/min")
                    else col.max()
                    if n.endswith("/max")
                    else col.mean()
                )
        gn = grad_norm.item() if isinstance(grad_norm, torch.Tensor) else grad_norm
        metrics["grad_norm"] = float(gn) if gn is not None else float("nan")
        metrics["learning_rate"] = lr
        return metrics

    # ------------------------------------------------------------------ weights out

    def _export_plan(self) -> list[tuple[str, list[torch.nn.Parameter], Any]]:
        """(hf_name, params to gather, how to build the full tensor) for every exported weight."""
        plan: list[tuple[str, list[torch.nn.Parameter], Any]] = []
        module = self.engine.module
        if not self.model_cfg.use_peft:
            for name, p in module.named_parameters():
                plan.append((name, [p], None))
            return plan
        from peft.tuners.lora import LoraLayer

        handled: set[int] = set()
        for mod_name, mod in module.named_modules():
            if (
                isinstance(mod, LoraLayer)
                and hasattr(mod, "base_layer")
                and "default" in mod.lora_A
            ):
                base = mod.base_layer
                a, b = mod.lora_A["default"].weight, mod.lora_B["default"].weight
                scale = float(mod.scaling["default"])
                hf = mod_name.removeprefix(_LORA_PREFIX)
                plan.append(
                    (
                        f"{hf}.weight",
                        [base.weight, a, b],
                        lambda w, a_, b_, sc=scale: w + (b_ @ a_) * sc,
                    )
                )
                handled.update({id(base.weight), id(a), id(b)})
                if getattr(base, "bias", None) is not None:
                    plan.append((f"{hf}.bias", [base.bias], None))
                    handled.add(id(base.bias))
        for name, p in module.named_parameters():
            if id(p) in handled or "lora_" in name:
                continue
            plan.append((name.removeprefix(_LORA_PREFIX).replace(".base_layer", ""), [p], None))
        return plan

    def probe_logprobs(self, token_ids: list[int]) -> tuple[list[float], str]:
        """The policy's logprobs of the weight probe (trainer/weight_probe.py) and the dtype it
        computed them in. Collective under ZeRO-3: every rank calls it."""
        from trainer.weight_probe import reference_logprobs

        dtype = str(next(self.engine.module.parameters()).dtype).removeprefix("torch.")
        return reference_logprobs(self.engine, token_ids), dtype

    def iter_named_params_for_sync(
        self, bucket_bytes: int = 1 << 30, device: str = "cpu"
    ) -> Iterator[tuple[str, torch.Tensor]]:
        """Full weights with HF/vLLM names in the model dtype, in buckets of about `bucket_bytes`.

        Collective under ZeRO-3 (parameters are gathered bucket by bucket): EVERY rank must iterate
        it to the end. Only rank 0 receives tensors (on `device`, owned by the caller); other ranks
        get none. With LoRA the adapters are merged into the base weights. `device`: where the
        sender wants them: the GPU for nccl (a trip through host memory would cost two copies
        of the model per push), the CPU for gloo and files.
        """
        import deepspeed

        plan = self._export_plan()
        zero3 = self.zero_stage == 3

        def nbytes(item: tuple[str, list[torch.nn.Parameter], Any]) -> int:
            # What the gather holds: every parameter the exported tensor is built from.
            return sum((p.ds_numel if zero3 else p.numel()) * p.element_size() for p in item[1])

        # The pusher's rule (whole layers per bucket), so a gather holds what one bucket sends.
        for bucket in weight_buckets(plan, nbytes, bucket_bytes):
            params = [p for _, ps, _ in bucket for p in ps]
            ctx = (
                deepspeed.zero.GatheredParameters(params, modifier_rank=None)
                if zero3
                else contextlib.nullcontext()
            )
            out: list[tuple[str, torch.Tensor]] = []
            with ctx, torch.no_grad():
                if self.rank == 0:
                    for name, ps, build in bucket:
                        t = build(*[p.data for p in ps]) if build else ps[0].data
                        # clone: under ZeRO-3 the gathered storage is released when the bucket closes
                        out.append((name, t.detach().to(device, self.model_dtype).clone()))
            # Yield after the bucket is released: the next gather starts only when the caller asks.
            yield from out

    def save_hf(self, path: str) -> None:
        """Rank 0 writes an HF model folder (merged weights, config, tokenizer). Collective."""
        import torch.distributed as dist

        state = dict(self.iter_named_params_for_sync())
        if self.rank == 0:
            from safetensors.torch import save_file

            os.makedirs(path, exist_ok=True)
            base = self._base_model()
            base.config.save_pretrained(path)
            if getattr(base, "generation_config", None) is not None:
                base.generation_config.save_pretrained(path)
            save_file({k: v.contiguous() for k, v in state.items()}, os.path.join(path, "model.safetensors"),
                      metadata={"format": "pt"})  # fmt: skip
            self.tokenizer.save_pretrained(path)
        dist.barrier()

    # ------------------------------------------------------------------ checkpoints

    def save_checkpoint(self, path: str, client_state: dict[str, Any]) -> None:
        """Model, optimizer, scheduler (DeepSpeed), step, per-rank RNG, and `client_state`. Collective."""
        import torch.distributed as dist

        state = {"client_state": dict(client_state), "engine_step": self._step}
        self.engine.save_checkpoint(path, tag=ENGINE_TAG, client_state=state)
        save_rng_state(path, self.rank)
        dist.barrier()
        # Every file on disk before the driver writes the completion marker (which it does once
        # every rank returned): after a crash the marker never points at data still in caches.
        fsync_tree(path)

    def load_checkpoint(self, path: str) -> dict[str, Any]:
        """Restore everything save_checkpoint wrote; returns its `client_state`. Collective."""
        if not os.path.isdir(os.path.join(path, ENGINE_TAG)):
            raise FileNotFoundError(
                f"no engine checkpoint in {path} (expected the folder {path}/{ENGINE_TAG})"
            )
        load_path, state = self.engine.load_checkpoint(
            path, tag=ENGINE_TAG, load_optimizer_states=True, load_lr_scheduler_states=True
        )
        if load_path is None:
            raise RuntimeError(f"DeepSpeed could not load the checkpoint in {path}")
        self._step = int(state["engine_step"])
        load_rng_state(path, self.rank)
        return dict(state["client_state"])
