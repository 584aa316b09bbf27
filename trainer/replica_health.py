"""The replica watchdog: tells a hung sampler replica (process alive, not answering) from a busy
one, and paces restarts of a replica that keeps failing.

Owns: the health-check loop over the replicas in rotation, the failed-checks-in-a-row rule that
declares a replica hung, and the exponential restart backoff.
Does not know: Ray, processes or HTTP. It receives a `check(url) -> bool` and an
`on_hung(index, url)` coroutine; the driver kills the hung replica there, which turns "hung" into
"dead": its in-flight requests fail at once and re-run on the others, a weight push to it fails
instead of waiting for a timeout, and the driver's between-steps healing restarts it.

Why kill rather than only take it out of rotation: a SIGSTOPped or deadlocked server still
accepts TCP connections, so every request and every weight push already sent to it would wait for
its full timeout (600 s and 300 s by default).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

log = logging.getLogger(__name__)


@dataclass
class RestartBackoff:
    """Restart pacing per replica: the first restart is immediate; a replica that fails again
    within `max_s` of its last restart waits `base_s`, then twice that, ... up to `max_s`."""

    base_s: float
    max_s: float
    clock: Callable[[], float] = time.monotonic
    _streak: dict[int, int] = field(default_factory=dict)
    _last: dict[int, float] = field(default_factory=dict)

    def delay(self, index: int) -> float:
        """Seconds replica `index` must still wait before its next restart."""
        streak = self._current_streak(index)
        if streak == 0:
            return 0.0
        wait = min(self.base_s * 2 ** (streak - 1), self.max_s)
        return max(0.0, self._last[index] + wait - self.clock())

    def restarted(self, index: int) -> None:
        """Record a restart attempt (successful or not) of replica `index`."""
        self._streak[index] = self._current_streak(index) + 1
        self._last[index] = self.clock()

    def _current_streak(self, index: int) -> int:
        last = self._last.get(index)
        if last is None or self.clock() - last > self.max_s:
            return 0  # healthy long enough since the last restart: a fresh start
        return self._streak.get(index, 0)


class ReplicaWatchdog:
    """Checks every watched replica each `interval_s`; `failures` failed checks in a row call
    `on_hung(index, url)` once and stop watching that replica until it is watched again."""

    def __init__(
        self,
        check: Callable[[str], Awaitable[bool]],
        on_hung: Callable[[int, str], Awaitable[None]],
        interval_s: float,
        failures: int,
    ) -> None:
        self._check, self._on_hung = check, on_hung
        self.interval_s, self.failures = interval_s, failures
        self._watched: dict[int, str] = {}
        self._failed: dict[int, int] = {}
        self.hung_total = 0

    def watch(self, index: int, url: str) -> None:
        """Start (or restart, with a clean count) watching replica `index` at `url`."""
        self._watched[index] = url
        self._failed[index] = 0

    def unwatch(self, index: int) -> None:
        self._watched.pop(index, None)
        self._failed.pop(index, None)

    async def check_once(self) -> list[int]:
        """One round of checks; the replicas declared hung in it (already handed to on_hung)."""
        watched = list(self._watched.items())
        oks = await asyncio.gather(*(self._check(url) for _, url in watched))
        hung = []
        for (index, url), ok in zip(watched, oks, strict=True):
            if self._watched.get(index) != url:
                continue  # unwatched or restarted while the check ran: its result is stale
            self._failed[index] = 0 if ok else self._failed[index] + 1
            if self._failed[index] >= self.failures:
                log.error(
                    "sampler replica %d (%s) failed %d health checks in a row: hung; killing it "
                    "so its requests re-run on the other replicas",
                    index,
                    url,
                    self._failed[index],
                )
                self.unwatch(index)
                self.hung_total += 1
                hung.append(index)
                await self._on_hung(index, url)
        return hung

    async def run(self) -> None:
        """Check forever (until cancelled), one round every interval_s."""
        while True:
            await asyncio.sleep(self.interval_s)  # the watchdog's period, not a synchronisation
            await self.check_once()
