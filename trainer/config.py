"""The run configuration: one YAML, one pydantic model per component.

Owns: `RunConfig` (the whole YAML), the trainer section `GRPOSettings` (TRL `GRPOConfig` field
names, so a recipe-style `grpo_trainer_config.yaml` carries over), the pipeline, model and MLflow
sections, and `load_config` (clear errors naming the key and the fix).
Does not know: how components use their sections.
"""

from __future__ import annotations

import difflib
import logging
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    model_validator,
)

from data.config import DataConfig
from rewards.config import RewardPoolConfig
from rewards.spec import RewardSpec, validate_rewards
from sampler.config import SECRET_FIELDS, SamplerConfig
from sampler.protocol import SamplingFields

log = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A configuration is unusable; the message names the key and how to fix it."""


# TRL/transformers TrainingArguments keys that are meaningless in this service. They are accepted
# so recipe-style configs load, and reported once (never silently): each value says why.
IGNORED_TRL_KEYS: dict[str, str] = {
    "use_vllm": "generation always runs on the vLLM sampler service",
    "report_to": "metrics always go to MLflow (AML's tracking inside a job)",
    "log_level": "use the LOGLEVEL environment variable",
    "logging_strategy": "logging is per `logging_steps`",
    "logging_first_step": "step 1 is always logged",
    "save_strategy": "checkpoints follow `save_steps`",
    "eval_strategy": "eval follows `eval_steps`",
    "do_eval": "eval runs when `eval_steps` is set and data.eval_split exists",
    "overwrite_output_dir": "use `--resume` to continue a run; a fresh run never deletes checkpoints",
    "push_to_hub": "no hub here; the final model is an MLflow model",
    "hub_model_id": "no hub here",
    "hub_strategy": "no hub here",
    "hub_private_repo": "no hub here",
    "model_revision": "models are loaded from a local folder or AML input",
    "dataset_config": "datasets are configured in the data section",
    "per_device_eval_batch_size": "eval requests go to the sampler in one grouped call",
    "vllm_gpu_memory_utilization": "set sampler.gpu_memory_utilization",
    "vllm_tensor_parallel_size": "set sampler.tensor_parallel_size",
    "ddp_timeout": "process groups use pipeline.dist_timeout_s",
}
# How to fix a sampling setting the sampler's request model (SamplingFields) refuses.
SAMPLING_HINTS: dict[str, str] = {
    "temperature": "the sampler accepts at most 100 (> 0 for GRPO)",
    "top_p": "a fraction in (0, 1]",
    "top_k": "null or 0 disables top-k (as does -1); else a positive k",
    "min_p": "a fraction in [0, 1]; null disables it",
    "repetition_penalty": "the sampler accepts (0, 10]; 1.0 disables it",
}
# Keys TRL's ModelConfig owns but recipe-style configs put at top level: moved to the model section.
MODEL_KEYS_IN_TRAINER = (
    "torch_dtype",
    "attn_implementation",
    "use_peft",
    "lora_r",
    "lora_alpha",
    "lora_dropout",
    "lora_target_modules",
)


def default_is_mode(max_staleness: int) -> str:
    """The IS mode when none is set: TRL's sequence_mask on-policy; token_truncate with stale
    batches (a per-token clip keeps the rest of a stale sequence's signal)."""
    return "token_truncate" if max_staleness > 0 else "sequence_mask"


class GRPOSettings(BaseModel):
    """The trainer section. Names and defaults follow TRL 1.16's `GRPOConfig`."""

    model_config = ConfigDict(extra="forbid")

    output_dir: str = Field(
        "outputs/run", description="Checkpoints, final model, local MLflow store."
    )
    run_name: str | None = Field(None, description="MLflow run name.")
    seed: int = Field(
        42,
        description="Seed for init, data order and sampling (the samplers' engine seed unless "
        "sampler.seed is set; replica i uses seed + i).",
    )
    # optimisation
    learning_rate: float = Field(1e-6, gt=0, description="Peak learning rate (AdamW).")
    lr_scheduler_type: Literal["constant", "constant_with_warmup", "linear", "cosine"] = Field(
        "linear", description="Learning-rate schedule over the run's optimizer steps."
    )
    warmup_ratio: float = Field(
        0.0, ge=0, lt=1, description="Fraction of steps spent warming up linearly."
    )
    warmup_steps: int = Field(0, ge=0, description="Overrides warmup_ratio when > 0.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    adam_beta1: float = Field(0.9, ge=0, lt=1, description="AdamW beta1.")
    adam_beta2: float = Field(0.999, ge=0, lt=1, description="AdamW beta2.")
    adam_epsilon: float = Field(1e-8, gt=0, description="AdamW epsilon.")
    max_grad_norm: float = Field(1.0, ge=0, description="Gradient clipping; 0 disables.")
    optim: Literal["adamw_torch_fused", "adamw_torch"] = Field(
        "adamw_torch_fused",
        description="AdamW implementation (TRL's names and default on torch >= 2.8): fused, one "
        "kernel over all tensors (CPU or GPU), or torch's per-tensor loop.",
    )
    per_device_train_batch_size: int = Field(
        8, ge=1, description="Completions per trainer process per micro-step."
    )
    gradient_accumulation_steps: int = Field(
        1, ge=1, description="Micro-batches per optimizer step on each trainer process."
    )
    max_steps: int = Field(
        -1, description="Optimizer steps; -1: num_train_epochs over the train split."
    )
    num_train_epochs: float = Field(
        1.0, gt=0, description="Passes over the train split when max_steps is -1."
    )
    gradient_checkpointing: bool = Field(
        False, description="Recompute activations in backward to save memory."
    )
    gradient_checkpointing_kwargs: dict[str, Any] | None = Field(
        None, description="Passed to transformers' gradient_checkpointing_enable."
    )
    bf16: bool = Field(False, description="Train in bfloat16 (GPU). CPU runs use float32.")
    fp16: bool = Field(False, description="Train in float16 (GPU).")
    deepspeed: str | dict[str, Any] | None = Field(
        None, description="DeepSpeed config (path or dict); default: ZeRO stage `zero_stage`."
    )
    zero_stage: Literal[0, 1, 2, 3] | None = Field(
        None,
        description="ZeRO stage when `deepspeed` is not given; default: 0 with one trainer "
        "process (ZeRO partitions nothing there, and its flat-buffer copies cost 12-16% of a "
        "CPU step, docs/benchmarks.md), 2 with several.",
    )
    # generation
    num_generations: int = Field(8, ge=2, description="G: completions per prompt (a group).")
    max_prompt_length: int | None = Field(
        512, ge=1, description="Prompts longer than this are left-truncated."
    )
    max_completion_length: int = Field(
        256, ge=1, description="Largest completion in tokens (the sampler's max_tokens)."
    )
    temperature: float = Field(
        1.0,
        gt=0,
        description="Sampling temperature of training rollouts (> 0: GRPO needs diverse groups).",
    )
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling of training rollouts.")
    top_k: int | None = Field(None, description="null, 0 or -1: disabled; else k >= 1.")
    min_p: float | None = Field(None, description="Min-p sampling in [0, 1]; null disables.")
    repetition_penalty: float = Field(
        1.0, gt=0, description="vLLM repetition penalty in (0, 10]; 1.0 disables."
    )
    # GRPO objective
    beta: float = Field(
        0.0, ge=0, description="KL coefficient to the reference model; 0 loads no reference."
    )
    epsilon: float = Field(0.2, ge=0, description="Lower clip range.")
    epsilon_high: float | None = Field(
        None, ge=0, description="Upper clip range; default: epsilon."
    )
    loss_type: Literal["grpo", "bnpo", "dr_grpo", "dapo"] = Field(
        "dapo",
        description="Loss normalisation: grpo (per sequence), bnpo (per batch tokens), dr_grpo (constant max length), dapo (global tokens, TRL's default).",
    )
    scale_rewards: Literal["group", "batch", "none"] = Field(
        "group",
        description="Advantage scaling: group std, batch std, or none (Dr. GRPO). TRL's booleans are accepted.",
    )
    mask_truncated_completions: bool = Field(
        False, description="Exclude completions cut at max_completion_length from the loss."
    )
    num_iterations: int = Field(
        1, ge=1, le=1, description="Policy updates per generation batch (only 1)."
    )
    reward_funcs: list[str] = Field(
        default_factory=lambda: ["char_class"],
        description="Reward names from the rewards registry, or `module:function` import paths.",
    )
    reward_weights: list[float] | None = Field(
        None, description="One weight per reward; default all 1."
    )
    vllm_importance_sampling_correction: bool = Field(
        True, description="Correct for sampler/trainer mismatch and staleness with truncated IS."
    )
    vllm_importance_sampling_mode: (
        Literal["token_truncate", "token_mask", "sequence_truncate", "sequence_mask"] | None
    ) = Field(
        None,
        description="IS correction for sampler/trainer mismatch and staleness: token- or sequence-level, "
        "truncate (clip) or mask. Default: TRL's sequence_mask when pipeline.max_staleness is 0; "
        "token_truncate when it is > 0 (a sequence ratio over a stale policy leaves the [0, C_max] band "
        "for most long completions, and masking them throws their signal away).",
    )
    vllm_importance_sampling_clip_max: float | None = Field(
        3.0, gt=0, description="C_max: truncate modes clip ratios above it, mask modes zero them."
    )
    vllm_importance_sampling_clip_min: float | None = Field(
        None, ge=0, description="C_min: truncate modes clip ratios below it, mask modes zero them."
    )
    # cadence
    logging_steps: int = Field(
        1, ge=1, description="Log metrics to MLflow every N optimizer steps."
    )
    save_steps: int = Field(
        500, ge=1, description="Checkpoint every N optimizer steps (and at the end)."
    )
    save_total_limit: int | None = Field(
        2, ge=1, description="Keep at most N checkpoints (oldest deleted); null keeps all."
    )
    eval_steps: int | None = Field(
        None, ge=1, description="Eval every N steps; null: no periodic eval."
    )
    eval_on_start: bool = Field(False, description="Evaluate once before the first step.")
    log_completions: bool = Field(
        True, description="Log sample completions as an MLflow table artifact."
    )
    log_completions_steps: int = Field(
        10, ge=1, description="Completions table artifact every N steps."
    )
    num_completions_to_print: int | None = Field(
        None, ge=0, description="Accepted for TRL compatibility; completions go to MLflow tables."
    )
    vllm_mode: Literal["server"] = Field(
        "server", description="Always 'server': vLLM runs as the separate sampler service."
    )

    @model_validator(mode="before")
    @classmethod
    def _normalise(cls, data: Any) -> Any:
        if isinstance(data, dict):
            sr = data.get("scale_rewards")
            if isinstance(sr, bool):  # TRL accepts booleans: True = group, False = none
                data = {**data, "scale_rewards": "group" if sr else "none"}
            if "vllm_importance_sampling_cap" in data:  # TRL's deprecated alias
                data = {**data}
                data.setdefault(
                    "vllm_importance_sampling_clip_max", data.pop("vllm_importance_sampling_cap")
                )
                data.pop("vllm_importance_sampling_cap", None)
            if data.get("vllm_mode") == "colocate":
                raise ValueError(
                    "trainer.vllm_mode: 'colocate' is not supported: this service runs vLLM as a separate "
                    "sampler on its own devices. Remove the key (or set it to 'server')."
                )
        return data

    @model_validator(mode="after")
    def _check(self) -> GRPOSettings:
        # reward_funcs / reward_weights are checked with the rewards: section (RunConfig).
        if self.bf16 and self.fp16:
            raise ValueError("trainer.bf16 and trainer.fp16 are both true: choose one")
        self._check_sampling()
        return self

    def _check_sampling(self) -> None:
        """Rollout settings within the sampler's own request bounds (sampler/protocol.py), so a
        bad value fails at load rather than at the first request after every service started."""
        names = list(SAMPLING_HINTS)
        try:
            SamplingFields(**{k: getattr(self, k) for k in names})
        except ValidationError as e:
            bad = [
                f"trainer.{err['loc'][0]}={err['input']!r} is refused by the sampler "
                f"({err['msg'].lower()}): {SAMPLING_HINTS[str(err['loc'][0])]}"
                for err in e.errors()
            ]
            raise ValueError("; ".join(bad)) from None

    @property
    def importance_sampling_mode(self) -> str:
        """The IS mode in force: as set, or as RunConfig resolved it from pipeline.max_staleness;
        settings used without a RunConfig (a bench, a test) are on-policy."""
        return self.vllm_importance_sampling_mode or default_is_mode(0)

    @property
    def epsilon_upper(self) -> float:
        return self.epsilon if self.epsilon_high is None else self.epsilon_high


class ModelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name_or_path: str = Field(
        "tiny",
        description="A local HF model folder, or 'tiny' to build the tiny random model (data.tiny_model).",
    )
    tiny_seed: int = Field(0, description="Seed of the tiny model when name_or_path is 'tiny'.")
    tiny_warm_start_steps: int = Field(
        0,
        ge=0,
        description="name_or_path 'tiny' only: supervised steps on the reference recipe's answer layout "
        "(<think>/<answer>) when the tiny model is built, so its format reward starts above 0 and "
        "has something to learn from (data.tiny_model.warm_start); 0: random weights.",
    )
    torch_dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "float32",
        description="Trainer weights dtype (and the sampler's when sampler.dtype is auto).",
    )
    attn_implementation: str | None = Field(
        None, description="transformers attention implementation."
    )
    use_peft: bool = Field(False, description="Train LoRA adapters (peft) instead of all weights.")
    lora_r: int = Field(16, ge=1, description="LoRA rank.")
    lora_alpha: int = Field(32, ge=1, description="LoRA scaling alpha.")
    lora_dropout: float = Field(0.05, ge=0, lt=1, description="LoRA dropout.")
    lora_target_modules: list[str] | None = Field(
        None, description="Default: all linear projections."
    )


class PipelineConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_staleness: int = Field(
        1,
        ge=0,
        description="k: train on samples at most k policy versions old; 0 = synchronous on-policy GRPO.",
    )
    sync_every: int = Field(
        1, ge=1, description="Push weights to the samplers every N optimizer steps."
    )
    dispatch_ahead: int | None = Field(
        None,
        ge=0,
        description="Steps rollouts may run ahead of training; default max_staleness (nothing generated "
        "is wasted). Larger values generate further ahead, drop groups that come back older than "
        "max_staleness (counted as rollout/stale_groups_dropped) and re-issue their prompts.",
    )
    weight_sync: Literal["auto", "nccl", "gloo", "filesystem"] = Field(
        "auto",
        description="Transport: torch.distributed (nccl on GPU, gloo on CPU) or safetensors files.",
    )
    weight_sync_bucket_mb: int = Field(
        1024, ge=1, description="Bucket size of the torch.distributed transport."
    )
    overlap_weight_push: bool | None = Field(
        None,
        description="Send the weights of step s while step s+1 trains: rank 0 snapshots them "
        "(one copy in host memory) and pushes from a thread, so the sampler's drain and load "
        "leave the trainer's critical path. Default: on when max_staleness >= 1 and the trainer "
        "runs on CPU (with max_staleness 0 the next batch needs the new weights anyway; on GPU "
        "the copy would cost device memory and nccl is fast).",
    )
    weight_sync_dir: str | None = Field(
        None,
        description="Shared folder for the filesystem transport (default: output_dir/weight_sync). "
        "The pusher deletes only the v<N> folders it wrote (they hold its marker file).",
    )
    weight_probe: bool = Field(
        True,
        description="After every weight push (also on resume and when a replica rejoins) each "
        "replica scores a fixed probe text and the trainer compares the logprobs with its own; "
        "beyond weight_probe_tolerance the run stops with an error naming the replica, the "
        "version and the gap (metric weight_sync/probe_gap). Costs one short forward per push.",
    )
    weight_probe_tolerance: float | None = Field(
        None,
        gt=0,
        description="Largest mean |logprob gap| per probe token; default by the coarser dtype "
        "of trainer and sampler (trainer/weight_probe.py TOLERANCE: float32 5e-3, float16 0.05, "
        "bfloat16 0.1).",
    )
    filter_zero_std_groups: bool = Field(
        False,
        description="Drop groups whose rewards are all equal (no signal) and over-sample to keep batches full.",
    )
    max_inflight_prompts: int | None = Field(
        None, ge=1, description="Prompts generating at once; default: 2 batches' worth."
    )
    max_failed_reward_fraction: float = Field(
        0.5,
        ge=0,
        le=1,
        description="Stop the run when more than this fraction of the completions of the last "
        "failed_reward_window steps got no valid reward from any reward function (failures, "
        "timeouts, a dead pool, or None from every reward). Such completions never train "
        "(metric rewards/failed_items); 1.0 never stops.",
    )
    failed_reward_window: int = Field(
        5,
        ge=1,
        description="Steps over which max_failed_reward_fraction is measured (fewer at the start "
        "of a run, so a pool that is dead from the start stops it at step 1).",
    )
    num_trainer_workers: int = Field(
        1, ge=1, description="Trainer processes (one per GPU; CPU: processes)."
    )
    trainer_threads: int | None = Field(
        None,
        ge=1,
        description="CPU threads of each trainer process (torch); default: all cores on a "
        "CPU-only machine, Ray's default on GPU nodes.",
    )
    trainer_gpus_per_worker: float = Field(
        0, ge=0, description="GPUs per trainer process (0 on CPU)."
    )
    ray_address: str | None = Field(
        None, description="Ray cluster to join; null starts a local one."
    )
    ray_num_cpus: int | None = Field(None, ge=1, description="CPUs of the local Ray (null: all).")
    dist_timeout_s: float = Field(600, gt=0, description="Timeout of process-group operations.")
    connect_timeout_s: float = Field(
        120,
        gt=0,
        description="How long a role waits to reach another before failing with the role, "
        "address and port it tried: trainer ranks dialling rank 0's process-group store, a "
        "sampler dialling the trainer's weight-sync store.",
    )


class MlflowConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tracking_uri: str | None = Field(
        None,
        description="Default: MLFLOW_TRACKING_URI (set by AML in a job), else sqlite under output_dir.",
    )
    experiment_name: str = Field("grpo-service", description="MLflow experiment.")
    log_model: bool = Field(
        True, description="Log the final model as an MLflow transformers model."
    )


class RunConfig(BaseModel):
    """One run: every component's section."""

    model_config = ConfigDict(extra="forbid")

    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    sampler: SamplerConfig = Field(default_factory=SamplerConfig)
    rewards: RewardPoolConfig = Field(default_factory=RewardPoolConfig)
    trainer: GRPOSettings = Field(default_factory=GRPOSettings)
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)
    mlflow: MlflowConfig = Field(default_factory=MlflowConfig)
    azure: dict[str, Any] | None = Field(
        None, description="Read by deploy/ only (submit defaults)."
    )
    _reward_spec: RewardSpec | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _cross_checks(self) -> RunConfig:
        t = self.trainer
        per_step = (
            t.per_device_train_batch_size
            * t.gradient_accumulation_steps
            * self.pipeline.num_trainer_workers
        )
        if per_step % t.num_generations:
            raise ValueError(
                f"trainer.num_generations={t.num_generations} must divide the completions per optimizer step "
                f"(per_device_train_batch_size {t.per_device_train_batch_size} x gradient_accumulation_steps "
                f"{t.gradient_accumulation_steps} x pipeline.num_trainer_workers {self.pipeline.num_trainer_workers}"
                f" = {per_step}): change one of them"
            )
        if "seed" not in self.sampler.model_fields_set:
            # trainer.seed seeds rollout sampling too, as TRL's `seed` seeds generation: otherwise
            # runs that differ only in trainer.seed would all sample with the same engine stream.
            self.sampler.seed = t.seed
        if t.vllm_importance_sampling_mode is None:
            t.vllm_importance_sampling_mode = default_is_mode(self.pipeline.max_staleness)
        ahead = self.pipeline.dispatch_ahead
        if ahead is not None and ahead < self.pipeline.max_staleness:
            raise ValueError(
                f"pipeline.dispatch_ahead={ahead} is below pipeline.max_staleness="
                f"{self.pipeline.max_staleness}: it must be at least max_staleness (or null)"
            )
        problems = self._sampler_limit_problems()
        if problems:
            raise ValueError("; ".join(problems))
        self._reward_spec = validate_rewards(
            t.reward_funcs, t.reward_weights, self.rewards, t.max_completion_length
        )
        return self

    @property
    def reward_spec(self) -> RewardSpec:
        """The run's rewards as validated at load (what the driver builds its scorer from)."""
        assert self._reward_spec is not None  # set by every validation of the model
        return self._reward_spec

    def _sampler_limit_problems(self) -> list[str]:
        """What the trainer will ask of the samplers that their limits refuse (each names both
        settings and the fix). The sampler checks these per request; here they fail at load."""
        t, s, lim = self.trainer, self.sampler, self.sampler.limits
        out = []
        if t.num_generations > lim.max_n:
            out.append(
                f"trainer.num_generations={t.num_generations} exceeds sampler.limits.max_n="
                f"{lim.max_n} (each rollout request asks for num_generations completions): lower "
                "trainer.num_generations or raise sampler.limits.max_n"
            )
        if t.max_completion_length > lim.max_tokens:
            out.append(
                f"trainer.max_completion_length={t.max_completion_length} exceeds "
                f"sampler.limits.max_tokens={lim.max_tokens}: lower trainer.max_completion_length "
                "or raise sampler.limits.max_tokens"
            )
        if (
            t.max_prompt_length
            and lim.max_prompt_tokens
            and t.max_prompt_length > lim.max_prompt_tokens
        ):
            out.append(
                f"trainer.max_prompt_length={t.max_prompt_length} exceeds "
                f"sampler.limits.max_prompt_tokens={lim.max_prompt_tokens}: lower "
                "trainer.max_prompt_length or raise sampler.limits.max_prompt_tokens"
            )
        if s.max_model_len is not None:
            out += self._context_problems(s.max_model_len)
        evals = self.data.max_eval_examples
        if self.data.eval_split and t.eval_steps and evals and evals > lim.max_prompts_per_request:
            out.append(
                f"data.max_eval_examples={evals} exceeds sampler.limits.max_prompts_per_request="
                f"{lim.max_prompts_per_request} (an eval round can go to one replica as one "
                "request): lower data.max_eval_examples or raise sampler.limits.max_prompts_per_request"
            )
        return out

    def _context_problems(self, max_model_len: int) -> list[str]:
        t = self.trainer
        if t.max_prompt_length is None and t.max_completion_length >= max_model_len:
            return [
                f"trainer.max_completion_length={t.max_completion_length} leaves no room for a "
                f"prompt in sampler.max_model_len={max_model_len}: lower "
                "trainer.max_completion_length or raise sampler.max_model_len"
            ]
        if t.max_prompt_length and t.max_prompt_length + t.max_completion_length > max_model_len:
            return [
                f"trainer.max_prompt_length={t.max_prompt_length} + trainer.max_completion_length="
                f"{t.max_completion_length} = {t.max_prompt_length + t.max_completion_length} "
                f"exceeds sampler.max_model_len={max_model_len}: lower one of them or raise "
                "sampler.max_model_len"
            ]
        return []

    def prompt_token_budget(self, model_max_len: int | None) -> int | None:
        """The longest prompt the samplers accept next to a full completion: the smaller of
        sampler.limits.max_prompt_tokens and the context (sampler.max_model_len, else
        `model_max_len`, the model's own) minus trainer.max_completion_length; None if unknown."""
        context = self.sampler.max_model_len or model_max_len
        bounds = [self.sampler.limits.max_prompt_tokens]
        if context is not None:
            bounds.append(context - self.trainer.max_completion_length)
        known = [b for b in bounds if b is not None]
        return min(known) if known else None

    @property
    def completions_per_step(self) -> int:
        t = self.trainer
        return (
            t.per_device_train_batch_size
            * t.gradient_accumulation_steps
            * self.pipeline.num_trainer_workers
        )

    @property
    def prompts_per_step(self) -> int:
        return self.completions_per_step // self.trainer.num_generations


