"""A sampler replica's processes live and die together: the HTTP server and vLLM's engine core
(a child process, with its own children under tensor parallelism). A server that dies abruptly
(OOM-killed, SIGKILLed, its Ray actor gone) must not leave an engine core holding the model, its
KV cache and on a GPU its memory, which would make the replica's restart fail for lack of it."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import psutil
import pytest

from sampler.launch import SamplerProcess, start_sampler


def _gone(pids: list[int], timeout_s: float = 60) -> list[int]:
    """The pids of `pids` still running after `timeout_s` (zombies count as gone)."""
    deadline = time.monotonic() + timeout_s
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if psutil.pid_exists(p) and _running(p)]
        time.sleep(0.2)  # polling other processes' exit, bounded by the deadline
    return alive


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_kill_signals_the_whole_group_even_after_its_leader_died(tmp_path):
    """The restart path (SamplerReplica.start -> stop) after the server died on its own: the
    members of its process group (the engine core) are still signalled."""
    pid_file = tmp_path / "child.pid"
    proc = subprocess.Popen(
        ["sh", "-c", f"sleep 300 & echo $! > {pid_file}; wait"], start_new_session=True
    )
    while not pid_file.exists() or not pid_file.read_text().strip():
        time.sleep(0.05)  # the shell writes the child's pid; bounded by the test timeout
    child = int(pid_file.read_text())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert _running(child)  # the leader is gone, its group member is not
    SamplerProcess("http://127.0.0.1:1", proc, tmp_path / "log").kill()
    assert _gone([child], 30) == []


@pytest.mark.slow
def test_the_engine_core_dies_with_its_server(tiny_model_dir, tmp_path):
    sp = start_sampler(tiny_model_dir, log_dir=tmp_path, timeout_s=300)
    try:
        engine = [c.pid for c in psutil.Process(sp.proc.pid).children(recursive=True)]
        assert engine, "the server runs vLLM's engine core in a child process"
        os.kill(sp.proc.pid, signal.SIGKILL)  # the server alone, as the OOM killer would
        sp.proc.wait(timeout=30)
        assert _gone(engine) == [], f"engine core processes {engine} outlived their server"
    finally:
        for pid in engine:
            if _running(pid):
                os.kill(pid, signal.SIGKILL)
        sp.kill()
