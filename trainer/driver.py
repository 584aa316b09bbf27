"""The pipeline driver: places every role on Ray and runs the GRPO loop.

Owns: the run's lifecycle: model/data preparation, Ray placement of sampler replicas, reward pool
and trainer ranks, the step loop (get scored step -> train on all ranks -> push weights -> log),
eval, checkpoints and exact resume, replica failure handling, and clean shutdown on success,
failure or Ctrl-C. Does not know: GRPO math, HTTP details, reward semantics.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import secrets
import shutil
import time
from pathlib import Path
from typing import Any

import yaml

from sampler.config import SECRET_FIELDS
from sampler.engine import CPU_VLLM_ENV
from trainer import checkpoints
from trainer.batch import loss_tokens
from trainer.cluster import SAMPLER_RESOURCE, TRAINER_RESOURCE
from trainer.config import ConfigError, RunConfig
from trainer.files import write_atomic, write_secret
from trainer.healing import ReplicaHealer
from trainer.orchestrator import Orchestrator, RolloutSettings, StepBatch
from trainer.prompts import DataCursor, Prompt, drop_overlong, load_examples, tokenize_prompts
from trainer.sampling import eval_sampling, rollout_sampling

log = logging.getLogger("trainer")


def _sampler_args(config_file: Path, dtype: str, seed: int) -> list[str]:
    """The sampler reads its section of the resolved run config; the dtype and the engine seed are
    decided here (each replica gets its own seed, so replicas never share a sampling stream)."""
    return ["--config", str(config_file), "--dtype", dtype, "--seed", str(seed)]


def redacted(cfg: RunConfig) -> dict[str, Any]:
    """The run config as a plain dict with every key replaced by a marker (files, logs, MLflow).
    Launched replicas get their keys through the environment, not from this file."""
    data = cfg.model_dump(mode="json")
    for name in SECRET_FIELDS:
        if data["sampler"].get(name):
            data["sampler"][name] = "<redacted>"
    return data


# The config keys vLLM 0.32 derives a model's context length from (the smallest wins).
CONTEXT_KEYS = (
    "max_position_embeddings",
    "n_positions",
    "max_seq_len",
    "seq_length",
    "model_max_length",
    "max_target_positions",
    "max_sequence_length",
    "max_seq_length",
    "seq_len",
)


def model_context_length(model_dir: str | Path) -> int | None:
    """The context length vLLM would serve the model folder with by default, as vLLM derives it
    (the smallest length key; rope scaling ignored, so it errs short); None if unknown."""
    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    cfg = cfg.get("text_config") or cfg
    lengths = [int(cfg[k]) for k in CONTEXT_KEYS if isinstance(cfg.get(k), int)]
    return min(lengths) if lengths else None


def latest_checkpoint(output_dir: Path, world_size: int = 1) -> Path | None:
    """The newest valid checkpoint of the run in `output_dir` (trainer.checkpoints.latest_valid:
    corrupt newer ones skipped and logged; CheckpointError if every finished one is corrupt)."""
    return checkpoints.latest_valid(output_dir / "checkpoints", world_size)


def total_steps(cfg: RunConfig, num_prompts: int) -> int:
    t = cfg.trainer
    if t.max_steps > 0:
        return t.max_steps
    return max(1, math.ceil(t.num_train_epochs * num_prompts / cfg.prompts_per_step))


class Run:
    def __init__(self, cfg: RunConfig, resume: bool | str = False):
        self.cfg = cfg
        self.out = Path(cfg.trainer.output_dir).resolve()
        # "auto": resume when a checkpoint exists (an Azure ML job retried by the platform)
        self.world_size = cfg.pipeline.num_trainer_workers
        self.resume = (
            latest_checkpoint(self.out, self.world_size) is not None
            if resume == "auto"
            else bool(resume)
        )
        self.replicas: list[Any] = []
        self.workers: list[Any] = []
        self.scorer = None
        self.client = None
        self.tracker = None
        self.orch: Orchestrator | None = None
        self.healer: ReplicaHealer | None = None
        self._owns_ray = False
        self._pending_push: asyncio.Task | None = None
        self.overlap_push = False  # decided in start_trainers (needs to know about GPUs)
        # Where each role runs ({"sampler_replicas": [...], "trainer_ranks": [...]}).
        self.placement: dict[str, list[dict[str, Any]]] = {}
        # Prompts dropped at load because the samplers would refuse them (per split).
        self.prompts_dropped: dict[str, int] = {"train": 0, "eval": 0}

    # ------------------------------------------------------------------ preparation
    def prepare_model(self) -> str:
        m = self.cfg.model
        if m.name_or_path == "tiny":
            path = self.out / "base_model"
            if not (path / "config.json").is_file():
                from data.tiny_model import build_tiny_model

                build_tiny_model(path, seed=m.tiny_seed, warm_start_steps=m.tiny_warm_start_steps)
            return str(path)
        if not (Path(m.name_or_path) / "config.json").is_file():
            raise ConfigError(
                f"model.name_or_path: {m.name_or_path} is not a model folder (no config.json); "
                "give a local Hugging Face model folder or 'tiny'"
            )
        return str(Path(m.name_or_path).resolve())

    def prepare_prompts(self, tokenizer: Any, model_path: str) -> tuple[list[Prompt], list[Prompt]]:
        """Train and eval prompts, without those the samplers would refuse (dropped here and
        counted in `prompts_dropped`, so no request fails mid-run)."""
        d, t = self.cfg.data, self.cfg.trainer
        budget = self.cfg.prompt_token_budget(model_context_length(model_path))
        train = tokenize_prompts(load_examples(d, d.train_split), tokenizer, d, t.max_prompt_length)
        train, self.prompts_dropped["train"] = drop_overlong(train, budget, "train")
        if not train:
            raise ConfigError(
                f"no training prompt fits in {budget} tokens (the samplers' context, "
                f"sampler.max_model_len or the model's, minus trainer.max_completion_length="
                f"{t.max_completion_length}, or sampler.limits.max_prompt_tokens): set "
                "trainer.max_prompt_length to left-truncate prompts, lower "
                "trainer.max_completion_length or raise sampler.max_model_len"
            )
        evals: list[Prompt] = []
        if d.eval_split and t.eval_steps:
            ev = load_examples(d, d.eval_split)[: d.max_eval_examples]
            evals = tokenize_prompts(ev, tokenizer, d, t.max_prompt_length)
            evals, self.prompts_dropped["eval"] = drop_overlong(evals, budget, "eval")
        return train, evals

    def init_ray(self) -> None:
        import ray

        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        if ray.is_initialized():
            return
        p = self.cfg.pipeline
        env = {
            "env_vars": {
                "PYTHONPATH": os.pathsep.join(
                    filter(
                        None,
                        [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH")],
                    )
                )
            }
        }
        if p.ray_address:
            ray.init(address=p.ray_address, runtime_env=env, log_to_driver=True)
        else:
            from rewards.ray_pool import init_loopback_ray

            init_loopback_ray(
                num_cpus=p.ray_num_cpus or os.cpu_count(),
                include_dashboard=False,
                runtime_env=env,
                object_store_memory=256 << 20,
                log_to_driver=True,
            )
        self._owns_ray = True

    def _role_options(self, role: str, gpus: float) -> dict[str, Any]:
        """Place by the launcher's node resources when the cluster has them (Azure ML), else anywhere."""
        import ray

        opts: dict[str, Any] = {
            "num_cpus": 0.01 if role == SAMPLER_RESOURCE else 0.5,
            "num_gpus": gpus,
        }
        if ray.cluster_resources().get(role):
            opts["resources"] = {role: 0.001}
        if not gpus:
            # CPU nodes: one node's cores are the resource, so spread a role's processes over its
            # nodes (GPU roles are placed by their GPUs and pack onto nodes).
            opts["scheduling_strategy"] = "SPREAD"
        return opts

    # ------------------------------------------------------------------ roles
    def start_samplers(self, model_path: str, dtype: str, config_file: Path) -> list[str]:
        import ray

        from trainer.workers import SamplerReplica

        s = self.cfg.sampler
        # Three scopes (sampler/api.py): the api key is for people trying the live policy and is
        # the only one written to disk; the trainer's and the admin key stay in memory.
        self.api_key = s.api_key or os.environ.get("SAMPLER_API_KEY") or secrets.token_urlsafe(24)
        self.admin_key = s.admin_key or secrets.token_urlsafe(24)
        self.trainer_key = s.trainer_key or secrets.token_urlsafe(24)
        key_file = self.out / "sampler_api_key"
        write_secret(key_file, self.api_key + "\n")
        self.key_file = key_file
        if s.external_urls:
            self.admin_key = s.admin_key or os.environ.get("SAMPLER_ADMIN_KEY") or ""
            self.trainer_key = (
                s.trainer_key or os.environ.get("SAMPLER_TRAINER_KEY") or self.api_key
            )
            if not self.admin_key:
                raise ConfigError(
                    "sampler.external_urls needs sampler.admin_key (or SAMPLER_ADMIN_KEY): the "
                    "trainer pushes weights through the samplers' admin routes"
                )
            return list(s.external_urls)
        gpus = s.tensor_parallel_size if self._has_gpus() else 0
        Actor = ray.remote(max_restarts=0)(SamplerReplica)
        env = dict(CPU_VLLM_ENV) if not gpus else {}
        self.replicas = [
            Actor.options(**self._role_options(SAMPLER_RESOURCE, gpus)).remote(
                i,
                model_path,
                _sampler_args(config_file, dtype, s.seed + i),
                s.host,
                self.api_key,
                self.admin_key,
                str(self.out / "logs"),
                env,
                self.trainer_key,
            )
            for i in range(s.replicas)
        ]
        urls = ray.get([r.start.remote(s.startup_timeout_s) for r in self.replicas])
        infos = ray.get([r.info.remote() for r in self.replicas])
        self._write_replicas(infos)
        self.placement["sampler_replicas"] = [
            {"index": i["index"], "node_ip": i["node_ip"], "url": i["url"]} for i in infos
        ]
        self._write_placement()
        for u in urls:
            log.info(
                "sampler replica live at %s (OpenAI API: %s/v1; API key in %s)", u, u, key_file
            )
        return urls

    def _has_gpus(self) -> bool:
        import ray

        return ray.cluster_resources().get("GPU", 0) > 0

    def start_trainers(self, model_path: str, steps: int) -> None:
        import ray

        from trainer.workers import TrainerWorker

        p = self.cfg.pipeline
        gpus = p.trainer_gpus_per_worker if self._has_gpus() else 0
        backend = "nccl" if gpus else "gloo"
        self.overlap_push = (
            p.overlap_weight_push
            if p.overlap_weight_push is not None
            else p.max_staleness >= 1 and not gpus
        )
        # "push": a second thread on which `finish_push` waits for a background weight push while
        # the default group (one thread, calls in order) trains.
        Actor = ray.remote(max_restarts=0, concurrency_groups={"push": 1})(TrainerWorker)
        self.workers = [
            Actor.options(**self._role_options(TRAINER_RESOURCE, gpus)).remote(
                r,
                p.num_trainer_workers,
                model_path,
                self.cfg.trainer.model_dump(),
                self.cfg.model.model_dump(),
                steps,
                backend,
                p.dist_timeout_s,
                p.connect_timeout_s,
                p.trainer_threads
                or (None if gpus else max(1, (os.cpu_count() or 1) // p.num_trainer_workers)),
            )
            for r in range(p.num_trainer_workers)
        ]
        # Rank 0 opens the group's store on its own node (the driver's node may not train at
        # all); the others learn the address from it.
        addr, port = ray.get(self.workers[0].rendezvous_endpoint.remote())
        log.info("trainer group: %d ranks, rank 0 at %s:%d", p.num_trainer_workers, addr, port)
        secret = secrets.token_hex(16)  # the group's keys live under it (TrainerWorker.join)
        ray.get([w.join.remote(addr, port, secret) for w in self.workers])
        self.placement["trainer_ranks"] = ray.get([w.where.remote() for w in self.workers])
        self._write_placement()

    def weight_transport(self) -> str:
        t = self.cfg.pipeline.weight_sync
        if t == "auto":
            return "nccl" if self._has_gpus() else "gloo"
        return t

    # ------------------------------------------------------------------ loop helpers
    async def _all(self, method: str, *args: Any, per_rank: list[tuple] | None = None) -> list[Any]:
        refs = [
            getattr(w, method).remote(*(per_rank[i] if per_rank else args))
            for i, w in enumerate(self.workers)
        ]
        return list(await asyncio.gather(*refs))

    async def train(self, batch: StepBatch) -> dict[str, float]:
        n = len(self.workers)
        per = len(batch.samples) // n
        shards = [(batch.samples[i * per : (i + 1) * per],) for i in range(n)]
        items = loss_tokens(batch.samples, self.cfg.trainer.mask_truncated_completions)
        results = await self._all("train_step", per_rank=[(sh[0], items) for sh in shards])
        return results[0]

    async def push(
        self,
        version: int,
        urls: list[str] | None = None,
        background: bool = False,
        reset: bool = False,
    ) -> dict[str, float]:
        """Send the trainer's weights as `version`; the orchestrator learns it once they are live.

        `background`: return once rank 0 has copied the weights; the push finishes while the
        next step trains. The metrics returned include the previous background push's.
        """
        previous = await self.finish_push()
        bucket = self.cfg.pipeline.weight_sync_bucket_mb << 20
        res = await self._all("push_weights", version, bucket, urls, background, reset)
        # A resync of restarted replicas (`urls`) changes no version: the others already serve it.
        if urls is None and background:
            self._pending_push = asyncio.create_task(self._live_after_push(version))
        elif urls is None and self.orch is not None:
            self.orch.set_version(version)
        return {**previous, **res[0]}

    async def _live_after_push(self, version: int) -> dict[str, float]:
        stats = await self.workers[0].finish_push.options(concurrency_group="push").remote()
        if self.orch is not None:
            self.orch.set_version(version)
        return stats

    async def finish_push(self) -> dict[str, float]:
        """Wait for the background push in flight, if any; its metrics (its error raises)."""
        task, self._pending_push = self._pending_push, None
        return await task if task is not None else {}

    async def evaluate(self, evals: list[Prompt]) -> dict[str, float]:
        spec, n = eval_sampling(self.cfg.trainer)
        groups = await self.client.generate([p.token_ids for p in evals], n, spec)
        comps = [[{"role": "assistant", "content": g.completions[0].text}] for g in groups]
        columns: dict[str, list] = {k: [p.columns.get(k) for p in evals] for k in evals[0].columns}
        columns["completion_ids"] = [g.completions[0].token_ids for g in groups]
        scored = await self.scorer.ascore([p.messages for p in evals], comps, columns)
        out = {"eval_reward": _nanmean(scored.total)}
        for name, vals in scored.per_func.items():
            out[f"eval_rewards/{name}/mean"] = _nanmean(vals)
        return out

    # ------------------------------------------------------------------ checkpoints
    async def save_checkpoint(self, step: int, batch: StepBatch, version: int) -> Path:
        root = self.out / "checkpoints"
        path = root / f"{checkpoints.CKPT_PREFIX}{step}"
        state = {
            "step": step,
            "cursor": {**self.cursor.state_dict(), "position": batch.cursor_position},
            "version": version,
            "mlflow_run_id": self.tracker.run_id if self.tracker else None,
            "world_size": self.world_size,
        }
        # A folder of this step left by an unfinished or corrupt save (resume skipped it).
        shutil.rmtree(path, ignore_errors=True)
        await self._all("save_checkpoint", str(path), state)  # every rank fsyncs its files
        checkpoints.write_marker(path, state)  # last, durably: marks it complete
        if self.cfg.trainer.save_total_limit:
            checkpoints.prune(root, self.cfg.trainer.save_total_limit, path)
        return path

    def _check_world_size(self, ckpt: Path) -> None:
        saved = checkpoints.read_marker(ckpt).get("world_size", self.world_size)
        if saved != self.world_size:
            raise ConfigError(
                f"{ckpt} was saved by {saved} trainer ranks, this run has "
                f"pipeline.num_trainer_workers={self.world_size}: resume with {saved} (each rank "
                "restores its own optimizer shard and RNG state)"
            )

    # ------------------------------------------------------------------ main
    async def run_async(self) -> int:
        from transformers import AutoTokenizer

        from rewards.factory import build_scorer
        from rewards.registry import reward_name
        from sampler.client import SamplerClient
        from trainer.tracking import open_tracker, pip_requirements

        cfg, t = self.cfg, self.cfg.trainer
        self.out.mkdir(parents=True, exist_ok=True)
        ckpt = latest_checkpoint(self.out, self.world_size) if self.resume else None
        if self.resume and ckpt is None:
            raise ConfigError(f"--resume: no complete checkpoint under {self.out / 'checkpoints'}")
        if ckpt is not None:
            self._check_world_size(ckpt)
        finished = [p for _, p in checkpoints.step_dirs(self.out / "checkpoints")]
        if not self.resume and any((p / checkpoints.MARKER).exists() for p in finished):
            raise ConfigError(
                f"trainer.output_dir {self.out} already holds checkpoints: pass --resume to continue "
                "that run, or choose another output_dir"
            )
        try:  # plugins import here, before anything starts (the rest was validated at load)
            reward_fns = cfg.reward_spec.resolve()
        except ValueError as e:
            raise ConfigError(f"trainer.reward_funcs: {e}") from None
        model_path = self.prepare_model()
        tokenizer = AutoTokenizer.from_pretrained(model_path)
        train_prompts, eval_prompts = self.prepare_prompts(tokenizer, model_path)
        steps = total_steps(cfg, len(train_prompts))
        self.cursor = DataCursor(len(train_prompts), t.seed, cfg.data.shuffle)
        dtype = cfg.sampler.dtype if cfg.sampler.dtype != "auto" else cfg.model.torch_dtype
        self.init_ray()
        self.scorer = build_scorer(cfg.reward_spec, reward_fns)
        resolved = (
            self.out / "resolved_config.yaml"
        )  # what this run actually used, overrides included
        resolved.write_text(yaml.safe_dump(redacted(cfg), sort_keys=False))
        urls = self.start_samplers(model_path, "float32" if dtype == "auto" else dtype, resolved)
        self.client = SamplerClient(
            urls,
            api_key=self.trainer_key,
            admin_key=self.admin_key,
            request_timeout_s=cfg.sampler.request_timeout_s,
        )
        try:
            await self.client.wait_healthy(cfg.sampler.startup_timeout_s)
        except TimeoutError as e:
            setting = (
                "sampler.external_urls"
                if cfg.sampler.external_urls
                else "sampler (launched replicas)"
            )
            raise ConfigError(f"{setting}: {e}; start them or fix the URLs") from None
        self.start_trainers(model_path, steps)
        transport = self.weight_transport()
        await self._all(
            "setup_pusher",
            urls,
            self.trainer_key,
            self.admin_key,
            transport,
            cfg.pipeline.weight_sync_bucket_mb << 20,
            cfg.pipeline.dist_timeout_s,
            cfg.pipeline.weight_sync_dir or str(self.out / "weight_sync"),
            cfg.pipeline.connect_timeout_s,
            cfg.pipeline.weight_probe,
            cfg.pipeline.weight_probe_tolerance,
        )
        self.healer = ReplicaHealer(
            self.replicas,
            self.client,
            cfg.sampler.watchdog,
            cfg.sampler.startup_timeout_s,
            self.out / "replicas.json",
            self._set_rotation,
            self._resync,
        )
        self.healer.start(urls)

        start_step, version, run_id = 0, 0, None
        if ckpt is not None:
            states = await self._all("load_checkpoint", str(ckpt))
            state = checkpoints.read_marker(ckpt) or states[0]
            start_step, version, run_id = (
                state["step"],
                state["version"],
                state.get("mlflow_run_id"),
            )
            self.cursor.load_state_dict(state["cursor"])
            # The samplers serve the checkpoint's weights before any rollout; external ones may
            # serve a newer version of the session that died: this session takes over.
            await self.push(version, reset=True)
            log.info("resumed from %s: step %d, policy version %d", ckpt, start_step, version)
        elif cfg.sampler.external_urls:
            # external samplers start from the trainer's weights, not their own
            await self.push(version, reset=True)
        else:  # launched replicas loaded the trainer's checkpoint: prove it
            await self._all("check_weights", version)
        self._truncate_logs(start_step)

        self.tracker = open_tracker(cfg.mlflow, self.out, t.run_name, run_id=run_id)
        if run_id is None:
            self.tracker.params(
                {
                    **{f"trainer.{k}": v for k, v in t.model_dump().items()},
                    "model": cfg.model.name_or_path,
                    "sampler_urls": urls,
                    "sampler_api_key_file": str(self.key_file),
                    "max_staleness": cfg.pipeline.max_staleness,
                    "weight_sync": transport,
                    "num_trainer_workers": cfg.pipeline.num_trainer_workers,
                }
            )
        dropped = {
            f"data/{k}_prompts_dropped_too_long": float(v) for k, v in self.prompts_dropped.items()
        }
        self.tracker.metrics(dropped, step=start_step)
        names = [reward_name(n) for n in t.reward_funcs]
        spec = rollout_sampling(t)
        settings = RolloutSettings(
            t.num_generations,
            cfg.prompts_per_step,
            cfg.pipeline.max_staleness,
            t.scale_rewards,
            spec,
            cfg.pipeline.filter_zero_std_groups,
            cfg.pipeline.max_inflight_prompts,
            names,
            steps,
            cfg.pipeline.dispatch_ahead,
            cfg.pipeline.max_failed_reward_fraction,
            cfg.pipeline.failed_reward_window,
        )
        self.orch = Orchestrator(
            train_prompts, self.cursor, self.client, self.scorer, settings, start_step, version
        )
        self.orch.start()
        if eval_prompts and t.eval_on_start and start_step == 0:
            self.tracker.metrics(await self.evaluate(eval_prompts), step=0)

        for step in range(start_step, steps):
            t0 = time.perf_counter()
            batch = await self.orch.get_step(step)
            t1 = time.perf_counter()
            metrics = {**batch.metrics, **await self.train(batch)}
            t2 = time.perf_counter()
            if (step + 1) % cfg.pipeline.sync_every == 0 or step + 1 == steps:
                version = step + 1
                overlap = self.overlap_push and step + 1 < steps
                metrics.update(await self.push(version, background=overlap))
            t3 = time.perf_counter()
            metrics.update(
                {
                    "timing/wait_rollout_s": t1 - t0,
                    "timing/train_s": t2 - t1,
                    "timing/step_s": t3 - t0,
                    "policy/version": float(version),
                    "epoch": batch.cursor_position / self.cursor.n,
                }
            )
            self._record_trained(step, batch)
            self._append("metrics.jsonl", {"step": step + 1, **metrics})
            if (step + 1) % t.logging_steps == 0 or step == start_step:
                self.tracker.metrics(metrics, step=step + 1)
            self._progress(step + 1, steps, metrics)
            if t.log_completions and (step + 1) % t.log_completions_steps == 0:
                self._log_completions(step + 1, batch)
            if eval_prompts and t.eval_steps and (step + 1) % t.eval_steps == 0:
                self.tracker.metrics(await self.evaluate(eval_prompts), step=step + 1)
            if (step + 1) % t.save_steps == 0 or step + 1 == steps:
                await self.save_checkpoint(step + 1, batch, version)
            await self._heal_replicas(version)

        final = self.out / "final_model"
        await self._all("save_hf", str(final))
        log.info("final model: %s", final)
        if cfg.mlflow.log_model:
            uri = self.tracker.log_model(str(final), pip_requirements())
            log.info("MLflow model: %s", uri)
        if os.environ.get(
            "GRPO_MODEL_OUTPUT_DIR"
        ):  # the Azure ML job's model output (deploy/launch.py)
            dest = Path(os.environ["GRPO_MODEL_OUTPUT_DIR"])
            self.tracker.save_model(str(final), str(dest), pip_requirements())
            log.info("MLflow model saved to the job output %s", dest)
        tracker, self.tracker = self.tracker, None
        tracker.end()
        print(
            f"\nDone. Final model: {final}\nMLflow: {tracker.uri} (run {tracker.run_id})\n"
            f"Open the UI with: .venv/bin/mlflow ui --backend-store-uri {tracker.uri}",
            flush=True,
        )
        return 0

    async def _heal_replicas(self, version: int) -> None:
        """Restart dead (or hung, hence killed) sampler replicas and resync them to `version`."""
        await self.healer.heal(version)
        self.orch.counters["sampler_restarts"] = self.healer.restarts
        self.orch.counters["sampler_hung"] = self.healer.watchdog.hung_total

    async def _set_rotation(self, urls: list[str]) -> None:
        """The replicas in service, for the rollout client and every trainer rank's pusher."""
        self.client.set_urls(urls)
        await self._all("set_sampler_urls", urls)

    async def _resync(self, url: str, version: int, others: list[str]) -> dict[str, float]:
        """Bring a restarted replica to `version` (and probe it) before it serves again."""
        await self._all("set_sampler_urls", [*others, url])
        return await self.push(version, urls=[url])

    def _write_placement(self) -> None:
        """Which node each role's process runs on (node addresses as Ray knows them)."""
        write_atomic(self.out / "placement.json", json.dumps(self.placement, indent=2))

    def _write_replicas(self, infos: list[dict]) -> None:
        """Where each replica lives now (URL, PID, restarts): for operators and the chaos test."""
        write_atomic(self.out / "replicas.json", json.dumps(infos, indent=2))

    def _mark_replicas_dead(self) -> None:
        """At shutdown every replica is stopped: `replicas.json` must not show a dead URL alive."""
        path = self.out / "replicas.json"
        if not path.is_file():
            return
        try:
            infos = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            log.warning("replicas.json not updated at shutdown: %r", e)
            return
        self._write_replicas([{**info, "alive": False} for info in infos])

    def _record_trained(self, step: int, batch: StepBatch) -> None:
        """Audit log: which prompts (and versions) each step trained on. Tests check it for exactness."""
        self._append(
            "trained_prompts.jsonl",
            {
                "step": step,
                "prompt_ids": [g.prompt.id for g in batch.groups],
                "versions": [g.policy_version for g in batch.groups],
                "replicas": [g.replica for g in batch.groups],
            },
        )

    def _append(self, name: str, row: dict) -> None:
        with open(self.out / name, "a") as f:
            f.write(json.dumps(row) + "\n")

    def _truncate_logs(self, start_step: int) -> None:
        """On resume, forget steps after the checkpoint: they are trained again."""
        for name, last_kept in (
            ("trained_prompts.jsonl", start_step - 1),
            ("metrics.jsonl", start_step),
        ):
            path = self.out / name
            if path.exists():
                keep = [
                    x
                    for x in path.read_text().splitlines()
                    if x and json.loads(x)["step"] <= last_kept
                ]
                path.write_text("".join(x + "\n" for x in keep))

    def _log_completions(self, step: int, batch: StepBatch) -> None:
        rows = [
            {
                "step": step,
                "prompt_id": s.prompt_id,
                "completion": s.completion_text,
                "reward": s.reward,
                "advantage": s.advantage,
                "policy_version": s.policy_version,
            }
            for s in batch.samples
        ]
        self.tracker.table(rows, f"completions/step_{step:06d}.json")

    def _progress(self, step: int, steps: int, m: dict[str, float]) -> None:
        print(
            f"step {step}/{steps} | reward {m.get('reward', float('nan')):.3f} | step {m['timing/step_s']:.2f}s "
            f"| {m.get('sampler/tokens_per_s', 0):.0f} tok/s | version {int(m['policy/version'])} "
            f"| loss {m.get('loss', float('nan')):.4f}",
            flush=True,
        )

    async def shutdown(self) -> None:
        import ray

        if self.tracker is not None:  # the run did not finish: mark it so in MLflow
            self.tracker.end(status="FAILED")
            self.tracker = None

        if self.healer is not None:  # no watchdog kills while the roles shut down
            await self.healer.aclose()
        if self._pending_push is not None:  # the worker's own shutdown waits for its thread
            self._pending_push.cancel()
        if self.orch is not None:
            await self.orch.aclose()
        if self.workers:
            try:
                await asyncio.wait_for(self._all("shutdown"), timeout=60)
            except Exception as e:  # shutting down after a failure: log and keep tearing down
                log.warning("trainer shutdown: %r", e)
        for r in self.replicas:
            try:
                await asyncio.wait_for(r.stop.remote(), timeout=30)
            except Exception as e:
                log.warning("sampler stop: %r", e)
        if self.client is not None:
            await self.client.aclose()
        if self.scorer is not None:
            self.scorer.close()
        for a in [*self.workers, *self.replicas]:
            ray.kill(a)
        self._mark_replicas_dead()
        if self._owns_ray:
            ray.shutdown()


def _nanmean(vals: list) -> float:
    xs = [float(v) for v in vals if v is not None and not math.isnan(float(v))]
    return sum(xs) / len(xs) if xs else float("nan")


def run(cfg: RunConfig, resume: bool | str = False) -> int:
    """Run the pipeline; on SIGINT/SIGTERM stop, shut every role down, and return 128 + signal."""
    import signal

    r = Run(cfg, resume)

    async def main() -> int:
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        stopped: list[signal.Signals] = []

        def on_signal(sig: signal.Signals) -> None:
            if stopped:  # a second Ctrl-C must not abort the teardown half-way
                log.warning("%s again: still shutting down every role, please wait", sig.name)
                return
            stopped.append(sig)
            log.warning("%s: stopping the run and shutting every role down", sig.name)
            task.cancel()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal, sig)
        try:
            return await r.run_async()
        except asyncio.CancelledError:
            if stopped:
                return 128 + stopped[0]
            raise
        finally:
            await r.shutdown()

    return asyncio.run(main())
