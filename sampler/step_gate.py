"""Test-only: an engine that takes its steps one at a time, when a test lets it.

Owns: the environment variable that turns the gate on (STEP_GATE_ENV) and the file protocol
between the engine's side (`step_gate_processor.StepGate`, a vLLM logits processor that changes
no logits and only waits) and the test's (`StepGateControl`).
Does not know: what the test is waiting for. Unset (every real run), the engine is built
without it.

Why: tests of weight updates during generation must place each update between known engine
steps (a request straddles it, and each version makes at least one token). Ordering by wall time
is a race a loaded machine loses: on two busy cores a tiny model finishes a 600-token request
before the client's next HTTP call arrives.

`GRPO_TEST_STEP_GATE=DIR`: every sampling step waits, inside the engine, until the number of
steps taken is below the number in `DIR/allowed` (no file: no limit), then counts itself in
`DIR/done`. Only tensor-parallel rank 0 waits and counts; the other ranks wait for it in the
step's collectives. A paused engine takes no steps, so a test must keep allowing steps while an
update is pending: vLLM handles a pause between steps, and a step that is waiting here holds it.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import TypeVar

STEP_GATE_ENV = "GRPO_TEST_STEP_GATE"
QUALNAME = "sampler.step_gate_processor:StepGate"  # imports vLLM: loaded by vLLM only
_POLL_S = 0.002
MAX_WAIT_S = 300  # neither side waits for ever on a test that went wrong
T = TypeVar("T")


def enabled() -> bool:
    return bool(os.environ.get(STEP_GATE_ENV))


def read_int(path: Path) -> int | None:
    try:
        return int(path.read_text())
    except (FileNotFoundError, ValueError):  # absent, or being replaced
        return None


def write_int(path: Path, value: int) -> None:
    """Atomically: the reader never sees a half-written number."""
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(str(value))
    tmp.replace(path)


class StepGateControl:
    """The test's side: closes the gate, lets steps through one at a time, opens it again."""

    def __init__(self, folder: str | Path) -> None:
        self.dir = Path(folder)

    def done(self) -> int:
        return read_int(self.dir / "done") or 0

    def close(self) -> None:
        """No step starts after the ones already taken (one in progress may still end)."""
        write_int(self.dir / "allowed", self.done())

    def open(self) -> None:
        (self.dir / "allowed").unlink(missing_ok=True)

    async def step(self, until: asyncio.Future | None = None) -> None:
        """Let one more step run; return once it ran (or once `until` is done)."""
        target = self.done() + 1
        write_int(self.dir / "allowed", target)
        deadline = time.monotonic() + MAX_WAIT_S
        while self.done() < target and not (until is not None and until.done()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the engine took no step in {MAX_WAIT_S}s (has it work?)")
            await asyncio.sleep(_POLL_S)  # polls the engine's step count

    async def drive(self, awaitable: Awaitable[T]) -> T:
        """Await `awaitable` while letting the engine step, one step at a time, until it is done
        (an update waits for the step in progress to end before it can pause the engine)."""
        task = asyncio.ensure_future(awaitable)
        while not task.done():
            await self.step(until=task)
        return task.result()
