"""How the run samples: the one place the sampler's per-request settings are built from config.

Owns: `rollout_sampling` (training rollouts) and `eval_sampling` (eval: the rollout's settings with
eval's deliberate differences on top). Does not know: HTTP, the orchestrator, rewards.
"""

from __future__ import annotations

from sampler.client import SamplingSpec
from trainer.config import GRPOSettings

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
    )


def eval_sampling(t: GRPOSettings) -> tuple[SamplingSpec, int]:
    """(spec, completions per prompt) for eval: the rollout's spec, one completion per prompt."""
    return rollout_sampling(t), EVAL_COMPLETIONS_PER_PROMPT
