"""Keeping the launched sampler replicas in service: the watchdog that kills a hung replica, and
the between-steps healing that restarts dead ones (with backoff), resyncs and probes them, and
puts them back in rotation.

Owns: which replicas are in rotation, the watchdog task, the restart backoff.
Does not know: how weights travel or how a step is trained. The driver hands it
`resync(url, version, others)`, a coroutine that pushes `version`'s weights to the restarted
replica at `url` (and probes them) while `others` stay in service, and `rotation(urls)`, which
tells the trainer ranks and the rollout client the URLs in service.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from sampler.client import SamplerClient
from sampler.config import ReplicaWatchdog as WatchdogConfig
from trainer.replica_health import ReplicaWatchdog, RestartBackoff

log = logging.getLogger(__name__)


class ReplicaHealer:
    """The launched replicas (Ray actors of trainer.workers.SamplerReplica) and their upkeep."""

    def __init__(
        self,
        replicas: list[Any],
        client: SamplerClient,
        cfg: WatchdogConfig,
        startup_timeout_s: float,
        write_replicas: Callable[[list[dict[str, Any]]], None],
        rotation: Callable[[list[str]], Awaitable[None]],
        resync: Callable[[str, int, list[str]], Awaitable[dict[str, float]]],
    ) -> None:
        self.replicas, self.client, self.cfg = replicas, client, cfg
        self.startup_timeout_s = startup_timeout_s
        self.write = write_replicas  # replicas.json (trainer.run_files)
        self._rotation, self._resync = rotation, resync
        self.backoff = RestartBackoff(cfg.backoff_s, cfg.backoff_max_s)
        self.watchdog = ReplicaWatchdog(self._responsive, self._kill, cfg.interval_s, cfg.failures)
        self._task: asyncio.Task | None = None
        self.restarts = 0  # successful restarts this session (the rollout/sampler_restarts metric)

    # ------------------------------------------------------------------ the watchdog
    def start(self, urls: list[str]) -> None:
        """Watch every replica (urls[i] is replica i) unless checks are turned off."""
        if self.cfg.interval_s <= 0 or not self.replicas:
            return
        for i, url in enumerate(urls):
            self.watchdog.watch(i, url)
        self._task = asyncio.create_task(self.watchdog.run(), name="replica-watchdog")

    async def _responsive(self, url: str) -> bool:
        """Server and engine answer in time (one waiting for a full weight push is alive)."""
        body = await self.client.health(
            url, accept_needs_weights=True, timeout_s=self.cfg.timeout_s
        )
        return body is not None

    async def _kill(self, index: int, url: str) -> None:
        """A hung replica: SIGKILL its process group, so whatever waits on it fails now."""
        await self.replicas[index].kill.remote()
        self.client.set_urls([u for u in self.client.urls if u != url.rstrip("/")])

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def check_watchdog(self) -> None:
        """Raise the watchdog's own failure (a bug, not a hung replica) in the run loop."""
        if self._task is not None and self._task.done() and not self._task.cancelled():
            self._task.result()

    # ------------------------------------------------------------------ healing
    async def heal(self, version: int) -> None:
        """Restart dead replicas whose backoff has passed, resync them to `version`, and put them
        back in rotation; replicas still backing off stay out of it (logged)."""
        self.check_watchdog()
        infos = await self._infos()
        dead = [i for i, info in enumerate(infos) if not info["alive"]]
        if not dead:
            return
        alive = [info["url"] for info in infos if info["alive"]]
        await self._rotation(alive)
        for i in dead:
            self.watchdog.unwatch(i)
            wait = self.backoff.delay(i)
            if wait > 0 and alive:  # never leave the run without a replica to wait for
                log.warning("sampler replica %d is down; next restart in %.0fs (backoff)", i, wait)
                continue
            if wait > 0:
                await asyncio.sleep(wait)  # the backoff itself: no replica is left to sample
            url = await self._restart(i, infos[i]["url"], version, alive)
            if url is not None:
                alive.append(url)
        self.write([{**info, "version": version} for info in await self._infos()])
        if not alive:
            raise RuntimeError("no sampler replica could be restarted (see the replica logs)")

    async def _restart(self, i: int, old_url: str, version: int, alive: list[str]) -> str | None:
        """Restart replica i, resync and probe it, and add it to the rotation; None (logged) if
        it fails to come back: it is tried again after its backoff."""
        log.warning("sampler replica %d (%s) is down; restarting", i, old_url)
        self.backoff.restarted(i)
        try:
            url = await self.replicas[i].start.remote(self.startup_timeout_s)
            m = await self._resync(url, version, alive)
        except Exception as e:  # a failed restart is retried later; the others carry on
            log.error("sampler replica %d failed to restart: %s", i, e)
            with contextlib.suppress(Exception):
                await self.replicas[i].kill.remote()
            return None
        gap = m.get("weight_sync/probe_gap", "off")
        if m.get("weight_sync/probe_unreachable"):
            gap = "none: it did not answer the probe"
        log.info(
            "sampler replica %s rejoined at policy version %d (weight probe gap %s)",
            url,
            version,
            gap,
        )
        served = (await self.client.versions([url])).get(url.rstrip("/"))
        if served != version:
            raise RuntimeError(
                f"restarted sampler replica {i} reports version {served} after resync to {version}"
            )
        await self._rotation([*alive, url])
        self.watchdog.watch(i, url)
        self.restarts += 1
        log.info("sampler replica %d back at %s with version %d", i, url, version)
        return url

    async def _infos(self) -> list[dict[str, Any]]:
        return list(await asyncio.gather(*[r.info.remote() for r in self.replicas]))
