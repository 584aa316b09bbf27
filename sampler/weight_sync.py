"""Weight transport between the trainer's rank 0 and the vLLM workers of one sampler replica.

Owns: the wire format of a bucketed update (pure pack/unpack helpers), the point-to-point
process group used for it (one standalone gloo/nccl group of world size 2 per replica and update:
rank 0 = trainer, rank 1 = the vLLM worker), and the vLLM worker extension that receives buckets
and loads them in place (`reload_weights`, or a direct load in the CPU plain layout, see
`cpu_layout.py`).
Does not know: HTTP, versions, when to pause generation (see `serving.py`), or which replicas exist
(see `client.py`).

Wire format of one update, all broadcast from rank 0 over the group:
    per bucket:  header int64[2] = [meta_len, data_len]; meta (uint8 JSON, `meta_len` bytes);
                 the packed region (the small tensors, one broadcast), then one broadcast per
                 larger tensor, in meta order, of its raw bytes; the receiver lays them out in
                 one `data_len`-byte buffer at 64-byte aligned offsets (see `layout_bucket`)
    end:         header [0, 0]
Sending large tensors from their own storage costs the trainer no copy (a packed bucket on the
sender cost as much as the transfer itself on CPU).
Streaming bucket by bucket lets the trainer consume a lazy iterator (ZeRO-3 gathers) without
knowing the tensor list up front. torch / torch.distributed are imported inside functions only.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    import torch

from sampler.receive_buffers import DEFAULT_MAX_BUFFERS, ReceiveBuffers

log = logging.getLogger(__name__)
_T = TypeVar("_T")

_LAYER_RE = re.compile(r"^(.*?\.layers\.\d+)\.")
HANDSHAKE = 0x6772706F  # "grpo": the first broadcast of every weight-sync group
ALIGN = 64  # byte alignment of every tensor inside a bucket (any dtype can view it)
# Tensors below this size travel packed together (one broadcast per bucket): each broadcast
# costs a round trip, which for a norm weight or a bias is most of its time (measured ~0.3 ms
# a broadcast on this 2-core box).
SMALL_TENSOR_BYTES = 1 << 20

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
    packed: bool = False  # travels inside the bucket's packed region (small tensors)


def layout_bucket(entries: list[tuple[str, str, tuple[int, ...], int]]) -> list[TensorMeta]:
    """Offsets of one bucket's tensors, given (name, dtype, shape, nbytes) in send order.

    Small tensors come first, packed into one region [0, packed_len) that travels as a single
    broadcast; each larger tensor follows at its own aligned offset and travels on its own
    (straight from the sender's storage, possibly straight into the receiver's parameter).
    """
    metas: list[TensorMeta] = []
    used = 0
    for packed in (True, False):
        for name, dtype, shape, nbytes in entries:
            if (nbytes < SMALL_TENSOR_BYTES) == packed:
                off = align_up(used)
                metas.append(TensorMeta(name, dtype, shape, off, nbytes, packed))
                used = off + nbytes
    return metas


def packed_len(metas: list[TensorMeta]) -> int:
    """Bytes of the bucket's packed region (0 when it has no small tensor)."""
    return max((m.offset + m.nbytes for m in metas if m.packed), default=0)


def bucket_len(metas: list[TensorMeta]) -> int:
    return max((m.offset + m.nbytes for m in metas), default=0)


def align_up(n: int, align: int = ALIGN) -> int:
    """Smallest multiple of `align` that is >= n."""
    return (n + align - 1) // align * align


def layer_key(name: str) -> str:
    """The module a checkpoint tensor belongs to for loading: `model.layers.3.mlp.up_proj.weight`
    -> `model.layers.3`; tensors outside the repeated layers are their own group."""
    m = _LAYER_RE.match(name)
    return m.group(1) if m else name


def _runs(items: Iterable[_T], group: Callable[[_T], str] | None) -> Iterator[list[_T]]:
    """Consecutive items that share a group key (each item alone without `group`)."""
    run: list[_T] = []
    key: str | None = None
    for item in items:
        k = group(item) if group else None
        if run and (group is None or k != key):
            yield run
            run = []
        run.append(item)
        key = k
    if run:
        yield run


