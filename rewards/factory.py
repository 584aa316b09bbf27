"""Building a scorer: the top of rewards/, the only module that knows every kind of scorer.

Owns: `make_scorer` (validate, then build) and `build_scorer` (from a `RewardSpec` validated at
config load). Does not know: Ray internals (rewards.ray_pool), reward semantics, validation rules
(rewards.spec).

The trainer calls `ascore` for every finished group (many concurrent calls of ~8-64 items) and
for batches of a few hundred items; `score` is the blocking form.
"""

from __future__ import annotations

from collections.abc import Sequence

from rewards.batch import RewardScorer
from rewards.config import RewardPoolConfig
from rewards.inprocess import InProcessScorer
from rewards.registry import RewardFn
from rewards.spec import RewardSpec, validate_rewards


def build_scorer(spec: RewardSpec, fns: dict[str, RewardFn] | None = None) -> RewardScorer:
    """A scorer for a validated spec: the Ray actor pool if `spec.config.use_ray`, else in-process.

    `fns`: the spec's callables if the caller resolved them already (`spec.resolve()`), else they
    are resolved here; either way once in this process, so a plugin that does not import fails
    in the driver before any worker starts. With `inline_builtins` (default) the built-in rewards
    are scored in the driver and only plugins go to the actors; if every reward is a built-in,
    the scorer is in-process and Ray is not started.
    """
    fns = spec.resolve() if fns is None else fns
    if not spec.config.use_ray or all(spec.is_inline(f) for f in spec.reward_funcs):
        # Only built-ins with inline_builtins: no actor would ever be called, so start none.
        return InProcessScorer(spec, fns)
    from rewards.ray_pool import RayScorer

    return RayScorer(spec, fns)


def make_scorer(
    reward_funcs: Sequence[str],
    reward_weights: Sequence[float] | None,
    config: RewardPoolConfig,
    *,
    max_completion_length: int | None = None,
) -> RewardScorer:
    """`build_scorer` for rewards not yet validated (ValueError naming the setting to fix)."""
    spec = validate_rewards(reward_funcs, reward_weights, config, max_completion_length)
    return build_scorer(spec)
