"""Trainer side of a weight update: the one import point of the pushers.

Owns: `make_weight_pusher` (the transport named in the config -> its pusher) and the public
names the trainer uses: `WeightPusher`, `WeightPushError`, `DistWeightPusher` (gloo/nccl,
`sender_dist.py`), `FilesystemWeightPusher` (`sender_files.py`).
Does not know: how the trainer gathers its parameters (it hands each push an iterator), the
vLLM side (`receiver.py`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sampler.weights.sender_base import WeightPusher, WeightPushError
from sampler.weights.sender_dist import DistWeightPusher
from sampler.weights.sender_files import FilesystemWeightPusher

if TYPE_CHECKING:
    from sampler.client import SamplerClient

__all__ = [
    "DistWeightPusher",
    "FilesystemWeightPusher",
    "WeightPushError",
    "WeightPusher",
    "make_weight_pusher",
]


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
