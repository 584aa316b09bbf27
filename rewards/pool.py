"""Scoring batches with several rewards: the scorer interface, weighting, the in-process scorer.

Owns: `RewardBatch`, the `RewardScorer` protocol, `combine` (TRL's weighted nansum; NaN for an
item no reward scored),
`InProcessScorer` and `make_scorer` (in-process or the Ray pool of rewards.ray_pool).
Does not know: Ray internals (rewards.ray_pool), reward semantics (the reward modules).

The trainer calls `ascore` for every finished group (many concurrent calls of ~8-64 items) and
for batches of a few hundred items; `score` is the blocking form.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from rewards.config import RewardPoolConfig
from rewards.execution import FuncResult, check_batch, run_rewards
from rewards.registry import BUILTIN_INPUTS, RewardFn, resolve_reward, reward_name

log = logging.getLogger(__name__)


@dataclass
class RewardBatch:
    """Scores of one batch.

    total: weighted sum over rewards per item (TRL: None -> NaN, nansum), NaN where no reward
    gave a value (the trainer leaves such an item out of training; `unscored` counts them);
    per_func: each reward's column (for `rewards/<name>/mean`); failures: per reward, items that
    got None through an error, timeout or dead worker; failure_samples: per reward, the first
    failure of this batch (error and a sample of the input), for logging.
    """

    total: list[float]
    per_func: dict[str, list[float | None]]
    failures: dict[str, int]
    failure_samples: dict[str, str] = field(default_factory=dict)

    @property
    def unscored(self) -> int:
        """Items no reward function scored (total NaN)."""
        return sum(math.isnan(t) for t in self.total)

    def metrics(self) -> dict[str, float]:
        """TRL's per-reward metrics: `rewards/<name>/mean` and `/std` over the items that have a
        value (NaN if none), plus `rewards/<name>/failures` (items None through a failure)."""
        out: dict[str, float] = {}
        for name, values in self.per_func.items():
            vals = [v for v in values if v is not None and not math.isnan(v)]
            mean = sum(vals) / len(vals) if vals else math.nan
            var = sum((v - mean) ** 2 for v in vals) / (len(vals) - 1) if len(vals) > 1 else 0.0
            out[f"rewards/{name}/mean"] = mean
            out[f"rewards/{name}/std"] = math.sqrt(var) if vals else math.nan
            out[f"rewards/{name}/failures"] = float(self.failures.get(name, 0))
        return out


class RewardScorer(Protocol):
    def score(self, prompts: list, completions: list, columns: dict[str, list]) -> RewardBatch: ...

    async def ascore(
        self, prompts: list, completions: list, columns: dict[str, list]
    ) -> RewardBatch: ...

    def close(self) -> None: ...


def combine(per_func: dict[str, list[float | None]], weights: dict[str, float]) -> list[float]:
    """TRL's combination: sum over rewards of weight * value, skipping None/NaN; NaN if all are.

    NaN, not nansum's 0.0: an item whose rewards all failed (dead pool, timeouts) would otherwise
    score 0.0, enter its group's baseline and be trained on (TRL 1.16 marks such rows NaN too).
    """
    names = list(per_func)
    n = len(per_func[names[0]]) if names else 0
    out = []
    for i in range(n):
        values = [(name, per_func[name][i]) for name in names]
        valid = [weights[name] * v for name, v in values if v is not None and not math.isnan(v)]
        out.append(sum(valid) if valid else math.nan)
    return out


def check_weights(names: Sequence[str], reward_weights: Sequence[float] | None) -> dict[str, float]:
    """One finite weight per reward (default 1.0), else ValueError naming the fix."""
    if reward_weights is None:
        return dict.fromkeys(names, 1.0)
    if len(reward_weights) != len(names):
        raise ValueError(
            f"reward_weights has {len(reward_weights)} values for {len(names)} reward_funcs {list(names)}: "
            "give one weight per reward (trainer.reward_weights)"
        )
    for name, w in zip(names, reward_weights, strict=True):
        if not isinstance(w, (int, float)) or isinstance(w, bool) or not math.isfinite(w):
            raise ValueError(f"reward_weights for {name!r} must be a finite number, got {w!r}")
    return {name: float(w) for name, w in zip(names, reward_weights, strict=True)}


def unique_names(reward_funcs: Sequence[str]) -> list[str]:
    """Metric names of the rewards; ValueError if two rewards would share `rewards/<name>/mean`."""
    if not reward_funcs:
        raise ValueError(
            "reward_funcs is empty: name at least one reward (e.g. [accuracy, format])"
        )
    names = [reward_name(r) for r in reward_funcs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(
            f"reward_funcs {list(reward_funcs)} give duplicate metric names {dupes}; each reward once"
        )
    return names


def build_batch(
    names: Sequence[str],
    weights: dict[str, float],
    results: dict[str, FuncResult],
    completions: Sequence[Any],
) -> RewardBatch:
    """Assemble a RewardBatch and log each failure (with its sample) and items no reward scored."""
    per_func = {n: results[n].values for n in names}
    failures = {n: results[n].failed for n in names}
    samples = {n: results[n].error for n in names if results[n].error}
    for n, msg in samples.items():
        log.warning(
            "reward %r: %d of %d items scored None after a failure: %s",
            n,
            failures[n],
            len(completions),
            msg,
        )
    total = combine(per_func, weights)
    unscored = [i for i, t in enumerate(total) if math.isnan(t)]
    if unscored:
        log.warning(
            "%d of %d items got None from every reward (total NaN: left out of training), "
            "first index %d",
            len(unscored),
            len(completions),
            unscored[0],
        )
    return RewardBatch(total, per_func, failures, samples)


class InProcessScorer:
    """Scores in the caller's process: no isolation from hangs or crashes, no Ray.

    Errors are still isolated per reward and per item (rewards.execution). `ascore` runs the
    scoring in a worker thread so the caller's event loop keeps serving.
    """

    def __init__(
        self,
        reward_funcs: Sequence[str],
        reward_weights: Sequence[float] | None,
        fns: dict[str, RewardFn],
    ) -> None:
        self.names = unique_names(reward_funcs)
        self.weights = check_weights(self.names, reward_weights)
        self._fns = fns

    def score(self, prompts: list, completions: list, columns: dict[str, list]) -> RewardBatch:
        check_batch(prompts, completions, columns)
        results = run_rewards(self._fns, self.names, prompts, completions, columns)
        return build_batch(self.names, self.weights, results, completions)

    async def ascore(
        self, prompts: list, completions: list, columns: dict[str, list]
    ) -> RewardBatch:
        return await asyncio.to_thread(self.score, prompts, completions, columns)

    def close(self) -> None:
        pass


def resolve_all(
    reward_funcs: Sequence[str], config: RewardPoolConfig, max_completion_length: int | None
) -> dict[str, RewardFn]:
    """{metric name: callable} for `reward_funcs` with the pool config's reward options."""
    return {
        reward_name(spec): resolve_reward(
            spec,
            max_completion_length=max_completion_length,
            answer_choices=config.answer_choices,
            overlong_buffer=config.overlong_buffer_tokens,
        )
        for spec in reward_funcs
    }


