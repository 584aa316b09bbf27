"""Bounded receive memory for weight updates: how many bucket buffers a vLLM worker holds.

Owns: handing the receive thread a buffer for the next bucket; reusing one of its `max_buffers`
kept buffers once nothing (vLLM's loader) still holds a view into it; a short-lived extra buffer
when the loader still holds them all (it frees it by dropping its views); the peak bytes held.
The receive thread reads at most `max_buffers - 1` buckets ahead of the loader (see
`receiver_stream.receive_buckets`), so with buckets no smaller than a layer the receiver holds
`max_buffers` buckets at most. Why a bound: one buffer per bucket is the whole model (~15 GB for
7B bf16) beside `gpu_memory_utilization: 0.9` (~8 GB free on an 80 GB H100). Why no hard wait:
vLLM's layerwise reload keeps a layer's tensors until the layer is complete, so a layer larger
than a bucket needs more buffers than the bound, and waiting for them would deadlock.
How "still held" is known: a view shares its base's storage, so the storage's use count is above
that of a buffer nobody else references. On CUDA the loader's copies out of a buffer may still be
queued when its views are dropped, so a buffer is reused only after a device sync. Kept buffers
survive updates: on CPU a fresh 400 MB buffer costs 0.5-1 s of page faults.
Does not know: the wire format, vLLM, HTTP.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

DEFAULT_MAX_BUFFERS = 2
# Longest the receive thread waits for the loader before it reads on into an extra buffer: a
# loader that stopped (its engine is shutting down) must not stall the trainer's broadcast, which
# would hold every replica's push up to the group timeout.
DEFAULT_WAIT_S = 5.0


def _use_count(t: torch.Tensor) -> int:
    import torch

    return int(torch._C._storage_Use_Count(t.untyped_storage()._cdata))


class ReceiveBuffers:
    """`max_buffers` kept receive buffers, reused once released; extras only while all are held."""

    def __init__(
        self, device: str, max_buffers: int = DEFAULT_MAX_BUFFERS, wait_s: float = DEFAULT_WAIT_S
    ) -> None:
        if max_buffers < 1:
            raise ValueError(f"max_buffers must be >= 1, got {max_buffers}")
        self.device = device
        self.max_buffers = max_buffers
        self.wait_s = wait_s
        self._kept: list[tuple[torch.Tensor, int]] = []  # (buffer, its use count when idle)
        self._extra: list[tuple[torch.Tensor, int]] = []
        self.peak_bytes = 0
        self.extra_allocations = 0
        # Set by the consumer while it waits for the bucket being received: the loader cannot
        # release anything before it gets that bucket, so waiting for a release would deadlock.
        self.loader_starved = threading.Event()

    def start_update(self) -> None:
        """Per-update stats start here (kept buffers are still held: they count)."""
        self._extra = [e for e in self._extra if self._held(e)]
        self.peak_bytes = self.total_bytes
        self.extra_allocations = 0

    @staticmethod
    def _held(entry: tuple[torch.Tensor, int]) -> bool:
        return _use_count(entry[0]) > entry[1]

    @property
    def total_bytes(self) -> int:
        return sum(b.numel() for b, _ in self._kept + self._extra)

    def _new(self, nbytes: int) -> tuple[torch.Tensor, int]:
        import torch

        buf = torch.empty(nbytes, dtype=torch.uint8, device=self.device)
        return buf, _use_count(buf)

    def acquire(self, nbytes: int) -> torch.Tensor:
        """A `nbytes` view of a buffer that no one else holds; waits for the loader to release
        a kept one while it still has work (at most `wait_s`), an extra buffer once it waits for
        this bucket or the wait is over."""
        deadline = time.monotonic() + self.wait_s
        while True:
            late = time.monotonic() > deadline
            buf = self._try_acquire(nbytes, allow_extra=late or self.loader_starved.is_set())
            if buf is not None:
                return buf
            time.sleep(0.0005)  # the loader (another thread) drops its views as layers complete

    def _try_acquire(self, nbytes: int, allow_extra: bool) -> torch.Tensor | None:
        self._extra = [e for e in self._extra if self._held(e)]  # released extras are freed
        free = [i for i, e in enumerate(self._kept) if not self._held(e)]
        fits = [i for i in free if self._kept[i][0].numel() >= nbytes]
        if fits:
            self._sync()
            buf = self._kept[fits[0]][0]
        elif len(self._kept) < self.max_buffers:
            self._kept.append(self._new(nbytes))
            buf = self._kept[-1][0]
        elif free:  # released but too small: a bigger one takes its place
            self._sync()
            self._kept[free[0]] = self._new(nbytes)
            buf = self._kept[free[0]][0]
        elif allow_extra:  # the loader holds every kept buffer and needs this bucket to go on
            self._extra.append(self._new(nbytes))
            self.extra_allocations += 1
            buf = self._extra[-1][0]
        else:
            return None
        self.peak_bytes = max(self.peak_bytes, self.total_bytes)
        return buf[:nbytes]

    def _sync(self) -> None:
        """Reusing a buffer on CUDA: the loader's queued copies out of it must have run."""
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.synchronize(self.device)
