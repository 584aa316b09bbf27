"""The one bucketing rule of a weight push: where bucket boundaries fall.

Owns: `weight_buckets`, used by every place that cuts a full set of weights into buckets (the
trainer's ZeRO-3 gathers, `PolicyEngine.iter_named_params_for_sync`; the torch.distributed
sender, `sender_stream.py`; the filesystem sender's safetensors shards, `sender_files.py`), and
the general `iter_buckets` / `plan_buckets` it is built on.
The rule: items go into buckets in order, each bucket's aligned layout (`wire.align_up`) fits
`bucket_bytes`; a layer (`layer_key`) is never split across buckets unless it alone is larger
than `bucket_bytes`; an item larger than `bucket_bytes` gets a bucket of its own.
Why whole layers: vLLM's layerwise reload holds a layer's tensors until the layer is complete,
so a layer split across buckets keeps both alive and the receiver needs a third buffer (see
`receiver_buffers.py`).
Does not know: tensors, transports, vLLM (sizes come from the caller's `nbytes`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from sampler.weights.wire import align_up

_T = TypeVar("_T")
_N = TypeVar("_N", bound=tuple[Any, ...])

_LAYER_RE = re.compile(r"^(.*?\.layers\.\d+)\.")


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
    buckets unless the run alone exceeds `bucket_bytes` (why: this module's docstring). An item
    larger than `bucket_bytes` gets a bucket of its own.
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
    """Index lists of `iter_buckets` over tensor byte sizes (and group keys): for tests and
    planning."""
    keys = list(groups) if groups is not None else None
    group = (lambda p: keys[p[0]]) if keys is not None else None
    pairs = iter_buckets(enumerate(sizes), lambda p: p[1], bucket_bytes, group)
    return [[i for i, _ in bucket] for bucket in pairs]


def weight_buckets(
    items: Iterable[_N], nbytes: Callable[[_N], int], bucket_bytes: int
) -> Iterator[list[_N]]:
    """Buckets of a weight push: `items` are tuples whose first element is the tensor's checkpoint
    name (HF/vLLM naming), kept whole per layer (`layer_key`). Lazy, like `iter_buckets`."""
    return iter_buckets(items, nbytes, bucket_bytes, group=lambda item: layer_key(item[0]))
