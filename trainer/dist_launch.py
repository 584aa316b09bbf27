"""A small spawn launcher: run a function on N local processes with torch.distributed initialised.

Owns: starting `world_size` spawned processes with RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR /
MASTER_PORT set and a default process group (gloo on CPU, nccl when every rank has a GPU), returning
each rank's result, and failing fast (with the failing rank's traceback) if any rank dies.
Does not know: what the function does (DeepSpeed, GRPO). The pipeline driver may place trainer
processes with Ray instead; this launcher serves tests, benchmarks and single-machine runs.
"""

from __future__ import annotations

import os
import pickle
import time
import traceback
from collections.abc import Callable
from typing import Any

from sampler.netaddr import free_port


def _worker(
    rank: int,
    world_size: int,
    port: int,
    backend: str,
    timeout_s: float,
    env: dict[str, str],
    fn: Callable[..., Any],
    args: tuple,
    queue: Any,
) -> None:
    os.environ.update(env)
    os.environ.update(
        {
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(world_size),
            "LOCAL_WORLD_SIZE": str(world_size),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }
    )
    # Each rank gets its own cores' worth of threads; oversubscription makes gloo crawl.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import datetime

    import torch
    import torch.distributed as dist

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    try:
        dist.init_process_group(
            backend=backend,
            rank=rank,
            world_size=world_size,
            timeout=datetime.timedelta(seconds=timeout_s),
        )
        result = fn(*args)
        queue.put((rank, True, pickle.dumps(result)))
    except BaseException:  # report every failure to the parent, including SystemExit
        queue.put((rank, False, traceback.format_exc()))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()  # ZeRO-3 can abort at exit without this


def run_distributed(
    fn: Callable[..., Any],
    world_size: int,
    *args: Any,
    backend: str | None = None,
    timeout_s: float = 600.0,
    env: dict[str, str] | None = None,
) -> list[Any]:
    """Run `fn(*args)` on `world_size` spawned ranks; return the results ordered by rank.

    `fn` must be importable (module level) and its result picklable. `backend`: default gloo, or
    nccl when CUDA has at least `world_size` devices. `env` is applied in every child before import.
    Raises RuntimeError naming the rank and carrying its traceback if any rank fails or exits, and
    TimeoutError if the ranks have not all finished within `timeout_s`.
    """
    import multiprocessing as mp

    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    if backend is None:
        import torch

        backend = (
            "nccl"
            if torch.cuda.is_available() and torch.cuda.device_count() >= world_size
            else "gloo"
        )
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = free_port()
    procs = [
        ctx.Process(
            target=_worker,
            args=(r, world_size, port, backend, timeout_s, dict(env or {}), fn, args, queue),
            daemon=False,
        )
        for r in range(world_size)
    ]
    for p in procs:
        p.start()
    results: dict[int, Any] = {}
    deadline = time.monotonic() + timeout_s
    try:
        while len(results) < world_size:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"ranks {sorted(set(range(world_size)) - set(results))} did not finish in {timeout_s}s"
                )
            try:
                rank, ok, payload = queue.get(timeout=0.5)
            except Exception:  # queue.Empty: check for ranks that died without reporting
                dead = [
                    r for r, p in enumerate(procs) if p.exitcode is not None and r not in results
                ]
                if dead:
                    codes = {r: procs[r].exitcode for r in dead}
                    raise RuntimeError(
                        f"rank(s) {dead} exited without a result (exit codes {codes})"
                    ) from None
                continue
            if not ok:
                raise RuntimeError(f"rank {rank} failed:\n{payload}")
            results[rank] = pickle.loads(payload)
        for p in procs:
            p.join(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
                p.join(5)
    return [results[r] for r in range(world_size)]
