"""The launcher's own logic on one machine: three `python -m deploy.launch` processes with AML-like
variables (node ranks 0-2, MASTER_ADDR=127.0.0.1), 1 sampler + 2 trainer nodes, a real Ray cluster
(three raylets, token auth) and stand-in driver commands (environment scrubbing, roles, exit codes).
Every node shares 127.0.0.1 here, so nothing address-related is tested: that is test_twin_job.py."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from sampler.netaddr import free_port

REPO = Path(__file__).resolve().parents[2]

# The driver: joins the cluster the launcher gives it, checks the three nodes and their role resources,
# runs one task pinned to each trainer node and checks no torch variable leaked into Ray's workers.
DRIVER_OK = r"""
import os, sys, ray
for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "NODE_RANK"):
    assert k not in os.environ, f"driver inherited {k}"
assert os.environ["GRPO_NODE_ROLE"] == "sampler", os.environ["GRPO_NODE_ROLE"]
ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False)
nodes = [n for n in ray.nodes() if n["Alive"]]
res = ray.cluster_resources()
assert len(nodes) == 3, nodes
assert res.get("grpo_sampler") == 1 and res.get("grpo_trainer") == 2, res

@ray.remote(num_cpus=0, resources={"grpo_trainer": 1})
def probe():
    leaked = [k for k in ("RANK", "WORLD_SIZE", "MASTER_PORT", "LOCAL_RANK") if k in os.environ]
    return ray.get_runtime_context().get_node_id(), os.environ.get("GRPO_NODE_ROLE"), leaked

out = ray.get([probe.remote() for _ in range(2)], timeout=120)
assert all(role == "trainer" and not leaked for _, role, leaked in out), out
print("DRIVER-OK", len(nodes), res.get("grpo_trainer"), flush=True)
"""

DRIVER_HANG = r"""
import os, sys, time
open(sys.argv[1] + ".tmp", "w").write(str(os.getpid()))
os.replace(sys.argv[1] + ".tmp", sys.argv[1])
while True:
    time.sleep(1)
"""


class Cluster:
    """Three launchers on this machine; each has its own Ray temp dir and log file."""

    def __init__(self, driver: list[str], launcher_args: list[str] | None = None) -> None:
        # Short paths: Ray's unix sockets live under the temp dir (108-byte limit).
        self.root = Path(tempfile.mkdtemp(prefix="gd", dir="/tmp"))
        token = self.root / "token"
        token.write_text(secrets.token_hex(16))
        token.chmod(0o600)
        master_port, ray_port = free_port(), free_port()
        self.procs: list[subprocess.Popen] = []
        self.logs: list[Path] = []
        for rank in range(3):
            env = {
                **os.environ,
                "NODE_RANK": str(rank),
                "RANK": str(rank),  # what AML's PyTorch distribution also sets; must be scrubbed
                "LOCAL_RANK": "0",
                "WORLD_SIZE": "3",
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(master_port),
                "OMP_NUM_THREADS": "1",
                "PYTHONUNBUFFERED": "1",
            }
            env.pop("RAY_ADDRESS", None)
            cmd = [
                sys.executable, "-m", "deploy.launch",
                "--sampler-nodes", "1", "--trainer-nodes", "2",
                "--ray-port", str(ray_port), "--node-ip", "127.0.0.1",
                "--num-cpus", "1", "--object-store-memory", str(80 * 2**20),
                "--ray-temp-dir", str(self.root / f"r{rank}"), "--dashboard-agent-port", "0",
                "--ray-auth", "token", "--ray-auth-token-file", str(token),
                "--join-timeout", "180", "--heartbeat-timeout", "30", "--driver-grace", "5",
                *(launcher_args or []),
            ] + (["--", *driver] if driver else [])  # fmt: skip
            log = self.root / f"node{rank}.log"
            self.logs.append(log)
            with open(log, "wb") as fh:
                self.procs.append(
                    subprocess.Popen(
                        cmd,
                        cwd=REPO,
                        env=env,
                        stdout=fh,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )

    def wait(self, timeout: float) -> list[int | None]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(p.poll() is None for p in self.procs):
            time.sleep(0.2)
        return [p.poll() for p in self.procs]

    def output(self) -> str:
        return "\n".join(
            f"==== node {i} ====\n{p.read_text(errors='replace')[-6000:]}"
            for i, p in enumerate(self.logs)
        )

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_three_node_launch_runs_driver_and_all_exit_zero():
    cluster = Cluster([sys.executable, "-c", DRIVER_OK])
    try:
        codes = cluster.wait(240)
        out = cluster.output()
        assert codes == [0, 0, 0], out
        assert "DRIVER-OK 3 2.0" in out, out
        assert "role trainer" in out and "role sampler" in out
        assert (
            "scrubbed from role processes: LOCAL_RANK, MASTER_ADDR, MASTER_PORT, NODE_RANK, RANK, WORLD_SIZE"
            in out
        )
    finally:
        cluster.close()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_killing_the_driver_makes_every_node_exit_nonzero():
    pid_file = Path(tempfile.mkdtemp(prefix="gdp", dir="/tmp")) / "driver.pid"
    cluster = Cluster([sys.executable, "-c", DRIVER_HANG, str(pid_file)])
    try:
        deadline = time.monotonic() + 180
        while not pid_file.is_file():
            assert time.monotonic() < deadline, "driver never started:\n" + cluster.output()
            assert all(p.poll() is None for p in cluster.procs), cluster.output()
            time.sleep(0.2)
        os.kill(int(pid_file.read_text()), signal.SIGKILL)
        killed_at = time.monotonic()
        codes = cluster.wait(
            90
        )  # bound: Ray's drain on SIGTERM (<30 s) plus the launchers' own exit
        assert all(c is not None for c in codes), (
            f"still running {time.monotonic() - killed_at:.0f}s after the kill"
        )
        assert codes == [128 + signal.SIGKILL] * 3, cluster.output()
    finally:
        cluster.close()
        shutil.rmtree(pid_file.parent, ignore_errors=True)


# The real pipeline across nodes runs in test_twin_job.py, where every node has its own address.
