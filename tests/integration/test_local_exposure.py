"""A local run exposes nothing to the network: while `python -m trainer` trains on the embedded
default, every listening socket of its process tree (the driver, Ray's GCS, raylet, agents and
workers, the sampler and its vLLM engine, the reward workers) is on loopback.

The one exception torch leaves no choice about: a TCPStore listens on every interface. The run
has exactly two (trainer rank 0's process-group store and the weight-sync store of its one
replica), both in the trainer's process, and their keys live under per-run secrets (see
tests/unit/test_sampler_units.py, a stranger on the weight-sync store).
"""

from __future__ import annotations

import ipaddress
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _listeners(root_pid: int) -> list[tuple[str, int, str]]:
    """(address, port, process name) of every listening TCP socket in the process tree."""
    import psutil

    root = psutil.Process(root_pid)
    out = []
    for proc in [root, *root.children(recursive=True)]:
        try:
            name = " ".join(proc.cmdline())[:80] or proc.name()
            for c in proc.net_connections(kind="inet"):
                if c.status == psutil.CONN_LISTEN:
                    out.append((c.laddr.ip, c.laddr.port, name))
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue  # a process that ended while we looked
    return out


def _loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip)
    mapped = getattr(addr, "ipv4_mapped", None)
    return (mapped or addr).is_loopback


def test_a_local_run_listens_on_loopback_only(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)  # the run must set it up itself
    cmd = [
        sys.executable,
        "-m",
        "trainer",
        "--config",
        str(REPO / "configs" / "local.yaml"),
        "--set",
        f"trainer.output_dir={out}",
        "--set",
        "trainer.max_steps=4",
        "--set",
        "trainer.eval_steps=null",
    ]
    with open(tmp_path / "driver.log", "w") as log:
        proc = subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        metrics = out / "metrics.jsonl"
        deadline = time.monotonic() + 480
        while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 2):
            assert proc.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no step 2 within 480 s"
            time.sleep(0.5)  # polling a file the run writes; bounded by the deadline
        found = _listeners(proc.pid)
        assert proc.wait(timeout=480) == 0, (tmp_path / "driver.log").read_text()[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
    names = {n for _, _, n in found}
    assert any("raylet" in n for n in names) and any("sampler" in n for n in names), names
    exposed = [(ip, port, n) for ip, port, n in found if not _loopback(ip)]
    stores = [e for e in exposed if "TrainerWorker" in e[2]]
    assert len(stores) == len(exposed) <= 2, exposed  # nothing else leaves loopback
