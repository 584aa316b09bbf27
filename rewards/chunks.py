"""How the reward pool cuts requests into pieces and puts their results back together.

Owns: `Chunk` (a piece of a request and the future its caller awaits), `split_ranges`,
`merge_results`. Does not know: Ray, actors, scheduling (rewards/ray_pool.py).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from rewards.execution import FuncResult


@dataclass
class Chunk:
    """One request's slice (or a coalesced piece) waiting for, or sent to, an actor."""

    names: tuple[str, ...]
    prompts: list
    completions: list
    columns: dict[str, list]
    future: asyncio.Future
    retries_left: int
    failures: list[str] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.completions)


def split_ranges(n: int, pieces: int) -> list[tuple[int, int]]:
    """`pieces` contiguous near-equal [start, end) ranges covering range(n)."""
    bounds = [round(i * n / pieces) for i in range(pieces + 1)]
    return [(bounds[i], bounds[i + 1]) for i in range(pieces) if bounds[i] < bounds[i + 1]]


def merge_results(
    names: tuple[str, ...], parts: list[dict[str, FuncResult]], sizes: list[int]
) -> dict[str, FuncResult]:
    """One result per reward over consecutive parts of `sizes` items (failed indices shifted)."""
    out = {}
    for name in names:
        values: list[float | None] = []
        failed: list[int] = []
        error = None
        offset = 0
        for part, size in zip(parts, sizes, strict=True):
            r = part[name]
            values.extend(r.values)
            failed.extend(offset + i for i in r.failed_idx)
            error = error or r.error
            offset += size
        out[name] = FuncResult(values, failed, error)
    return out
