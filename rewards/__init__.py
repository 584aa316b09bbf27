"""Reward functions (TRL calling convention) and the reward worker pool.

Owns: the built-in rewards (`accuracy`, `format`, `format_lenient`, `char_class`, `overlong`,
`repetition`), their registry and plugin loading (`rewards.registry`), and scoring batches with
failure isolation, in-process or on a Ray actor pool (`rewards.pool`).
Does not know: the trainer, the sampler, datasets on disk or advantages.

Nothing heavy is imported here; Ray is imported only when a Ray pool is built.
"""

from rewards.pool import RewardBatch, RewardScorer, make_scorer
from rewards.registry import RewardFn, resolve_reward, reward_name

__all__ = [
    "RewardBatch",
    "RewardFn",
    "RewardScorer",
    "make_scorer",
    "resolve_reward",
    "reward_name",
]
