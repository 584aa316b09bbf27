"""The wire format of a weight update, both directions: what the trainer's sender writes and
the vLLM worker's receiver reads.

Owns: the bucket layout (which tensor sits at which aligned offset, which travel packed), the
bucket meta and its encoding, the supported dtypes, and the views (no copies) between tensors
and the bytes that travel. Pure helpers: no process group, no thread, no vLLM.
Does not know: where bucket boundaries fall (`buckets.py`), how bytes move (`group.py`, sent by
`sender_stream.py`, received by `receiver_stream.py`), HTTP, versions.

One update, all broadcast from rank 0 (the trainer) over the replica's group:
    per bucket:  header int64[2] = [meta_len, data_len]; meta (uint8 JSON, `meta_len` bytes);
                 the packed region (the small tensors, one broadcast), then one broadcast per
                 larger tensor, in meta order, of its raw bytes; the receiver lays them out in
                 one `data_len`-byte buffer at 64-byte aligned offsets (see `layout_bucket`)
    end:         header [0, 0]
Sending large tensors from their own storage costs the trainer no copy (a packed bucket on the
sender cost as much as the transfer itself on CPU).
Streaming bucket by bucket lets the trainer consume a lazy iterator (ZeRO-3 gathers) without
knowing the tensor list up front. torch is imported inside functions only.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

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