def iter_buckets(
    items: Iterable[_T],
    nbytes: Callable[[_T], int],
    bucket_bytes: int,
    group: Callable[[_T], str] | None = None,
) -> Iterator[list[_T]]:
    """Group items (in order) lazily into buckets whose aligned layout fits `bucket_bytes`.

    With `group`, a run of items with one key (a layer, `layer_key`) is never split across
    buckets unless the run alone exceeds `bucket_bytes`: vLLM's layerwise reload holds a layer's
    tensors until the layer is complete, so a layer split across buckets keeps both alive and the
    receiver needs a third buffer. An item larger than `bucket_bytes` gets a bucket of its own.
    Lazy (one run of look-ahead), so the pusher can stream a ZeRO-3 gather without knowing the
    tensor list; `plan_buckets` is the same rule on sizes.
    """
    if bucket_bytes <= 0:
        raise ValueError(f"bucket_bytes must be > 0, got {bucket_bytes}")
    cur: list[_T] = []
    used = 0
    for run in _runs(items, group):
        sizes = [nbytes(x) for x in run]
        run_len = sum(align_up(n) for n in sizes[:-1]) + sizes[-1]
        if cur and run_len <= bucket_bytes and align_up(used) + run_len > bucket_bytes:
            yield cur  # the whole run fits in a bucket of its own: start one
            cur, used = [], 0
        for item, size in zip(run, sizes, strict=True):
            if cur and align_up(used) + size > bucket_bytes:
                yield cur
                cur, used = [], 0
            cur.append(item)
            used = align_up(used) + size
    if cur:
        yield cur


def plan_buckets(
    sizes: Iterable[int], bucket_bytes: int, groups: Iterable[str] | None = None
) -> list[list[int]]:
    """Index lists of `iter_buckets` over tensor byte sizes (and group keys), for tests and planning."""
    keys = list(groups) if groups is not None else None
    group = (lambda p: keys[p[0]]) if keys is not None else None
    pairs = iter_buckets(enumerate(sizes), lambda p: p[1], bucket_bytes, group)
    return [[i for i, _ in bucket] for bucket in pairs]


def encode_meta(metas: list[TensorMeta]) -> bytes:
    return json.dumps(
        [[m.name, m.dtype, list(m.shape), m.offset, m.nbytes, int(m.packed)] for m in metas]
    ).encode()


def decode_meta(raw: bytes) -> list[TensorMeta]:
    out = []
    for name, dtype, shape, offset, nbytes, packed in json.loads(raw.decode()):
        if dtype not in _DTYPE_NAMES:
            raise ValueError(f"unsupported dtype {dtype!r} for tensor {name!r}")
        out.append(TensorMeta(name, dtype, tuple(shape), int(offset), int(nbytes), bool(packed)))
    return out


def dtype_name(t: torch.Tensor) -> str:
    name = str(t.dtype).removeprefix("torch.")
    if name not in _DTYPE_NAMES:
        raise ValueError(f"cannot send tensor of dtype {t.dtype}; supported: {_DTYPE_NAMES}")
    return name


def as_bytes(t: torch.Tensor) -> torch.Tensor:
    """A contiguous tensor's storage viewed as flat uint8 (no copy): what travels on the wire."""
    import torch

    return t.reshape(-1).view(torch.uint8)


def unpack(buf: torch.Tensor, metas: list[TensorMeta]) -> Iterator[tuple[str, torch.Tensor]]:
    """Views (no copies) of each tensor inside a received uint8 bucket."""
    import torch

    for m in metas:
        dt = getattr(torch, m.dtype)
        yield m.name, buf[m.offset : m.offset + m.nbytes].view(dt).view(m.shape)


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

    @property
    def total_bytes(self) -> int:
        return sum(b.numel() for b in self._bufs)