SECTIONS = tuple(RunConfig.model_fields)
# Keys a flat recipe-style YAML may hold at top level (read as the trainer section).
FLAT_TRAINER_KEYS = frozenset(
    {*GRPOSettings.model_fields, *MODEL_KEYS_IN_TRAINER, *IGNORED_TRL_KEYS}
    | {"model_name_or_path", "vllm_importance_sampling_cap"}
)
_DOTTED_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


def _unknown_section(key: str, value: Any) -> str | None:
    """The problem with a top-level key that is no section, or None for a flat trainer key (a
    recipe-style file; a misspelt one then fails in the trainer section with its own hint)."""
    if key in SECTIONS or key in FLAT_TRAINER_KEYS:
        return None
    near_section = difflib.get_close_matches(key, SECTIONS, n=1)
    near_key = difflib.get_close_matches(key, FLAT_TRAINER_KEYS, n=1)
    if near_section and (isinstance(value, dict) or not near_key):
        return f"unknown section {key!r} (did you mean {near_section[0]!r}?)"
    if isinstance(value, dict) and not near_key:
        return f"unknown section {key!r}; the sections are: {', '.join(SECTIONS)}"
    return None


def _check_sections(raw: dict[str, Any], source: str) -> None:
    for key, value in raw.items():
        problem = _unknown_section(str(key), value)
        if problem:
            raise ConfigError(f"invalid configuration in {source}: {problem}")


