"""Trainer-side weight pushers: send a full set of weights to sampler replicas.

Owns: the torch.distributed pusher (gloo/nccl; one standalone 2-rank group per replica, kept
across updates until an error or a replica restart; lazy bucketing; pipelined sends to all
replicas at once) and the filesystem pusher (safetensors shards in a shared folder).
Does not know: how the trainer gathers its parameters (it hands us an iterator), GRPO, HTTP
details beyond `SamplerClient.admin_post` / its health check.
Import through `sampler.client` (`make_weight_pusher`, `WeightPusher`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import secrets
import shutil
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

if TYPE_CHECKING:
    import torch

    from sampler.client import SamplerClient

log = logging.getLogger(__name__)


class WeightPushError(RuntimeError):
    """A weight push reached no replica."""


class WeightPusher:
    """Sends a full set of weights to replicas, which then serve `version` (`reset`: even if it
    is not newer than what they serve: a new trainer session taking over)."""

    last_failed: dict[str, str]

    async def push(
        self,
        named_tensors: Iterable[tuple[str, torch.Tensor]],
        version: int,
        urls: list[str] | None = None,
        reset: bool = False,
    ) -> dict[str, float]:
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


def wait_work(work: Any, request: asyncio.Future | None) -> None:
    """Wait for one broadcast to a replica; fail at once if that replica's update request
    failed first (its server died or refused: a killed server's engine process can keep its end
    of the group open, and the broadcast would otherwise wait for the group timeout). A request
    that *succeeded* first only means the replica had every byte before our side noticed."""
    while request is not None and not work.is_completed():
        if request.done():
            err = None if request.cancelled() else request.exception()
            if request.cancelled() or err is not None:
                raise RuntimeError(f"its update request failed mid-broadcast: {err!r}")
            break
        time.sleep(0.001)  # polling two completions that share no waitable
    work.wait()


class DistWeightPusher(WeightPusher):
    """torch.distributed broadcast over one standalone 2-rank group per replica."""

    def __init__(
        self,
        client: SamplerClient,
        backend: str,
        bucket_bytes: int,
        timeout_s: float,
        connect_timeout_s: float | None = None,
    ) -> None:
        from sampler.weight_sync import BufferPool

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

    async def push(
        self,
        named_tensors: Iterable[tuple[str, torch.Tensor]],
        version: int,
        urls: list[str] | None = None,
        reset: bool = False,
    ) -> dict[str, float]:
        import torch.distributed as dist

        from sampler.weight_sync import make_group

        urls = [u.rstrip("/") for u in (urls or self.client.urls)]
        t0 = time.perf_counter()
        addrs = {u: _sync_addr(u) for u in urls}
        failed: dict[str, str] = {}
        groups: dict[str, Any] = {}
        # A replica that does not answer /health is failed now, not after a rendezvous timeout;
        # its instance id tells whether our group with it is still valid (restart -> new group).
        healths = await asyncio.gather(
            *(self.client._health(u, accept_needs_weights=True) for u in urls)
        )
        plan: dict[str, tuple[str, Any, bool]] = {}  # url -> (session, store, new group?)
        worlds: dict[str, int] = {}  # url -> group size (trainer + the replica's workers)
        for u, h in zip(urls, healths, strict=True):
            if h is None:
                failed[u] = "not healthy (no answer on /health)"
                self._drop(u)
                continue
            old = self._sessions.get(u)
            if old is not None and old[0] == h.get("instance_id"):
                plan[u] = (old[1], old[2], False)
                groups[u] = old[3]
            else:
                self._drop(u)
                world = 1 + int(h.get("workers", 1))
                store = dist.TCPStore(addrs[u], 0, world, is_master=True, wait_for_workers=False)
                # The session id is the group's secret (see weight_sync.make_group).
                plan[u] = (secrets.token_hex(16), store, True)
                worlds[u] = world
        http = {
            u: asyncio.create_task(
                self.client.admin_post(
                    u,
                    "/admin/weights/gloo",
                    {
                        "master_addr": addrs[u],
                        "master_port": store.port,
                        "backend": self.backend,
                        "version": version,
                        "timeout_s": self.timeout_s,
                        "connect_timeout_s": self.connect_timeout_s,
                        "session": session,
                        "new_group": new,
                        "reset_version": reset,
                    },
                    self.timeout_s * 4,
                )
            )
            for u, (session, store, new) in plan.items()
        }

        async def join(u: str) -> None:
            store = plan[u][1]
            grp = asyncio.ensure_future(
                asyncio.to_thread(
                    make_group,
                    self.backend,
                    addrs[u],
                    0,
                    0,
                    self.timeout_s,
                    store,
                    world_size=worlds[u],
                    secret=plan[u][0],
                )
            )
            done, _ = await asyncio.wait({grp, http[u]}, return_when=asyncio.FIRST_COMPLETED)
            if grp in done and grp.exception() is None:
                groups[u] = grp.result()[1]
                return
            # The replica refused before joining (auth, version conflict...), or the rendezvous
            # timed out; the abandoned rendezvous thread ends at its own timeout.
            err = http[u].exception() if http[u].done() else grp.exception()
            failed[u] = f"could not join its weight-sync group: {type(err).__name__}: {err}"

        await asyncio.gather(*(join(u) for u in plan if plan[u][2]))
        send_stats = await asyncio.to_thread(self._send_all, named_tensors, groups, failed, http)
        replica: dict[str, float] = {}  # slowest replica's value of each timing it reports
        for u, task in http.items():
            try:
                body = await task
                for k, v in {"update_seconds": body["seconds"], **body["stats"]}.items():
                    replica[k] = max(replica.get(k, 0.0), float(v))
            except Exception as e:
                # Timeouts have empty messages: the type is the information.
                failed.setdefault(u, f"{type(e).__name__}: {e}".rstrip(": "))
            if u in failed:  # a group that saw an error is never reused
                self._drop(u)
                if u in groups:  # a new group that failed in its first push
                    abandon(groups[u])
            else:
                session, store, _ = plan[u]
                self._sessions[u] = (
                    healths[urls.index(u)]["instance_id"],
                    session,
                    store,
                    groups[u],
                )
        stats = {"seconds": time.perf_counter() - t0, **send_stats}
        for k in ("update_seconds", "worker_seconds", "rendezvous_seconds"):
            replica.setdefault(k, 0.0)
        stats.update({f"replica_{k}": v for k, v in replica.items()})
        stats["bytes_per_s"] = stats["bytes"] / stats["seconds"] if stats["seconds"] > 0 else 0.0
        return self._conclude(stats, failed, urls)

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
        """Group tensors lazily into buckets and broadcast each bucket to every live group.

        `requests`: each replica's admin update request; one that ends before the broadcast does
        (its server died, or it refused) fails that replica at once instead of after the group
        timeout (a killed server's engine process can keep its end of the group open).

        Large tensors are sent from their own storage (one broadcast each, no copy here); small
        ones are copied into one packed region per bucket. The receiver lays them out at the
        offsets the bucket's meta names (`weight_sync.layout_bucket`).
        """
        import torch

        from sampler.weight_sync import (
            as_bytes,
            broadcast,
            bucket_len,
            dtype_name,
            encode_meta,
            iter_buckets,
            layer_key,
            layout_bucket,
            packed_len,
        )

        def nbytes(t: torch.Tensor) -> int:
            return t.numel() * t.element_size()

        live = dict(groups)
        dev = self.device
        stats = {"bytes": 0.0, "buckets": 0.0, "tensors": 0.0, "wait_seconds": 0.0}
        t_start = time.perf_counter()
        # Broadcasts are issued asynchronously to every replica at once; we wait for bucket k-1
        # only after issuing bucket k, so at most two buckets' tensors are pinned in flight.
        pending: list[tuple[list[tuple[str, list]], list[torch.Tensor]]] = []

        def wait_oldest() -> None:
            t = time.perf_counter()
            issued, _keepalive = pending.pop(0)
            for u, works in issued:
                request = (requests or {}).get(u)
                try:
                    for w in works:
                        wait_work(w, request)
                except Exception as e:  # a dead replica must not stop the others
                    failed[u] = f"broadcast failed: {e}"
                    live.pop(u, None)
            stats["wait_seconds"] += time.perf_counter() - t

        def send(tensors: list[torch.Tensor]) -> None:
            issued = []
            for u, pg in list(live.items()):
                try:
                    issued.append((u, [broadcast(pg, x) for x in tensors]))
                except Exception as e:
                    failed[u] = f"broadcast failed: {e}"
                    live.pop(u, None)
            pending.append((issued, tensors))
            while len(pending) > 1:
                wait_oldest()

        def flush(entries: list[tuple[str, torch.Tensor]]) -> None:
            metas = layout_bucket(
                [(n, dtype_name(t), tuple(t.shape), nbytes(t)) for n, t in entries]
            )
            by_name = dict(entries)
            small = packed_len(metas)
            data = []
            if small:  # the small tensors, copied into one region (a broadcast each cost more)
                region = self.pool.get(int(stats["buckets"]) % 2, small)
                for m in metas:
                    if m.packed:
                        region[m.offset : m.offset + m.nbytes].copy_(as_bytes(by_name[m.name]))
                data.append(region)
            data += [as_bytes(by_name[m.name]) for m in metas if not m.packed]
            meta = torch.frombuffer(bytearray(encode_meta(metas)), dtype=torch.uint8).to(dev)
            used = bucket_len(metas)
            header = torch.tensor([meta.numel(), used], dtype=torch.int64, device=dev)
            send([header, meta, *data])
            stats["bytes"] += used
            stats["buckets"] += 1

        def prepared() -> Iterator[tuple[str, torch.Tensor]]:
            for name, tensor in named_tensors:
                t = tensor.detach()
                dtype_name(t)  # refuse an unsupported dtype before its bucket is sent
                if t.device.type != torch.device(dev).type:
                    t = t.to(dev)
                stats["tensors"] += 1
                yield name, t.contiguous()

        # Whole layers per bucket: the receiver then holds two buckets at most.
        for entries in iter_buckets(
            prepared(), lambda e: nbytes(e[1]), self.bucket_bytes, group=lambda e: layer_key(e[0])
        ):
            flush(entries)
        send([torch.zeros(2, dtype=torch.int64, device=dev)])
        while pending:
            wait_oldest()
        stats["send_seconds"] = time.perf_counter() - t_start
        return stats


# Written first into every version folder the filesystem pusher creates: cleanup deletes only
# folders named v<digits> that hold it, never a user's folder in a shared weight_sync_dir.
PUSHER_MARKER = ".grpo-weight-push"
_VERSION_DIR = re.compile(r"v\d+")


def _is_ours(folder: Path) -> bool:
    return (
        _VERSION_DIR.fullmatch(folder.name) is not None
        and folder.is_dir()
        and (folder / PUSHER_MARKER).is_file()
    )


class FilesystemWeightPusher(WeightPusher):
    """safetensors shards under `shared_dir/v<version>`, then every replica reloads from there."""

    def __init__(
        self, client: SamplerClient, shared_dir: str, bucket_bytes: int, timeout_s: float
    ) -> None:
        self.client = client
        self.root = Path(shared_dir)
        self.bucket_bytes = bucket_bytes
        self.timeout_s = timeout_s
        self.last_failed = {}

    def _write(
        self, named_tensors: Iterable[tuple[str, torch.Tensor]], folder: Path
    ) -> dict[str, float]:
        from safetensors.torch import save_file

        folder.mkdir(parents=True, exist_ok=True)
        # First, so a folder a crash left half-written is still known to be ours.
        (folder / PUSHER_MARKER).write_text("written by sampler.weight_push; deleted by it\n")
        shard: dict[str, Any] = {}
        used, index, total = 0, 0, 0
        for name, tensor in named_tensors:
            # clone: tied weights share storage, which safetensors refuses to save twice.
            shard[name] = tensor.detach().to("cpu").contiguous().clone()
            nb = shard[name].numel() * shard[name].element_size()
            used += nb
            total += nb
            if used >= self.bucket_bytes:
                save_file(shard, str(folder / f"model-{index:05d}.safetensors"))
                shard, used, index = {}, 0, index + 1
        if shard:
            save_file(shard, str(folder / f"model-{index:05d}.safetensors"))
        return {"bytes": float(total)}

    async def push(
        self,
        named_tensors: Iterable[tuple[str, torch.Tensor]],
        version: int,
        urls: list[str] | None = None,
        reset: bool = False,
    ) -> dict[str, float]:
        urls = [u.rstrip("/") for u in (urls or self.client.urls)]
        t0 = time.perf_counter()
        folder = self.root / f"v{version}"
        self._clear(folder)
        stats = await asyncio.to_thread(self._write, named_tensors, folder)
        stats["write_seconds"] = time.perf_counter() - t0
        results = await asyncio.gather(
            *(
                self.client.admin_post(
                    u,
                    "/admin/weights/path",
                    {"path": str(folder), "version": version, "reset_version": reset},
                    self.timeout_s,
                )
                for u in urls
            ),
            return_exceptions=True,
        )
        failed = {
            u: str(r) for u, r in zip(urls, results, strict=True) if isinstance(r, BaseException)
        }
        for old in self.root.glob("v*"):  # keep only the newest version on disk
            if old != folder and _is_ours(old):
                shutil.rmtree(old, ignore_errors=True)
        stats["seconds"] = time.perf_counter() - t0
        return self._conclude(stats, failed, urls)

    def _clear(self, folder: Path) -> None:
        """Remove an earlier push of this version; refuse to touch a folder we did not write."""
        if not folder.exists():
            return
        if not _is_ours(folder):
            raise RuntimeError(
                f"{folder} exists but was not written by the weight pusher (no {PUSHER_MARKER}): "
                "the pusher will not overwrite it; give pipeline.weight_sync_dir a folder of its "
                "own"
            )
        shutil.rmtree(folder)


def make_weight_pusher(
    transport: str,
    client: SamplerClient,
    *,
    bucket_bytes: int,
    timeout_s: float,
    shared_dir: str | None = None,
    connect_timeout_s: float | None = None,
) -> WeightPusher:
    """transport: 'gloo' | 'nccl' | 'filesystem' (the caller resolves 'auto')."""
    if transport == "filesystem":
        if not shared_dir:
            raise ValueError(
                "transport 'filesystem' needs shared_dir= (a folder every replica can read)"
            )
        return FilesystemWeightPusher(client, shared_dir, bucket_bytes, timeout_s)
    return DistWeightPusher(client, transport, bucket_bytes, timeout_s, connect_timeout_s)
