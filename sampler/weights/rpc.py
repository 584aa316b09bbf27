"""Calling the vLLM workers' weight methods through `collective_rpc` without losing replies.

Owns: `rpc_method` (a worker method returns its error instead of raising) and
`raise_rpc_errors` (the server raises after reading every worker's reply).
Does not know: what the methods do (`receiver.py`), the engine (`sampler/engine.py` calls).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

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
