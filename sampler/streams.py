"""A stream's mailbox between the engine and the HTTP writer.

Owns: `LatestOutputs` (bounded by the number of prompts: only the newest cumulative output per
prompt is kept) and `aiter_queue`. Does not know: vLLM, HTTP, the admission gate.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

_NOTHING = object()


class LatestOutputs:
    """A stream's mailbox between the engine and the HTTP writer, bounded by the number of
    prompts: vLLM's outputs are cumulative (each one the whole text so far), so only the newest
    per prompt is kept. A reader slower than the engine gets fewer, larger deltas instead of a
    queue of snapshots that grows with the square of the completion length.
    Same calls as the asyncio.Queue it replaces: `put_nowait((index, output))`, then
    `put_nowait(None)` (done) or `put_nowait(exception)`; `await get()`."""

    def __init__(self) -> None:
        self._latest: dict[int, tuple[int, Any]] = {}
        self._end: Any = _NOTHING
        self._ready = asyncio.Event()

    def put_nowait(self, item: tuple[int, Any] | BaseException | None) -> None:
        if isinstance(item, tuple):
            self._latest[item[0]] = item
        else:
            self._end = item
        self._ready.set()

    def qsize(self) -> int:
        return len(self._latest) + (self._end is not _NOTHING)

    async def get(self) -> tuple[int, Any] | BaseException | None:
        while True:
            if self._latest:
                return self._latest.pop(next(iter(self._latest)))
            if self._end is not _NOTHING:
                return self._end
            self._ready.clear()
            await self._ready.wait()


async def aiter_queue(queue: LatestOutputs) -> AsyncIterator[tuple[int, Any]]:
    """Items of a producer queue until its None sentinel; re-raises a queued exception."""
    while True:
        item = await queue.get()
        if item is None:
            return
        if isinstance(item, BaseException):
            raise item
        yield item
