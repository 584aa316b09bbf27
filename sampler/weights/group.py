"""The process group a weight update travels over, both sides of it.

Owns: `make_group` (one standalone gloo/nccl group per replica: rank 0 = the trainer, which hosts
the TCPStore, rank 1 + w = the replica's vLLM worker w; keys under a per-session secret), its
handshake broadcast, and `broadcast` (from rank 0; returns the work handle).
Does not know: what travels (`wire.py`), when a group is kept or dropped (the sender's sessions in
`sender_dist.py`, the worker's in `receiver.py`), HTTP.
torch / torch.distributed are imported inside functions only.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

HANDSHAKE = 0x6772706F  # "grpo": the first broadcast of every weight-sync group


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
