"""The reward actor: one process that holds resolved rewards and scores batches.

Owns: `RewardWorker`, a plain class that rewards.ray_pool wraps with `ray.remote` (so this
module imports nothing heavy and can be tested without Ray). Does not know: timeouts, retries,
restarts (the pool's job: a hung or dead actor is killed and replaced from outside).
"""

from __future__ import annotations

import os
from typing import Any

from rewards.config import RewardPoolConfig
from rewards.execution import FuncResult, run_rewards


class RewardWorker:
    """Resolves `reward_funcs` once (plugins are imported on this worker) and scores batches."""

    def __init__(
        self, reward_funcs: list[str], config: dict[str, Any], max_completion_length: int | None
    ) -> None:
        from rewards.pool import resolve_all

        self._fns = resolve_all(reward_funcs, RewardPoolConfig(**config), max_completion_length)

    def ping(self) -> int:
        """The worker's pid (a started actor answers; used as the readiness check)."""
        return os.getpid()

    def score(
        self, names: list[str], prompts: list, completions: list, columns: dict[str, list]
    ) -> dict[str, FuncResult]:
        return run_rewards(self._fns, names, prompts, completions, columns)
