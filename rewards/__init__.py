"""Reward functions (TRL calling convention) and the reward worker pool.

Owns: the built-in rewards (`accuracy`, `format`, `format_lenient`, `format_partial`,
`char_class`, `overlong`, `repetition`), their registry and plugin loading (`rewards.registry`),
and scoring batches with failure isolation, in-process or on a Ray actor pool. Layers, low to
high: registry, config, execution -> spec (validation), batch -> inprocess, worker -> ray_pool ->
factory (`make_scorer`).
Does not know: the trainer, the sampler, datasets on disk or advantages.

Nothing heavy is imported here; Ray is imported only when a Ray pool is built.
"""

from rewards.batch import RewardBatch, RewardScorer
from rewards.factory import build_scorer, make_scorer
from rewards.registry import RewardFn, resolve_reward, reward_name
from rewards.spec import RewardSpec, validate_rewards

__all__ = [
    "RewardBatch",
    "RewardFn",
    "RewardScorer",
    "RewardSpec",
    "build_scorer",
    "make_scorer",
    "resolve_reward",
    "reward_name",
    "validate_rewards",
]
