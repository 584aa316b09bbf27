"""How the run samples: the one place the sampler's per-request settings are built from config.

Owns: `rollout_sampling` (training rollouts), `eval_sampling` (eval: the rollout's settings with
eval's deliberate differences on top) and the orchestrator's `RolloutSettings` from the run config.
Does not know: HTTP, how the orchestrator uses them, reward semantics.
"""

from __future__ import annotations

from sampler.client import SamplingSpec
from trainer.config import GRPOSettings, RunConfig
from trainer.orchestrator import RolloutSettings

# Eval asks for one completion per prompt (it measures the policy, it builds no groups).
EVAL_COMPLETIONS_PER_PROMPT = 1


def rollout_sampling(t: GRPOSettings) -> SamplingSpec:
    """Every sampling setting of `trainer:` (TRL's names), as the sampler receives it."""
    return SamplingSpec(
        max_tokens=t.max_completion_length,
        temperature=t.temperature,
        top_p=t.top_p,
        top_k=t.top_k,
        min_p=t.min_p,
        repetition_penalty=t.repetition_penalty,
        stop_token_ids=t.generation_kwargs.stop_token_ids,
    )


def eval_sampling(t: GRPOSettings) -> tuple[SamplingSpec, int]:
    """(spec, completions per prompt) for eval: the rollout's spec, one completion per prompt."""
    return rollout_sampling(t), EVAL_COMPLETIONS_PER_PROMPT


def rollout_settings(cfg: RunConfig, steps: int) -> RolloutSettings:
    """What the orchestrator needs of the run config for `steps` steps."""
    from rewards.registry import reward_name

    t, p = cfg.trainer, cfg.pipeline
    return RolloutSettings(
        t.num_generations,
        cfg.prompts_per_step,
        p.max_staleness,
        t.scale_rewards,
        rollout_sampling(t),
        p.filter_zero_std_groups,
        p.max_inflight_prompts,
        [reward_name(n) for n in t.reward_funcs],
        steps,
        p.dispatch_ahead,
        p.max_failed_reward_fraction,
        p.failed_reward_window,
    )
