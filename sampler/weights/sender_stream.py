"""Trainer side of the wire: broadcast one update's buckets to every live replica group at once.

Owns: `send_buckets` (the tensors cut by the one bucketing rule, `buckets.weight_buckets`; each
bucket laid out by `wire.layout_bucket`, its small tensors packed into a `BufferPool` region,
its large tensors sent from their own storage; two buckets in flight at most; a replica whose
broadcast or update request fails is dropped from the rest of the push, the others go on),
`wait_work`, and `BufferPool`.
Does not know: sessions, rendezvous or HTTP (`sender_dist.py` hands us the groups and each
replica's update request), the receiver. torch is imported inside functions only.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from sampler.weights.buckets import weight_buckets
from sampler.weights.group import broadcast
from sampler.weights.wire import (
    as_bytes,
    bucket_len,
    dtype_name,
    encode_meta,
    layout_bucket,
    packed_len,
)

if TYPE_CHECKING:
    import torch


class BufferPool:
    """The sender's packed regions by slot (bucket index mod 2), kept across updates (fresh big
    buffers cost page faults). The receiver's bounded buffers are `ReceiveBuffers`."""

    def __init__(self, device: str = "cpu") -> None:
        self.device = device
        self._bufs: list[torch.Tensor] = []

    def get(self, index: int, nbytes: int) -> torch.Tensor:
        import torch

        while len(self._bufs) <= index:
            self._bufs.append(torch.empty(0, dtype=torch.uint8, device=self.device))
        if self._bufs[index].numel() < nbytes:
            self._bufs[index] = torch.empty(nbytes, dtype=torch.uint8, device=self.device)
        return self._bufs[index][:nbytes]


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


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


class _Broadcasts:
    """One push's broadcasts: issued asynchronously to every live group at once; bucket k-1 is
    waited for only after bucket k is issued, so at most two buckets' tensors are pinned in
    flight (and the two `BufferPool` slots alternate)."""

    def __init__(
        self,
        groups: dict[str, Any],
        failed: dict[str, str],
        requests: dict[str, Any] | None,
        pool: BufferPool,
        device: str,
    ) -> None:
        self.live = dict(groups)
        self.failed = failed
        self.requests = requests or {}
        self.pool = pool
        self.device = device
        self.stats = {"bytes": 0.0, "buckets": 0.0, "tensors": 0.0, "wait_seconds": 0.0}
        self.pending: list[tuple[list[tuple[str, list]], list[torch.Tensor]]] = []

    def wait_oldest(self) -> None:
        t = time.perf_counter()
        issued, _keepalive = self.pending.pop(0)
        for u, works in issued:
            request = self.requests.get(u)
            try:
                for w in works:
                    wait_work(w, request)
            except Exception as e:  # a dead replica must not stop the others
                self.failed[u] = f"broadcast failed: {e}"
                self.live.pop(u, None)
        self.stats["wait_seconds"] += time.perf_counter() - t

    def send(self, tensors: list[torch.Tensor]) -> None:
        issued = []
        for u, pg in list(self.live.items()):
            try:
                issued.append((u, [broadcast(pg, x) for x in tensors]))
            except Exception as e:
                self.failed[u] = f"broadcast failed: {e}"
                self.live.pop(u, None)
        self.pending.append((issued, tensors))
        while len(self.pending) > 1:
            self.wait_oldest()

    def bucket(self, entries: list[tuple[str, torch.Tensor]]) -> None:
        """Header, meta, the packed small tensors, then each large tensor of one bucket."""
        import torch

        dev = self.device
        metas = layout_bucket([(n, dtype_name(t), tuple(t.shape), _nbytes(t)) for n, t in entries])
        by_name = dict(entries)
        small = packed_len(metas)
        data = []
        if small:  # the small tensors, copied into one region (a broadcast each cost more)
            region = self.pool.get(int(self.stats["buckets"]) % 2, small)
            for m in metas:
                if m.packed:
                    region[m.offset : m.offset + m.nbytes].copy_(as_bytes(by_name[m.name]))
            data.append(region)
        data += [as_bytes(by_name[m.name]) for m in metas if not m.packed]
        meta = torch.frombuffer(bytearray(encode_meta(metas)), dtype=torch.uint8).to(dev)
        used = bucket_len(metas)
        header = torch.tensor([meta.numel(), used], dtype=torch.int64, device=dev)
        self.send([header, meta, *data])
        self.stats["bytes"] += used
        self.stats["buckets"] += 1

    def end(self) -> None:
        """The end marker, then every broadcast still in flight."""
        import torch

        self.send([torch.zeros(2, dtype=torch.int64, device=self.device)])
        while self.pending:
            self.wait_oldest()


def send_buckets(
    named_tensors: Iterable[tuple[str, torch.Tensor]],
    groups: dict[str, Any],
    failed: dict[str, str],
    requests: dict[str, Any] | None,
    *,
    pool: BufferPool,
    device: str,
    bucket_bytes: int,
) -> dict[str, float]:
    """Cut tensors lazily into buckets and broadcast each bucket to every live group.

    `requests`: each replica's admin update request; one that ends before the broadcast does
    (its server died, or it refused) fails that replica at once instead of after the group
    timeout (a killed server's engine process can keep its end of the group open). Failures go
    into `failed` (url -> why); returns the push's send stats.

    Large tensors are sent from their own storage (one broadcast each, no copy here); small
    ones are copied into one packed region per bucket. The receiver lays them out at the
    offsets the bucket's meta names (`wire.layout_bucket`).
    """
    import torch

    out = _Broadcasts(groups, failed, requests, pool, device)
    t_start = time.perf_counter()

    def prepared() -> Iterator[tuple[str, torch.Tensor]]:
        for name, tensor in named_tensors:
            t = tensor.detach()
            dtype_name(t)  # refuse an unsupported dtype before its bucket is sent
            if t.device.type != torch.device(device).type:
                t = t.to(device)
            out.stats["tensors"] += 1
            yield name, t.contiguous()

    # Whole layers per bucket: the receiver then holds two buckets at most.
    for entries in weight_buckets(prepared(), lambda e: _nbytes(e[1]), bucket_bytes):
        out.bucket(entries)
    out.end()
    out.stats["send_seconds"] = time.perf_counter() - t_start
    return out.stats