def is_inline(spec: str, config: RewardPoolConfig) -> bool:
    """Whether reward `spec` is scored in the driver rather than on the pool's actors."""
    return config.inline_builtins and spec.strip() in BUILTIN_INPUTS


def make_scorer(
    reward_funcs: list[str],
    reward_weights: list[float] | None,
    config: RewardPoolConfig,
    *,
    max_completion_length: int | None = None,
) -> RewardScorer:
    """A scorer for `reward_funcs`: the Ray actor pool if `config.use_ray`, else in-process.

    Every reward is resolved here first, so a bad name or import path fails in the driver with
    a clear error before any worker starts. With `config.inline_builtins` (default) the built-in
    rewards are scored in the driver and only plugins go to the actors; if every reward is a
    built-in, the scorer is in-process and Ray is not started.
    """
    names = unique_names(reward_funcs)
    check_weights(names, reward_weights)
    fns = resolve_all(reward_funcs, config, max_completion_length)
    if not config.use_ray or all(is_inline(spec, config) for spec in reward_funcs):
        # Only built-ins with inline_builtins: no actor would ever be called, so start none.
        return InProcessScorer(reward_funcs, reward_weights, fns)
    from rewards.ray_pool import RayScorer

    return RayScorer(
        list(reward_funcs), reward_weights, config, max_completion_length=max_completion_length
    )
