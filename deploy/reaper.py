"""Takes a launcher's whole process tree down with it, also when the launcher is SIGKILLed.

Owns: marking every process a launcher starts (an environment variable, `GRPO_LAUNCH_ID`, that
children inherit: Ray's daemons and workers, the driver, sampler servers and their vLLM engines,
DeepSpeed's compiler runs) and killing every live process that carries the launcher's mark.
Why a mark and not the process group: Ray's daemons and the sampler start sessions of their own,
so they leave the launcher's group, and once the launcher is gone they are re-parented away from
its tree. Why a separate watcher process: a SIGKILLed launcher runs no cleanup; the watcher
(`python -m deploy.reaper ID`, started by the launcher with a pipe on its stdin) sees the pipe
close when the launcher dies for any reason, and sweeps.
Does not know: what the processes are, Ray, AML. Linux only (/proc).
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Mapping

log = logging.getLogger(__name__)

MARK = "GRPO_LAUNCH_ID"


def new_mark() -> str:
    return secrets.token_hex(8)


def marked_pids(mark: str) -> list[int]:
    """Live processes whose environment carries `MARK=mark` (this process excluded)."""
    needle = f"{MARK}={mark}".encode()
    me = os.getpid()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                env = f.read().split(b"\0")
        except OSError:  # gone, or not ours to read
            continue
        if needle in env:
            found.append(int(entry))
    return found


def sweep(mark: str, grace: float = 5.0) -> int:
    """SIGTERM every marked process, SIGKILL what is left after `grace` s; returns how many."""
    pids = marked_pids(mark)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    left = pids
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = [p for p in marked_pids(mark) if p in set(pids)]
    for pid in marked_pids(mark):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    return len(pids)


class Reaper:
    """The watcher of one launcher: started first, told nothing, sweeps when the launcher ends."""

    def __init__(self, mark: str, env: Mapping[str, str]) -> None:
        clean = {k: v for k, v in env.items() if k != MARK}  # the watcher must not sweep itself
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "deploy.reaper", mark],
            stdin=subprocess.PIPE,
            env=clean,
            start_new_session=True,  # a Ctrl-C to the launcher's group must not stop the watcher
        )

    def close(self) -> None:
        """The launcher is done: let the watcher do its final sweep and wait for it."""
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=30)


def main(argv: list[str]) -> int:
    logging.basicConfig(level="INFO", format="%(asctime)s reaper %(levelname)s %(message)s")
    mark = argv[0]
    with contextlib.suppress(KeyboardInterrupt):
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        sys.stdin.buffer.read()  # returns when the launcher closes the pipe or dies
    n = sweep(mark)
    if n:
        log.info("stopped %d process(es) the launcher left behind", n)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