def _split_recipe_style(raw: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """A flat recipe-style YAML (TRL keys at top level) becomes {trainer: ..., model: ...}."""
    sections = set(SECTIONS)
    if not raw or set(raw) <= sections:
        return raw, []
    flat = {k: v for k, v in raw.items() if k not in sections}
    nested = {k: v for k, v in raw.items() if k in sections}
    trainer = dict(nested.get("trainer") or {})
    trainer.update(flat)
    nested["trainer"] = trainer
    return nested, [
        f"{len(flat)} top-level keys read as the trainer section (reference-recipe/TRL style)"
    ]


def _move_model_and_ignored(data: dict[str, Any]) -> list[str]:
    notes = []
    trainer = data.get("trainer")
    if not isinstance(trainer, dict):
        return notes
    model = dict(data.get("model") or {})
    for key in MODEL_KEYS_IN_TRAINER:
        if key in trainer:
            model[key] = trainer.pop(key)
            notes.append(f"trainer.{key} moved to model.{key}")
    if "model_name_or_path" in trainer:
        model["name_or_path"] = trainer.pop("model_name_or_path")
    if model:
        data["model"] = model
    for key in list(trainer):
        if key in IGNORED_TRL_KEYS:
            trainer.pop(key)
            notes.append(f"trainer.{key} ignored: {IGNORED_TRL_KEYS[key]}")
    return notes


def _format_error(err: ValidationError, source: str, overridden: frozenset[str]) -> str:
    """One line for one problem; a list for several. `overridden`: dotted keys set by --set."""
    problems = [_problem(e, overridden) for e in err.errors()]
    if len(problems) == 1:
        return f"invalid configuration in {source}: {problems[0]}"
    return "\n  ".join([f"invalid configuration in {source}:", *problems])


def _problem(e: Any, overridden: frozenset[str]) -> str:
    path = ".".join(str(p) for p in e["loc"])
    where = f"{path} (--set)" if path in overridden else path
    if e["type"] == "extra_forbidden":
        return f"{where}: unknown key{_key_hint(e['loc'])}"
    msg = e["msg"].removeprefix("Value error, ")
    if isinstance(e.get("input"), dict):  # a whole section's check: the message names the keys
        return f"{where}: {msg}" if where else msg
    return f"{where or '(top level)'}: {msg} (got {_shown(e['loc'], e.get('input'))!r:.80})"


def _key_hint(loc: tuple[Any, ...]) -> str:
    """Did-you-mean for an unknown key; else where its section's keys are listed."""
    parent = _model_at(loc[:-1])
    known = list(parent.model_fields) if parent else []
    close = difflib.get_close_matches(str(loc[-1]), known, n=1)
    if close:
        return f" (did you mean {close[0]!r}?)"
    if len(known) <= 12:
        return f"; known keys: {', '.join(known)}"
    section = ".".join(str(p) for p in loc[:-1])
    return f"; the keys of {section} are listed in docs/configuration.md"


def _shown(loc: tuple[Any, ...], value: Any) -> Any:
    """What an error may echo of a value: never a key (the error lands in logs and consoles)."""
    if loc and str(loc[-1]) in SECRET_FIELDS:
        return "<redacted>"
    if isinstance(value, dict):
        return {k: (_shown((k,), v)) for k, v in value.items()}
    return value


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    model: type[BaseModel] = RunConfig
    for part in loc:
        field = model.model_fields.get(str(part))
        ann = getattr(field, "annotation", None)
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return None
        model = ann
    return model


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`--set dotted.key=value` items into {dotted.key: value}; values are read as YAML (10,
    2.0e-6, [A, B], null), as the driver reads them. Shared by the driver and deploy/submit.py."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not _DOTTED_KEY.match(key):
            raise ConfigError(
                f"--set {item!r}: expected dotted.key=value (e.g. --set trainer.max_steps=10)"
            )
        try:
            out[key] = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {item!r}: the value is not valid YAML ({e})") from None
    return out


def _apply_overrides(raw: dict[str, Any], overrides: dict[str, Any]) -> None:
    for dotted, value in overrides.items():
        *parents, leaf = dotted.split(".")
        problem = _unknown_section(parents[0], {}) if parents else None
        if problem:
            raise ConfigError(f"--set {dotted}: {problem}")
        cur = raw
        for i, part in enumerate(parents):
            if cur.get(part) is None:  # absent, or a YAML section left empty
                cur[part] = {}
            if not isinstance(cur[part], dict):
                where = ".".join(parents[: i + 1])
                raise ConfigError(f"--set {dotted}: {where} is {cur[part]!r:.40}, not a section")
            cur = cur[part]
        cur[leaf] = value


def parse_config(
    raw: dict[str, Any] | None, source: str = "<dict>", overridden: frozenset[str] = frozenset()
) -> RunConfig:
    """Validate a mapping (nested sections, or flat recipe-style TRL keys) into a RunConfig.
    `overridden` names the dotted keys that came from --set (errors on them say so)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of sections, got {type(raw).__name__}")
    _check_sections(raw, source)
    data, notes = _split_recipe_style(dict(raw))
    notes += _move_model_and_ignored(data)
    for n in notes:
        log.info("config %s: %s", source, n)
    try:
        return RunConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_error(e, source, overridden)) from None


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Load a run YAML. `overrides` are dotted keys (`trainer.max_steps`) applied on top, and
    validated exactly as the YAML is (see `parse_overrides`)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from None
    overridden: frozenset[str] = frozenset()
    if overrides and isinstance(raw, dict):
        _check_sections(raw, str(p))
        raw, _ = _split_recipe_style(raw)
        _apply_overrides(raw, overrides)
        flat = {f"trainer.{k}" for k in overrides if "." not in k}
        overridden = frozenset(overrides) | flat
    return parse_config(raw, str(p), overridden)
