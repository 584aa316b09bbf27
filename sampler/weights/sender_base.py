"""Trainer side: what every weight pusher is.

Owns: the `WeightPusher` interface (send a full set of weights to replicas, which then serve
`version`), `WeightPushError` (a push reached no replica), and how one push's per-replica
failures conclude (logged, counted; raised only when every replica failed).
Does not know: any transport (`sender_dist.py`, `sender_files.py`), how the trainer gathers its
parameters (it hands an iterator).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from sampler.client import SamplerClient

    NamedTensors = Iterable[tuple[str, torch.Tensor]]  # a full set of weights, in send order

log = logging.getLogger(__name__)


class WeightPushError(RuntimeError):
    """A weight push reached no replica."""


class WeightPusher:
    """Sends a full set of weights to replicas, which then serve `version` (`reset`: even if it
    is not newer than what they serve: a new trainer session taking over)."""

    client: SamplerClient
    last_failed: dict[str, str]

    async def push(
        self,
        named_tensors: Iterable[tuple[str, torch.Tensor]],
        version: int,
        urls: list[str] | None = None,
        reset: bool = False,
    ) -> dict[str, float]:
        """Push to `urls` (default: the client's replicas in rotation); the stats of the push."""
        urls = [u.rstrip("/") for u in (urls or self.client.urls)]
        return await self._push(named_tensors, version, urls, reset)

    async def _push(
        self, named_tensors: NamedTensors, version: int, urls: list[str], reset: bool
    ) -> dict[str, float]:
        """One push to `urls` (normalised: no trailing slash), by the transport."""
        raise NotImplementedError

    async def aclose(self) -> None:
        return None

    def _conclude(
        self, stats: dict[str, float], failed: dict[str, str], urls: list[str]
    ) -> dict[str, float]:
        self.last_failed = failed
        stats["replicas_ok"] = float(len(urls) - len(failed))
        stats["replicas_failed"] = float(len(failed))
        if failed and len(failed) == len(urls):
            raise WeightPushError(
                "weight push reached no replica: "
                + "; ".join(f"{u}: {e}" for u, e in failed.items())
            )
        for u, e in failed.items():
            log.error("weight push to %s failed: %s (resync it with push(..., urls=[url]))", u, e)
        return stats
