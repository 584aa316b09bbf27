"""Trainer side of the filesystem transport: safetensors shards in a folder every replica reads.

Owns: `FilesystemWeightPusher` (writes `shared_dir/v<version>`, one shard per bucket of the one
bucketing rule, `buckets.weight_buckets`; asks every replica to load it; keeps only the newest
version on disk) and the marker that makes cleanup touch only the folders it wrote.
Does not know: how a replica loads the folder (`receiver.WeightSyncExtension.sampler_load_path`),
HTTP beyond `SamplerClient.admin_post`.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from sampler.weights.buckets import weight_buckets
from sampler.weights.sender_base import WeightPusher

if TYPE_CHECKING:
    import torch

    from sampler.client import SamplerClient
    from sampler.weights.sender_base import NamedTensors


# Written first into every version folder the filesystem pusher creates: cleanup deletes only
# folders named v<digits> that hold it, never a user's folder in a shared weight_sync_dir.
PUSHER_MARKER = ".grpo-weight-push"
_VERSION_DIR = re.compile(r"v\d+")


def _is_ours(folder: Path) -> bool:
    return (
        _VERSION_DIR.fullmatch(folder.name) is not None
        and folder.is_dir()
        and (folder / PUSHER_MARKER).is_file()
    )


class FilesystemWeightPusher(WeightPusher):
    """safetensors shards under `shared_dir/v<version>`, then every replica reloads from there."""

    def __init__(
        self, client: SamplerClient, shared_dir: str, bucket_bytes: int, timeout_s: float
    ) -> None:
        self.client = client
        self.root = Path(shared_dir)
        self.bucket_bytes = bucket_bytes
        self.timeout_s = timeout_s
        self.last_failed = {}

    def _write(
        self, named_tensors: Iterable[tuple[str, torch.Tensor]], folder: Path
    ) -> dict[str, float]:
        from safetensors.torch import save_file

        folder.mkdir(parents=True, exist_ok=True)
        # First, so a folder a crash left half-written is still known to be ours.
        (folder / PUSHER_MARKER).write_text("written by sampler.weights; deleted by it\n")

        def on_host() -> Iterator[tuple[str, torch.Tensor]]:
            for name, tensor in named_tensors:
                # clone: tied weights share storage, which safetensors refuses to save twice.
                yield name, tensor.detach().to("cpu").contiguous().clone()

        total = 0
        shards = weight_buckets(on_host(), lambda e: _nbytes(e[1]), self.bucket_bytes)
        for index, shard in enumerate(shards):
            save_file(dict(shard), str(folder / f"model-{index:05d}.safetensors"))
            total += sum(_nbytes(t) for _, t in shard)
        return {"bytes": float(total)}

    async def _push(
        self, named_tensors: NamedTensors, version: int, urls: list[str], reset: bool
    ) -> dict[str, float]:
        t0 = time.perf_counter()
        folder = self.root / f"v{version}"
        self._clear(folder)
        stats = await asyncio.to_thread(self._write, named_tensors, folder)
        stats["write_seconds"] = time.perf_counter() - t0
        results = await asyncio.gather(
            *(
                self.client.admin_post(
                    u,
                    "/admin/weights/path",
                    {"path": str(folder), "version": version, "reset_version": reset},
                    self.timeout_s,
                )
                for u in urls
            ),
            return_exceptions=True,
        )
        failed = {
            u: str(r) for u, r in zip(urls, results, strict=True) if isinstance(r, BaseException)
        }
        for old in self.root.glob("v*"):  # keep only the newest version on disk
            if old != folder and _is_ours(old):
                shutil.rmtree(old, ignore_errors=True)
        stats["seconds"] = time.perf_counter() - t0
        return self._conclude(stats, failed, urls)

    def _clear(self, folder: Path) -> None:
        """Remove an earlier push of this version; refuse to touch a folder we did not write."""
        if not folder.exists():
            return
        if not _is_ours(folder):
            raise RuntimeError(
                f"{folder} exists but was not written by the weight pusher (no {PUSHER_MARKER}): "
                "the pusher will not overwrite it; give pipeline.weight_sync_dir a folder of its "
                "own"
            )
        shutil.rmtree(folder)


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()
