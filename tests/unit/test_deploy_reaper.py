"""deploy.reaper: a SIGKILLed launcher's detached descendants die with it; unmarked processes live."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

from deploy.reaper import MARK, marked_pids, new_mark

# A "launcher": its watcher first, then a daemon that leaves its session (as Ray's daemons and the
# sampler do) and carries the mark, and one that does not carry it; prints both pids, then waits.
LAUNCHER = textwrap.dedent("""
    import os, subprocess, sys, time
    from deploy.reaper import MARK, Reaper
    mark = sys.argv[1]
    reaper = Reaper(mark, os.environ)
    sleeper = [sys.executable, "-c", "import time; time.sleep(600)"]
    marked = subprocess.Popen(sleeper, env={**os.environ, MARK: mark}, start_new_session=True)
    plain = subprocess.Popen(sleeper, start_new_session=True)
    print(marked.pid, plain.pid, flush=True)
    time.sleep(600)
""")


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A zombie whose parent died is reaped by init; /proc shows its state until then.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_sigkilled_launcher_takes_its_marked_processes_along():
    mark = new_mark()
    launcher = subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, mark], stdout=subprocess.PIPE, text=True
    )
    marked = plain = None
    try:
        marked, plain = map(int, launcher.stdout.readline().split())
        assert marked_pids(mark) == [marked]
        launcher.kill()
        launcher.wait()
        deadline = time.monotonic() + 30
        while not _gone(marked):
            assert time.monotonic() < deadline, "the marked daemon outlived its launcher by 30 s"
            time.sleep(0.1)
        assert not _gone(plain)  # only what the launcher marked
        assert marked_pids(mark) == []
    finally:
        for pid in (marked, plain):
            if pid and not _gone(pid):
                os.kill(pid, signal.SIGKILL)
        if launcher.poll() is None:
            launcher.kill()


def test_the_mark_is_in_the_role_environment_not_the_watcher():
    from deploy.reaper import Reaper

    mark = new_mark()
    reaper = Reaper(mark, {**os.environ, MARK: mark})
    try:
        assert reaper.proc.pid not in marked_pids(mark)
    finally:
        reaper.close()
    assert reaper.proc.returncode == 0
