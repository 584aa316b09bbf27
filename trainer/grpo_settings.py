"""The trainer section of the run config: `GRPOSettings`, with TRL 1.16 `GRPOConfig` names and
defaults, so a recipe-style `grpo_trainer_config.yaml` carries over; the TRL keys this service
ignores (and why), the model keys recipe-style files put here, the IS-mode default.

Owns: the trainer section's fields, their documentation and the checks within the section.
Does not know: the other sections (trainer.config) or how a file is read (trainer.config_loading).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from sampler.protocol import SamplingFields

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


class GenerationKwargs(BaseModel):
    """Extra vLLM `SamplingParams` of training and eval rollouts (TRL's `generation_kwargs`):
    only the keys the sampler's grouped route accepts."""

    model_config = ConfigDict(extra="forbid")

    stop_token_ids: list[Annotated[int, Field(ge=0)]] | None = Field(
        None,
        description="Token ids that end a completion besides eos (the stop token is kept in "
        "the completion, as vLLM does for eos); null: eos only.",
    )


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
    generation_kwargs: GenerationKwargs = Field(
        default_factory=GenerationKwargs,
        description="TRL's `generation_kwargs` (passed to vLLM's SamplingParams), limited to the "
        "keys the sampler accepts: `stop_token_ids`. Other keys fail at load.",
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
            if "generation_kwargs" in data and data["generation_kwargs"] is None:
                data = {**data, "generation_kwargs": {}}  # TRL's default is None
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