def make_group(
    backend: str,
    host: str,
    port: int,
    rank: int,
    timeout_s: float,
    store: Any = None,
    connect_timeout_s: float | None = None,
    world_size: int = 2,
    secret: str | None = None,
) -> tuple[Any, Any]:
    """A standalone process group (not registered with torch.distributed's default world) of
    the trainer (rank 0) and the `world_size - 1` vLLM workers of one replica (rank 1 + worker
    rank: with tensor parallelism every TP worker receives, and vLLM's loader shards).

    Rank 0 (the trainer) hosts the TCPStore; pass its `store` when it already exists. Returns
    (store, group). Finite timeout everywhere: a vanished peer raises instead of hanging;
    `connect_timeout_s` (default `timeout_s`) bounds reaching the store.
    `secret`: the group's keys live under it in the store (a `PrefixStore`). The store's port is
    open to anyone who can reach the node; a peer without the secret (sent to the replica only in
    its admin-authenticated update request) meets none of the group's keys, so it can neither
    take a rank nor receive a byte of the weights.
    """
    import torch.distributed as dist

    timeout = timedelta(seconds=timeout_s)
    if store is None:
        connect = connect_timeout_s or timeout_s
        try:
            store = dist.TCPStore(
                host, port, world_size, is_master=rank == 0, timeout=timedelta(seconds=connect)
            )
        except (RuntimeError, OSError) as e:  # DistNetworkError is a RuntimeError
            raise ConnectionError(
                f"weight-sync rank {rank} could not reach the trainer's store at {host}:{port} "
                f"within {connect:.0f}s (pipeline.connect_timeout_s): {e}"
            ) from None
        store.set_timeout(timeout)
    if secret is not None:
        store = dist.PrefixStore(f"grpo-weight-sync/{secret}/", store)
    if backend not in ("gloo", "nccl"):
        raise ValueError(f"backend must be 'gloo' or 'nccl', got {backend!r}")
    try:
        pg = _process_group(dist, backend, store, rank, world_size, timeout, host)
    except RuntimeError as e:  # DistStoreError: the other ranks never wrote their keys
        raise ConnectionError(
            f"weight-sync rank {rank} of {world_size}: the group did not form within "
            f"{timeout_s:.0f}s (a peer died, or this side has the wrong session): {e}"
        ) from None
    _handshake(pg, backend, rank, world_size, timeout_s)
    return store, pg


def _process_group(
    dist: Any, backend: str, store: Any, rank: int, world_size: int, timeout: Any, host: str
) -> Any:
    from sampler.netaddr import gloo_device, route_source

    if backend == "gloo":
        # Bind gloo to the address the peer reaches us at: its default device follows
        # gethostname(), which resolves to loopback on many machines.
        opts = dist.ProcessGroupGloo._Options()
        opts._timeout = timeout
        opts._devices = [gloo_device(host if rank == 0 else route_source(host))]
        return dist.ProcessGroupGloo(store, rank, world_size, opts)
    opts = dist.ProcessGroupNCCL.Options()
    opts._timeout = timeout
    return dist.ProcessGroupNCCL(store, rank, world_size, opts)


def _handshake(pg: Any, backend: str, rank: int, world_size: int, timeout_s: float) -> None:
    """One broadcast through the new group before it counts as joined. NCCL connects lazily, at
    the first collective: without this, `make_group` returning proved nothing and a replica that
    never connected surfaced only as a hung first bucket. The payload also catches a group-size
    mismatch between trainer and replica (e.g. a TP replica counted as one worker)."""
    import torch

    dev = "cpu" if backend == "gloo" else f"cuda:{torch.cuda.current_device()}"
    want = [HANDSHAKE, world_size]
    t = torch.tensor(want if rank == 0 else [0, 0], dtype=torch.int64, device=dev)
    try:
        broadcast(pg, t).wait(timedelta(seconds=timeout_s))
    except RuntimeError as e:
        raise ConnectionError(
            f"weight-sync rank {rank} of {world_size}: the group's first broadcast failed "
            f"within {timeout_s:.0f}s (pipeline.dist_timeout_s): {e}"
        ) from None
    got = t.tolist()
    if got != want:
        raise ConnectionError(
            f"weight-sync rank {rank}: the trainer's group expects world size {got[1]} "
            f"(handshake {got[0]:#x}), this side counts {world_size}: trainer and replica "
            "disagree on the replica's number of vLLM workers"
        )


