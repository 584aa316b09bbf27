"""Trainer side of the torch.distributed transport (gloo/nccl): one push to every replica.

Owns: `DistWeightPusher`: per replica a standalone group (`group.make_group`, rank 0 here) kept
across updates until an error or a replica restart (its instance id on /health changes); the
admin update request that makes the replica join and receive; the rendezvous; the broadcast
itself (`sender_stream.send_buckets`, to all replicas at once); per-replica failure without
stopping the others; and `abandon`: a failed group is never destroyed.
Does not know: how the trainer gathers its parameters (it hands an iterator), GRPO, the
receiver's internals, HTTP beyond `SamplerClient.admin_post` / `SamplerClient.health`.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from sampler.weights.group import make_group
from sampler.weights.sender_base import WeightPusher
from sampler.weights.sender_stream import BufferPool, send_buckets

if TYPE_CHECKING:
    import torch

    from sampler.client import SamplerClient
    from sampler.weights.sender_base import NamedTensors


def _sync_addr(url: str) -> str:
    """The address a replica dials to reach this process's TCPStore: this node's source address
    on the route to it (never `gethostname()`, which may resolve to loopback)."""
    env = os.environ.get("SAMPLER_SYNC_ADDR")
    if env:
        return env
    from sampler.netaddr import route_source

    return route_source(urlparse(url).hostname or "")


# Groups that saw an error, kept referenced until the process exits. Destroying a gloo group
# waits for its pending operations, and a peer that died mid-broadcast leaves ours pending until
# the group timeout (pipeline.dist_timeout_s, 600 s): seen as a trainer thread stuck in
# ~ProcessGroupGloo, from a garbage collection that happened to run in the next push. A few
# dead groups per replica failure are cheap; a stalled push is not.
_ABANDONED: list[Any] = []


def abandon(group: Any) -> None:
    """Keep a failed group (or the tuple holding it) alive: never destroy it mid-run."""
    _ABANDONED.append(group)


@dataclass
class _Round:
    """The state of one push across its replicas."""

    urls: list[str]
    addrs: dict[str, str]  # url -> the address the replica dials to reach our store
    healths: dict[str, dict] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    groups: dict[str, Any] = field(default_factory=dict)  # url -> process group
    plan: dict[str, tuple[str, Any, bool]] = field(default_factory=dict)  # (session, store, new?)
    worlds: dict[str, int] = field(default_factory=dict)  # group size: trainer + the workers
    http: dict[str, asyncio.Task] = field(default_factory=dict)  # each replica's update request


class DistWeightPusher(WeightPusher):
    """torch.distributed broadcast over one standalone group per replica."""

    def __init__(
        self,
        client: SamplerClient,
        backend: str,
        bucket_bytes: int,
        timeout_s: float,
        connect_timeout_s: float | None = None,
    ) -> None:
        if backend not in ("gloo", "nccl"):
            raise ValueError(f"transport must be 'gloo', 'nccl' or 'filesystem', got {backend!r}")
        self.client = client
        self.backend = backend
        # url -> (replica instance id, session id, TCPStore, process group): groups are kept
        # across updates (a rendezvous costs tens of ms) until an error or a replica restart.
        self._sessions: dict[str, tuple[str, str, Any, Any]] = {}
        self.bucket_bytes = bucket_bytes
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s or timeout_s
        device = "cpu"
        if backend == "nccl":
            import torch

            device = f"cuda:{torch.cuda.current_device()}"
        self.device = device
        # Two packed regions of small tensors, alternating: bucket k+1 is packed while bucket
        # k is still in flight.
        self.pool = BufferPool(device)
        self.last_failed = {}

    async def _push(
        self, named_tensors: NamedTensors, version: int, urls: list[str], reset: bool
    ) -> dict[str, float]:
        t0 = time.perf_counter()
        r = _Round(urls, {u: _sync_addr(u) for u in urls})
        # A replica that does not answer /health is failed now, not after a rendezvous timeout;
        # its instance id tells whether our group with it is still valid (restart -> new group).
        healths = await asyncio.gather(
            *(self.client.health(u, accept_needs_weights=True) for u in urls)
        )
        self._plan(r, healths)
        r.http = {u: asyncio.create_task(self._request(r, u, version, reset)) for u in r.plan}
        await asyncio.gather(*(self._join(r, u) for u in r.plan if r.plan[u][2]))
        send_stats = await asyncio.to_thread(
            self._send_all, named_tensors, r.groups, r.failed, r.http
        )
        replica = await self._settle(r)
        stats = {"seconds": time.perf_counter() - t0, **send_stats}
        for k in ("update_seconds", "worker_seconds", "rendezvous_seconds"):
            replica.setdefault(k, 0.0)
        stats.update({f"replica_{k}": v for k, v in replica.items()})
        stats["bytes_per_s"] = stats["bytes"] / stats["seconds"] if stats["seconds"] > 0 else 0.0
        return self._conclude(stats, r.failed, urls)

    def _plan(self, r: _Round, healths: list[dict | None]) -> None:
        """Per healthy replica: its kept group, or a new store and session for a new one."""
        import torch.distributed as dist

        for u, h in zip(r.urls, healths, strict=True):
            if h is None:
                r.failed[u] = "not healthy (no answer on /health)"
                self._drop(u)
                continue
            r.healths[u] = h
            old = self._sessions.get(u)
            if old is not None and old[0] == h.get("instance_id"):
                r.plan[u] = (old[1], old[2], False)
                r.groups[u] = old[3]
            else:
                self._drop(u)
                world = 1 + int(h.get("workers", 1))
                store = dist.TCPStore(r.addrs[u], 0, world, is_master=True, wait_for_workers=False)
                # The session id is the group's secret (see group.make_group).
                r.plan[u] = (secrets.token_hex(16), store, True)
                r.worlds[u] = world

    async def _request(self, r: _Round, u: str, version: int, reset: bool) -> dict:
        """The replica's admin update request: join (or reuse) the group, receive, load."""
        session, store, new = r.plan[u]
        body = {
            "master_addr": r.addrs[u],
            "master_port": store.port,
            "backend": self.backend,
            "version": version,
            "timeout_s": self.timeout_s,
            "connect_timeout_s": self.connect_timeout_s,
            "session": session,
            "new_group": new,
            "reset_version": reset,
        }
        return await self.client.admin_post(u, "/admin/weights/gloo", body, self.timeout_s * 4)

    async def _join(self, r: _Round, u: str) -> None:
        """Rank 0 of a new group with replica `u`, unless its update request fails first."""
        session, store, _ = r.plan[u]
        grp = asyncio.ensure_future(
            asyncio.to_thread(
                make_group,
                self.backend,
                r.addrs[u],
                0,
                0,
                self.timeout_s,
                store,
                world_size=r.worlds[u],
                secret=session,
            )
        )
        http = r.http[u]
        done, _ = await asyncio.wait({grp, http}, return_when=asyncio.FIRST_COMPLETED)
        if grp in done and grp.exception() is None:
            r.groups[u] = grp.result()[1]
            return
        # The replica refused before joining (auth, version conflict...), or the rendezvous
        # timed out; the abandoned rendezvous thread ends at its own timeout.
        err = http.exception() if http.done() else grp.exception()
        r.failed[u] = f"could not join its weight-sync group: {type(err).__name__}: {err}"

    async def _settle(self, r: _Round) -> dict[str, float]:
        """Each replica's answer: keep its group on success, drop it on any error; returns the
        slowest replica's value of each timing the replicas report."""
        replica: dict[str, float] = {}
        for u, task in r.http.items():
            try:
                body = await task
                for k, v in {"update_seconds": body["seconds"], **body["stats"]}.items():
                    replica[k] = max(replica.get(k, 0.0), float(v))
            except Exception as e:
                # Timeouts have empty messages: the type is the information.
                r.failed.setdefault(u, f"{type(e).__name__}: {e}".rstrip(": "))
            if u in r.failed:  # a group that saw an error is never reused
                self._drop(u)
                if u in r.groups:  # a new group that failed in its first push
                    abandon(r.groups[u])
            else:
                session, store, _ = r.plan[u]
                self._sessions[u] = (r.healths[u]["instance_id"], session, store, r.groups[u])
        return replica

    def _drop(self, url: str) -> None:
        """Forget the kept group of `url` without destroying it (see `abandon`)."""
        entry = self._sessions.pop(url, None)
        if entry is not None:
            abandon(entry)

    def _send_all(
        self,
        named_tensors: Iterable[tuple[str, torch.Tensor]],
        groups: dict[str, Any],
        failed: dict[str, str],
        requests: dict[str, Any] | None = None,
    ) -> dict[str, float]:
        """Broadcast every tensor to every live group (`sender_stream.send_buckets`)."""
        return send_buckets(
            named_tensors,
            groups,
            failed,
            requests,
            pool=self.pool,
            device=self.device,
            bucket_bytes=self.bucket_bytes,
        )
