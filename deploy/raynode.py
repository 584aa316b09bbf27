"""One node's Ray runtime, owned by this node's launcher: `ray start --block` as a child process.

Owns: the `ray start` command line for a head or worker node, starting it in its own process group,
waiting for it to be up, and stopping exactly the processes it started.
Why `--block` instead of `ray start` + `ray stop`: `ray stop` kills every Ray process on the machine
(other users' clusters, or the other simulated "nodes" of the local multi-node test); a blocking
`ray start` shuts down only its own processes on SIGTERM, and its exit tells us the node died.
Does not know: roles, AML, the driver.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path

log = logging.getLogger(__name__)

_READY_MARKER = "Ray runtime started"


def ray_executable() -> str:
    """The `ray` CLI of this interpreter's environment (falls back to PATH)."""
    beside = Path(sys.executable).parent / "ray"
    if beside.is_file():
        return str(beside)
    found = shutil.which("ray")
    if not found:
        raise FileNotFoundError(
            "the `ray` command is not installed: pip install 'ray[default]==2.60.*'"
        )
    return found


def ray_start_command(
    *,
    head: bool,
    port: int,
    head_address: str | None = None,
    node_ip: str | None = None,
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    resources: Mapping[str, float] | None = None,
    temp_dir: str | None = None,
    object_store_memory: int | None = None,
    dashboard_agent_listen_port: int | None = None,
    ray_bin: str = "ray",
) -> list[str]:
    """The argv of `ray start --block` for a head (`port`) or a worker (`head_address`)."""
    cmd = [ray_bin, "start", "--block", "--disable-usage-stats"]
    if head:
        cmd += ["--head", "--port", str(port), "--include-dashboard", "false"]
    else:
        if not head_address:
            raise ValueError("a worker node needs head_address (host:port of the Ray head)")
        cmd += ["--address", head_address]
    if node_ip:
        cmd += ["--node-ip-address", node_ip]
    if num_cpus is not None:
        cmd += ["--num-cpus", str(num_cpus)]
    if num_gpus is not None:
        cmd += ["--num-gpus", str(num_gpus)]
    if resources:
        cmd += ["--resources", json.dumps(dict(resources), sort_keys=True)]
    if temp_dir:
        cmd += ["--temp-dir", temp_dir]
    if object_store_memory is not None:
        cmd += ["--object-store-memory", str(object_store_memory)]
    if dashboard_agent_listen_port is not None:
        # Ray's default (52365) is fixed, so several nodes on one machine need distinct ports (0 = any).
        cmd += ["--dashboard-agent-listen-port", str(dashboard_agent_listen_port)]
    return cmd


class RayNode:
    """A running `ray start --block`; its output is echoed with a prefix and kept for error messages."""

    def __init__(self, cmd: Sequence[str], env: Mapping[str, str], label: str) -> None:
        self.cmd = list(cmd)
        self.label = label
        self._ready = threading.Event()
        self._tail: deque[str] = deque(maxlen=40)
        log.info("%s: %s", label, " ".join(self.cmd))
        self.proc = subprocess.Popen(
            self.cmd,
            env=dict(env),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            start_new_session=True,  # its own process group: we can kill all it started, nothing else
        )
        self._reader = threading.Thread(target=self._pump, name=f"{label}-out", daemon=True)
        self._reader.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            self._tail.append(line)
            print(f"[{self.label}] {line}", flush=True)
            if _READY_MARKER in line:
                self._ready.set()

    def tail(self) -> str:
        return "\n".join(self._tail)

    def wait_ready(self, timeout: float) -> None:
        """Return once Ray reports it started; raise RuntimeError (with its last output) otherwise."""
        deadline = time.monotonic() + timeout
        while not self._ready.wait(0.2):
            if self.proc.poll() is not None:
                self._reader.join(timeout=2)
                raise RuntimeError(
                    f"`ray start` exited with {self.proc.returncode}:\n{self.tail()}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(f"`ray start` not up after {timeout:.0f}s:\n{self.tail()}")

    def dead(self) -> str | None:
        """None while running, else why it is gone."""
        rc = self.proc.poll()
        return (
            None
            if rc is None
            else f"Ray on this node exited unexpectedly (rc={rc}); last output:\n{self.tail()}"
        )

    def stop(self, timeout: float = 45.0) -> None:
        """SIGTERM (Ray drains and stops its own processes), then SIGKILL the group after `timeout`."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                log.warning(
                    "%s: did not stop within %.0fs; killing its process group", self.label, timeout
                )
        # Stragglers (workers that ignored SIGTERM) share the group; the group id is the child's pid.
        with contextlib.suppress(ProcessLookupError, PermissionError):  # the group is already gone
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self._reader.join(timeout=2)