def broadcast(pg: Any, tensor: torch.Tensor) -> Any:
    """Start a broadcast from rank 0; returns the work handle (call `.wait()`)."""
    import torch.distributed as dist

    opts = dist.BroadcastOptions()
    opts.rootRank = 0
    opts.rootTensor = 0
    return pg.broadcast([tensor], opts)


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
    targets = targets or {}
    placed = placed if placed is not None else set()

    def destination(m: TensorMeta) -> torch.Tensor | None:
        """The target of a directly placed tensor, else None (it goes through `buf`)."""
        t = targets.get(m.name)
        if t is None or tuple(t.shape) != m.shape or dtype_name(t) != m.dtype:
            return None
        return as_bytes(t)

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
                    dst = destination(m)
                    if dst is None:
                        dst = buf[m.offset : m.offset + m.nbytes]
                        buffered.append(m)
                    else:
                        placed.add(m.name)
                    works.append(broadcast(pg, dst))
                for w in works:
                    w.wait()
                for m in metas:  # small tensors: one copy each out of the packed region
                    if m.packed:
                        dst = destination(m)
                        if dst is None:
                            buffered.append(m)
                        else:
                            dst.copy_(buf[m.offset : m.offset + m.nbytes])
                            placed.add(m.name)
                stats["bytes"] = stats.get("bytes", 0) + data_len
                stats["buckets"] = stats.get("buckets", 0) + 1
                stats["tensors"] = stats.get("tensors", 0) + len(metas)
                stats["tensors_placed"] = (
                    stats.get("tensors_placed", 0) + len(metas) - len(buffered)
                )
                stats["receive_seconds"] = time.perf_counter() - t0
                stats["receive_buffer_peak_bytes"] = float(pool.peak_bytes)
                stats["receive_buffer_extra"] = float(pool.extra_allocations)
                if device.startswith("cuda"):
                    # The waits above order this thread's stream after NCCL's; the loader runs on
                    # its own stream in another thread, so the data must have landed first.
                    torch.cuda.current_stream(device).synchronize()
                ready.put((buffered, buf))
                buf = works = None  # hold no view of a handed-over bucket: it must be reusable
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


RPC_ERROR = "error"  # key of a worker method's result that failed (see `rpc_method`)


def rpc_method(fn: Callable[..., dict[str, float]]) -> Callable[..., dict[str, Any]]:
    """A worker method called through `collective_rpc` returns its error instead of raising.

    vLLM 0.32's multiprocess executor raises at the first worker that failed and leaves the
    other workers' replies queued: with TP > 1 the *next* collective call then reads a stale
    failure. Every worker answering normally keeps the queues in step; the caller raises
    (`raise_rpc_errors`).
    """
    import functools

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> dict[str, Any]:
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            log.exception("%s failed", fn.__name__)
            return {RPC_ERROR: f"{type(e).__name__}: {e}"}

    return wrapper


def raise_rpc_errors(results: list[Any]) -> list[dict[str, float]]:
    """The per-worker results of an `rpc_method`; the first worker's error raised."""
    for i, r in enumerate(results):
        if isinstance(r, dict) and RPC_ERROR in r:
            raise RuntimeError(f"vLLM worker {i}: {r[RPC_ERROR]}")
    return results


