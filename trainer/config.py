"""The run configuration: one YAML, one pydantic model per component.

Owns: `RunConfig` (the whole YAML) with its cross-section checks, the pipeline, model and MLflow
sections, and `ConfigError`. The trainer section is `trainer.grpo_settings.GRPOSettings`; reading
a file, `--set` overrides and the error messages live in `trainer.config_loading`.
Does not know: how components use their sections.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from data.config import DataConfig
from rewards.config import RewardPoolConfig
from rewards.spec import RewardSpec, validate_rewards
from sampler.config import SamplerConfig
from trainer.grpo_settings import GRPOSettings, default_is_mode

log = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A configuration is unusable; the message names the key and how to fix it."""


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
