"""Test-only sync points: `hold(name)` stops the driver at a named point while a test acts.

Owns: the one environment variable that turns a hold on (HOLD_ENV) and its file protocol.
Does not know: what happens at the point (the caller names it). Unset (every real run), `hold`
returns at once.

`GRPO_TEST_HOLD=NAME:DIR`: at `hold(NAME)` the process writes `DIR/NAME.held` and blocks,
synchronously, as the slow step it stands in for would (the final model's MLflow logging runs in
the event loop's thread), until `DIR/NAME.release` exists. A test can then send a signal
exactly while the step is in progress, not in a race with it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

HOLD_ENV = "GRPO_TEST_HOLD"
_MAX_HOLD_S = 600  # a test that never releases must not leave the run waiting forever


def hold(name: str) -> None:
    spec = os.environ.get(HOLD_ENV, "")
    want, _, folder = spec.partition(":")
    if want != name or not folder:
        return
    held, release = Path(folder) / f"{name}.held", Path(folder) / f"{name}.release"
    held.write_text(str(os.getpid()))
    deadline = time.monotonic() + _MAX_HOLD_S
    while not release.exists() and time.monotonic() < deadline:
        time.sleep(0.05)  # polling for the test's file; the hold is the point
