"""vLLM worker side of the wire: read one update's buckets off the group, one bucket ahead of the
loader.

Owns: `receive_buckets` (a background thread receives bucket k+1 while vLLM's loader consumes
bucket k; tensors with a target in the model are received straight into it) and the receive
stats a worker reports.
Does not know: vLLM (the loader is whoever iterates), where buffers come from beyond
`ReceiveBuffers`, the sender, HTTP. torch is imported inside functions only.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from sampler.weights.group import broadcast
from sampler.weights.receiver_buffers import ReceiveBuffers
from sampler.weights.wire import (
    TensorMeta,
    as_bytes,
    decode_meta,
    dtype_name,
    packed_len,
    unpack,
)

if TYPE_CHECKING:
    import torch


class _Destinations:
    """Where each tensor of a bucket lands: its target parameter region (a direct placement,
    `cpu_layout.load_and_map`) when one matches in shape and dtype, else the bucket buffer."""

    def __init__(self, targets: dict[str, torch.Tensor], placed: set[str]) -> None:
        self.targets = targets
        self.placed = placed

    def direct(self, m: TensorMeta) -> torch.Tensor | None:
        """The target of a directly placed tensor, else None (it goes through the buffer)."""
        t = self.targets.get(m.name)
        if t is None or tuple(t.shape) != m.shape or dtype_name(t) != m.dtype:
            return None
        return as_bytes(t)


def _receive_bucket(
    pg: Any, meta_len: int, data_len: int, pool: ReceiveBuffers, device: str, dest: _Destinations
) -> tuple[list[TensorMeta], torch.Tensor, int]:
    """The rest of one bucket after its header: (the metas left in `buf`, buf, how many tensors
    the bucket had)."""
    import torch

    meta = torch.empty(meta_len, dtype=torch.uint8, device=device)
    broadcast(pg, meta).wait()
    metas = decode_meta(bytes(meta.cpu().numpy().tobytes()))
    buf = pool.acquire(data_len)
    small = packed_len(metas)
    works = [broadcast(pg, buf[:small])] if small else []
    buffered = []
    for m in metas:
        if m.packed:
            continue
        dst = dest.direct(m)
        if dst is None:
            dst = buf[m.offset : m.offset + m.nbytes]
            buffered.append(m)
        else:
            dest.placed.add(m.name)
        works.append(broadcast(pg, dst))
    for w in works:
        w.wait()
    for m in metas:  # small tensors: one copy each out of the packed region
        if m.packed:
            dst = dest.direct(m)
            if dst is None:
                buffered.append(m)
            else:
                dst.copy_(buf[m.offset : m.offset + m.nbytes])
                dest.placed.add(m.name)
    if device.startswith("cuda"):
        # The waits above order this thread's stream after NCCL's; the loader runs on its own
        # stream in another thread, so the data must have landed first.
        torch.cuda.current_stream(device).synchronize()
    return buffered, buf, len(metas)


def _count(stats: dict[str, float], data_len: int, n_metas: int, n_buffered: int) -> None:
    stats["bytes"] = stats.get("bytes", 0) + data_len
    stats["buckets"] = stats.get("buckets", 0) + 1
    stats["tensors"] = stats.get("tensors", 0) + n_metas
    stats["tensors_placed"] = stats.get("tensors_placed", 0) + n_metas - n_buffered


def receive_buckets(
    pg: Any,
    pool: ReceiveBuffers,
    device: str,
    stats: dict[str, float],
    targets: dict[str, torch.Tensor] | None = None,
    placed: set[str] | None = None,
) -> Iterator[tuple[str, torch.Tensor]]:
    """Receiver side: yield (name, tensor view) bucket by bucket until the end marker.

    A background thread receives bucket k+1 while the caller (vLLM's loader) consumes bucket k,
    so the network and the in-place load overlap; `pool` bounds how many buckets are held at once
    (the thread waits for the loader to release one).
    A tensor with a matching entry in `targets` (a region of a model parameter, see
    `cpu_layout.load_and_map`) is received straight into it, added to `placed` and not yielded.
    """
    import queue
    import threading
    import time

    import torch

    ready: queue.Queue = queue.Queue()
    # Read at most max_buffers - 1 buckets ahead of the loader: one loads while one arrives.
    ahead = threading.Semaphore(max(1, pool.max_buffers - 1))
    dest = _Destinations(targets or {}, placed if placed is not None else set())

    def receive() -> None:
        t0 = time.perf_counter()
        try:
            header = torch.zeros(2, dtype=torch.int64, device=device)
            while True:
                # Bounded: a loader that stopped must not stall the sender (see ReceiveBuffers).
                ahead.acquire(timeout=pool.wait_s)
                broadcast(pg, header).wait()
                meta_len, data_len = (int(x) for x in header.tolist())
                if meta_len == 0:
                    ready.put(None)
                    return
                buffered, buf, n_metas = _receive_bucket(pg, meta_len, data_len, pool, device, dest)
                _count(stats, data_len, n_metas, len(buffered))
                stats["receive_seconds"] = time.perf_counter() - t0
                stats["receive_buffer_peak_bytes"] = float(pool.peak_bytes)
                stats["receive_buffer_extra"] = float(pool.extra_allocations)
                ready.put((buffered, buf))
                buf = None  # hold no view of a handed-over bucket: it must be reusable
        except BaseException as e:  # handed to the consumer, which raises it
            ready.put(e)

    thread = threading.Thread(target=receive, name="weight-receive", daemon=True)
    thread.start()
    while True:
        pool.loader_starved.set()  # until the next bucket is here, the loader can free nothing
        item = ready.get()
        pool.loader_starved.clear()
        ahead.release()
        if item is None:
            break
        if isinstance(item, BaseException):
            raise RuntimeError(f"weight transfer failed: {item}") from item
        metas, buf = item
        yield from unpack(buf, metas)
        item = buf = None  # release the bucket to `pool` as soon as the loader drops its views
    thread.join()
