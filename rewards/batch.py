"""One scored batch and the scorer interface: what every scorer returns and how it is built.

Owns: `RewardBatch`, the `RewardScorer` protocol, `combine` (TRL's weighted nansum; NaN for an
item no reward scored) and `build_batch` (assembly plus failure logging).
Does not know: where rewards run (rewards.inprocess, rewards.ray_pool), reward semantics.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from rewards.execution import FuncResult

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
