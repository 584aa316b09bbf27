"""The in-process scorer: rewards run in the caller's process, no Ray.

Owns: `InProcessScorer`. Does not know: Ray (rewards.ray_pool), validation (rewards.spec: it is
built from an already validated `RewardSpec` and its resolved callables).
"""

from __future__ import annotations

import asyncio

from rewards.batch import RewardBatch, build_batch
from rewards.execution import check_batch, run_rewards
from rewards.registry import RewardFn
from rewards.spec import RewardSpec


class InProcessScorer:
    """Scores in the caller's process: no isolation from hangs or crashes, no Ray.

    Errors are still isolated per reward and per item (rewards.execution). `ascore` runs the
    scoring in a worker thread so the caller's event loop keeps serving.
    """

    def __init__(self, spec: RewardSpec, fns: dict[str, RewardFn]) -> None:
        self.names = list(spec.names)
        self.weights = spec.weights
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