class WeightSyncExtension:
    """Mixed into vLLM's worker (`worker_extension_cls`): methods run inside each worker process.

    Only what `collective_rpc` can carry crosses the boundary (plain values, not tensors).
    """

    @rpc_method
    def sampler_receive_weights(
        self,
        backend: str,
        host: str,
        port: int,
        timeout_s: float,
        session: str | None = None,
        new_group: bool = True,
        connect_timeout_s: float | None = None,
        max_buffers: int = DEFAULT_MAX_BUFFERS,
    ) -> dict[str, float]:
        """Receive one update as rank 1 + this worker's rank of the trainer's group; load it.

        With `new_group` (or no session) join a fresh group; else reuse the group of `session`.
        Only the newest session is kept, and a group that saw an error is dropped, so a
        restarted trainer or replica never meets a stale group.
        """
        import time

        import torch

        t0 = time.perf_counter()
        device = "cpu" if backend == "gloo" else f"cuda:{torch.cuda.current_device()}"
        pool = getattr(self, "_sampler_buffer_pool", None)
        if pool is None or pool.device != device or pool.max_buffers != max_buffers:
            pool = ReceiveBuffers(device, max_buffers)
            self._sampler_buffer_pool = pool
        pool.start_update()
        sessions: dict[str, Any] = getattr(self, "_sampler_sessions", {})
        if new_group or session is None or session not in sessions:
            if not new_group:
                raise RuntimeError(f"unknown weight-sync session {session!r}: start a new group")
            # Every worker of the replica (TP x PP) is a receiver, at rank 1 + its worker rank.
            _, pg = make_group(
                backend,
                host,
                port,
                1 + self.rank,
                timeout_s,
                connect_timeout_s=connect_timeout_s,
                world_size=1 + self.parallel_config.world_size,
                secret=session,
            )
            sessions = {session: pg} if session else {}
            self._sampler_sessions = sessions
        else:
            pg = sessions[session]
        stats: dict[str, float] = {"rendezvous_seconds": time.perf_counter() - t0}
        placed: set[str] = set()
        stream = receive_buckets(pg, pool, device, stats, self._sampler_targets(), placed)
        ok = False
        try:
            self._sampler_load(stream, placed)
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
        stats["worker_seconds"] = time.perf_counter() - t0
        return stats

    @rpc_method
    def sampler_load_path(self, path: str) -> dict[str, float]:
        """Reload all weights from a folder of safetensors files (the filesystem transport)."""
        import time

        t0 = time.perf_counter()
        if self._sampler_targets() is None:
            self._sampler_reload(weights_path=path)
        else:
            self._sampler_load(_safetensors_items(path))
        return {"worker_seconds": time.perf_counter() - t0}

    @rpc_method
    def sampler_set_cpu_layout(self, layout: str) -> dict[str, float]:
        """Switch this CPU worker to `layout` (see `sampler.cpu_layout`); call once, at start."""
        import time

        from sampler.cpu_layout import LAYOUTS, use_plain_layout

        if layout not in LAYOUTS:
            raise ValueError(f"cpu_weight_layout must be one of {LAYOUTS}, got {layout!r}")
        t0 = time.perf_counter()
        if layout == "plain" and self._sampler_targets() is None:
            from vllm.config import set_current_vllm_config
            from vllm.model_executor.model_loader import get_model_loader

            cfg = self.vllm_config
            model = self.model_runner.get_model()
            with set_current_vllm_config(cfg):
                weights = get_model_loader(cfg.load_config).get_all_weights(cfg.model_config, model)
                plain = use_plain_layout(model, weights)
            if getattr(cfg.model_config.hf_config, "tie_word_embeddings", False):
                # Trainers send the tied head too; the loader refuses it without the embedding.
                plain.ignored.add("lm_head.weight")
            self._sampler_plain = plain
        plain = self._sampler_plain_map()
        return {
            "seconds": time.perf_counter() - t0,
            "direct_targets": float(len(plain.direct)) if plain else 0.0,
        }

    def _sampler_plain_map(self) -> Any:
        """The `cpu_layout.PlainMap` of the plain layout; None in vLLM's own layout."""
        return getattr(self, "_sampler_plain", None)

    def _sampler_targets(self) -> dict[str, torch.Tensor] | None:
        plain = self._sampler_plain_map()
        return None if plain is None else plain.direct

    def _sampler_load(
        self, weights: Iterator[tuple[str, torch.Tensor]], placed: set[str] | None = None
    ) -> None:
        """Load a full set of named checkpoint tensors into the served model, in place.

        `placed`: names the transport already wrote straight into their parameters.
        """
        plain = self._sampler_plain_map()
        if plain is None:  # GPU, or the CPU packed layout: vLLM's in-place reload
            self._sampler_reload(weights_iterator=weights)
            return
        from vllm.config import set_current_vllm_config

        from sampler.cpu_layout import load_plain

        with set_current_vllm_config(self.vllm_config):
            loaded = load_plain(self.model_runner.get_model(), weights, plain.ignored)
        missing = plain.required() - set(loaded) - (placed or set())
        if missing:
            # The model now mixes old and new weights; the server marks itself broken.
            raise RuntimeError(
                f"weight update left {len(missing)} parameters on their old values "
                f"(e.g. {sorted(missing)[:3]}): send the full state dict"
            )

    def _sampler_reload(self, **kwargs: Any) -> None:
        """vLLM's in-place reload, refusing an update that leaves any weight on its old value."""
        from sampler.reload_check import checked_reload

        checked_reload(self.model_runner.get_model(), lambda: self.reload_weights(**kwargs))
        self._sampler_after_reload()

    def _sampler_after_reload(self) -> int:
        import torch

        if torch.cuda.is_available():
            return 0
        from sampler.cpu_layout import refresh_packed_copies

        return refresh_packed_copies(self.model_runner.get_model())


def _safetensors_items(path: str) -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor of every `*.safetensors` file in a folder, one at a time."""
    from pathlib import Path

    from safetensors import safe_open

    for file in sorted(Path(path).glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 (safe_open is not a dict)
                yield name, f.get_tensor(name)
