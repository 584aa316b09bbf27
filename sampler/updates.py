"""Weight updates of one sampler replica: the two update modes and how tokens get their version.

Owns: `WeightUpdates`, the part of `SamplerService` that loads new weights into the running
engine (`update_gloo`, `update_path`) and keeps version labels exact in either mode, and
`token_versions`, which turns vLLM's per-completion weight-version spans into ours. Does not know:
how weights travel (the worker side, `sampler/weights/receiver*.py`), HTTP, the trainer.

How labels stay exact. vLLM's engine core stamps every step's outputs with its current weight
version label, and each finished completion reports the spans of tokens made under each label
(`CompletionOutput.weight_versions`). An update sets that label to the new version while no step
can run (the engine paused, or drained of our requests), so a token carries the version of the
weights that produced it, whatever the mode:
- `drain`: close admission, wait for in-flight requests (aborting stragglers after
  `update_drain_timeout_s`; they re-run on the new weights), load, relabel, reopen. Every
  completion has one version.
- `inflight`: pause the engine with its requests frozen (`pause_generation(mode="keep")`), load,
  relabel, resume: frozen requests continue on the new weights with their KV cache kept, and a
  completion may span versions. Admission stays open; requests that arrive meanwhile wait in
  vLLM's queue. The prefix cache cannot be reset while frozen requests hold blocks, so each
  version gets its own cache namespace (`cache_salt`, bumped when an update starts): no request
  admitted after an update starts reuses KV computed before it.
A failed load leaves the weights undefined: every request is aborted (frozen ones must not go on
with broken weights) and the replica refuses work until a later update succeeds.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

from sampler.errors import RequestError
from sampler.protocol import GlooUpdateRequest, PathUpdateRequest, UpdateResponse, VersionSpan
from sampler.weights.rpc import raise_rpc_errors

log = logging.getLogger(__name__)

# vLLM's label for weights nobody has named yet: the version the replica started with.
UNLABELLED = "default"


class WeightUpdates:
    """Mixin of `SamplerService` (which provides engine, cfg, metrics, the admission gate and
    `_preempt`): weight updates in `cfg.update_mode`."""

    engine: Any
    version: int
    broken: str | None
    updating: bool
    kv_namespace: int

    async def update_gloo(self, req: GlooUpdateRequest) -> UpdateResponse:
        timeout = req.timeout_s or self.cfg.weight_update_timeout_s
        kwargs = {
            "backend": req.backend,
            "host": req.master_addr,
            "port": req.master_port,
            "timeout_s": timeout,
            "connect_timeout_s": req.connect_timeout_s or timeout,
            "max_buffers": self.cfg.weight_sync_buffers,
            "session": req.session,
            "new_group": req.new_group,
        }
        return await self._update(
            req.backend,
            req.version,
            req.reset_version,
            lambda: self.engine.collective_rpc("sampler_receive_weights", kwargs=kwargs),
        )

    async def update_path(self, req: PathUpdateRequest) -> UpdateResponse:
        if not os.path.isdir(req.path):
            raise RequestError(400, f"path {req.path!r} is not a folder on this replica", "path")
        if not any(f.endswith(".safetensors") for f in os.listdir(req.path)):
            raise RequestError(400, f"path {req.path!r} holds no .safetensors files", "path")
        return await self._update(
            "filesystem",
            req.version,
            req.reset_version,
            lambda: self.engine.collective_rpc("sampler_load_path", kwargs={"path": req.path}),
        )

    async def _update(
        self,
        transport: str,
        version: int | None,
        reset: bool,
        load: Callable[[], Awaitable[list[dict]]],
    ) -> UpdateResponse:
        async with self._update_lock:
            new_version = self.version + 1 if version is None else version
            if new_version <= self.version and not self.broken and not reset:
                raise RequestError(
                    409,
                    f"version {new_version} is not newer than the served version {self.version}",
                    "version",
                )
            t0 = time.perf_counter()
            running = len(self._engine_ids)
            self.updating = True
            try:
                if self.cfg.update_mode == "inflight":
                    results, quiet_s = await self._load_inflight(transport, new_version, load)
                else:
                    results, quiet_s = await self._load_drained(transport, new_version, load)
            finally:
                self.updating = False
            seconds = time.perf_counter() - t0
            self.metrics.update_seconds.labels(transport).observe(seconds)
            self.metrics.updates.labels(transport, "ok").inc()
            stats = {k: float(v) for k, v in (results[0] or {}).items()} if results else {}
            # What the update cost the requests in flight, apart from the transfer itself:
            # `quiesce_seconds` is the wait for a quiet engine (drain: the running requests
            # finishing while new ones wait; inflight: the pause), and how many were running.
            stats.update(quiesce_seconds=quiet_s, requests_in_flight=float(running))
            return UpdateResponse(policy_version=new_version, seconds=seconds, stats=stats)

    async def _load_drained(
        self, transport: str, new_version: int, load: Callable[[], Awaitable[list[dict]]]
    ) -> tuple[list[dict], float]:
        """(worker results, seconds until the engine was quiet)."""
        t0 = time.perf_counter()
        self._open.clear()
        paused = False
        try:
            # With the gate closed and drained, the engine holds no request of ours; only after
            # aborting stragglers do we also pause the scheduler (vLLM's pause costs ~25 ms,
            # which matters for frequent small updates).
            paused = await self._drain()
            if paused:
                await self.engine.pause_generation(mode="wait", clear_cache=True)
            quiet_s = time.perf_counter() - t0
            results = await self._load(transport, new_version, load)
            # Cached prefixes hold KV computed with the old weights.
            await self.engine.reset_prefix_cache()
            return results, quiet_s
        finally:
            if paused:
                await self.engine.resume_generation()
            self._open.set()

    async def _load_inflight(
        self, transport: str, new_version: int, load: Callable[[], Awaitable[list[dict]]]
    ) -> tuple[list[dict], float]:
        """(worker results, seconds until the engine was quiet)."""
        t0 = time.perf_counter()
        # Requests admitted from now on must not hit prefixes cached with the old weights.
        self.kv_namespace += 1
        await self.engine.pause_generation(mode="keep", clear_cache=False)
        quiet_s = time.perf_counter() - t0
        try:
            return await self._load(transport, new_version, load), quiet_s
        except BaseException:
            # Frozen requests must not continue on undefined weights: they end as preempted
            # (and re-run only once a later update makes the replica healthy again).
            await self._preempt(list(self._engine_ids))
            raise
        finally:
            await self.engine.resume_generation()

    async def _load(
        self, transport: str, new_version: int, load: Callable[[], Awaitable[list[dict]]]
    ) -> list[dict]:
        """Load and relabel while no engine step runs; marks the replica broken on failure."""
        try:
            results = raise_rpc_errors(await load())
        except Exception as e:
            self.broken = f"weight update to version {new_version} failed ({e})"
            self.metrics.updates.labels(transport, "error").inc()
            log.exception("weight update failed")
            raise RequestError(500, self.broken) from e
        # Every engine step from here on is stamped with the new version.
        await self.engine.update_weight_version(str(new_version))
        self.version = new_version
        self.broken = None
        self.metrics.policy_version.set(new_version)
        return results

    async def _drain(self) -> bool:
        """Wait for admitted requests; abort those left after the drain timeout (re-run later).
        Public requests get only `public_drain_timeout_s`. Returns whether requests were aborted."""
        public = await self._drain_public()
        try:
            await asyncio.wait_for(self._drained.wait(), self.cfg.update_drain_timeout_s)
            return public
        except asyncio.TimeoutError:
            ids = list(self._engine_ids)
            log.warning(
                "weight update: aborting %d requests still running after %.0fs",
                len(ids),
                self.cfg.update_drain_timeout_s,
            )
            await self._preempt(ids)
        try:
            await asyncio.wait_for(self._drained.wait(), self.cfg.update_drain_timeout_s)
        except asyncio.TimeoutError as e:
            raise RequestError(
                503, "in-flight requests did not stop; weights unchanged, retry"
            ) from e
        return True

    async def _drain_public(self) -> bool:
        """Give public engine requests a short grace, then abort them (they re-run on the new
        weights, or a stream ends with 503): a person's long request must not hold the
        trainer's update. Returns whether any were aborted."""
        deadline = time.monotonic() + self.cfg.public_drain_timeout_s
        while self._public_ids and time.monotonic() < deadline:
            await asyncio.sleep(0.01)  # engine requests finishing; bounded by the grace period
        ids = list(self._public_ids)
        if not ids:
            return False
        log.info("weight update: aborting %d public requests (re-run on the new weights)", len(ids))
        await self._preempt(ids)
        return True


def token_versions(completion: Any, initial_version: int) -> list[VersionSpan]:
    """Our version spans of one finished vLLM completion (oldest first). vLLM labels a span
    "default" until the first update names the weights: the version the replica started with."""
    spans = getattr(completion, "weight_versions", None)
    if spans is None:
        if completion.token_ids:
            raise RuntimeError("engine reported tokens without the weights that produced them")
        return []
    return [
        VersionSpan(
            version=initial_version if s.version == UNLABELLED else int(s.version), start=s.start
        )
        for s in spans
    ]
