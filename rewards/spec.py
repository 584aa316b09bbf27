"""Which rewards a run uses, validated once: names, weights and the built-ins' options.

Owns: `RewardSpec` (the validated set: reward specs, metric names, weights, pool options),
`validate_rewards` (the one check, run when the run config loads; errors name the field),
`RewardSpec.resolve` (spec -> callables, where the rewards run) and `RewardSpec.is_inline`.
Does not know: how or where rewards are executed (rewards.inprocess, rewards.ray_pool).

Validation builds every built-in with its options (cheap, pure) and checks a plugin's import
path without importing it: plugins import where they run (the driver's scorer, each actor), so
a config still loads on a machine that does not have them (e.g. where a job is submitted).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from rewards.config import RewardPoolConfig
from rewards.registry import (
    BUILTIN_INPUTS,
    BUILTIN_REWARDS,
    RewardFn,
    check_reward_name,
    resolve_reward,
    reward_name,
)

# Built-ins whose construction errors do not name their setting themselves (overlong's do).
_OPTION_FIELDS = {"accuracy": "rewards.answer_choices"}


@dataclass(frozen=True)
class RewardSpec:
    """A validated reward set (from `validate_rewards`); picklable, so actors build from it."""

    reward_funcs: tuple[str, ...]
    weights: dict[str, float]  # metric name -> weight, in reward order
    config: RewardPoolConfig
    max_completion_length: int | None = None

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.weights)

    def is_inline(self, func: str) -> bool:
        """Whether reward `func` is scored in the driver rather than on the pool's actors."""
        return self.config.inline_builtins and func.strip() in BUILTIN_INPUTS

    def resolve(self) -> dict[str, RewardFn]:
        """{metric name: callable}; imports plugins (ValueError naming one that does not)."""
        return {reward_name(func): self._resolve(func) for func in self.reward_funcs}

    def _resolve(self, func: str) -> RewardFn:
        return resolve_reward(
            func,
            max_completion_length=self.max_completion_length,
            answer_choices=self.config.answer_choices,
            overlong_buffer=self.config.overlong_buffer_tokens,
        )


def unique_names(reward_funcs: Sequence[str]) -> list[str]:
    """Metric names of the rewards; ValueError if two rewards would share `rewards/<name>/mean`."""
    if not reward_funcs:
        raise ValueError(
            "trainer.reward_funcs is empty: name at least one reward (e.g. [accuracy, format])"
        )
    names = [reward_name(r) for r in reward_funcs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(
            f"trainer.reward_funcs {list(reward_funcs)} give duplicate metric names {dupes}; "
            "each reward once"
        )
    return names


def check_weights(names: Sequence[str], reward_weights: Sequence[float] | None) -> dict[str, float]:
    """One finite weight per reward (default 1.0), else ValueError naming the fix."""
    if reward_weights is None:
        return dict.fromkeys(names, 1.0)
    if len(reward_weights) != len(names):
        raise ValueError(
            f"trainer.reward_weights has {len(reward_weights)} values for {len(names)} "
            f"trainer.reward_funcs {list(names)}: give one weight per reward"
        )
    for name, w in zip(names, reward_weights, strict=True):
        if not isinstance(w, (int, float)) or isinstance(w, bool) or not math.isfinite(w):
            raise ValueError(
                f"trainer.reward_weights for {name!r} must be a finite number, got {w!r}"
            )
    return {name: float(w) for name, w in zip(names, reward_weights, strict=True)}


def validate_rewards(
    reward_funcs: Sequence[str],
    reward_weights: Sequence[float] | None,
    config: RewardPoolConfig,
    max_completion_length: int | None = None,
) -> RewardSpec:
    """The run's rewards checked in full (plugins only by import path); ValueError naming the
    setting to fix. The one validation: config load runs it, `make_scorer` runs it for callers
    that build a scorer without a run config."""
    for func in reward_funcs:
        try:
            check_reward_name(func)
        except ValueError as e:
            raise ValueError(f"trainer.reward_funcs: {e}") from None
    names = unique_names(reward_funcs)
    spec = RewardSpec(
        tuple(f.strip() for f in reward_funcs),
        check_weights(names, reward_weights),
        config,
        max_completion_length,
    )
    for func in spec.reward_funcs:
        if func in BUILTIN_REWARDS:
            try:
                spec._resolve(func)
            except ValueError as e:
                field = _OPTION_FIELDS.get(func, "trainer.reward_funcs")
                raise ValueError(f"{field}: reward {func!r}: {e}") from None
    return spec
