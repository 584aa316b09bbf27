"""The reward actor: one process that holds resolved rewards and scores batches.

Owns: `RewardWorker`, a plain class that rewards.ray_pool wraps with `ray.remote` (so this
module imports nothing heavy and can be tested without Ray). Does not know: timeouts, retries,
restarts (the pool's job: a hung or dead actor is killed and replaced from outside).
"""

from __future__ import annotations

import os

from rewards.execution import FuncResult, run_rewards
from rewards.spec import RewardSpec


class RewardWorker:
    """Resolves the rewards of a validated spec once (plugins import on this worker) and scores
    batches."""

    def __init__(self, spec: RewardSpec) -> None:
        self._fns = spec.resolve()

    def ping(self) -> int:
        """The worker's pid (a started actor answers; used as the readiness check)."""
        return os.getpid()

    def score(
        self, names: list[str], prompts: list, completions: list, columns: dict[str, list]
    ) -> dict[str, FuncResult]:
        return run_rewards(self._fns, names, prompts, completions, columns)
