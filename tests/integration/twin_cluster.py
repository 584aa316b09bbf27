"""A CPU twin of the Azure ML job: simulated nodes that each have their own IP and private loopback.

Owns: making and removing Linux network namespaces (one per node, plus one "switch" namespace that
holds the bridge, so the machine's own network is never touched), running a command inside a
node, listing and killing every process inside a node, and the job's real per-node command
(`deploy.jobspec.launcher_command`, with AML's `${{...}}` bindings filled with local paths and
AML's per-node variables set) so a test runs what Azure ML would run.
Rules it keeps: only addresses inside the namespaces it made (one /24 on its own bridge); every node
has a default route on its own interface, as real nodes have (Ray and the run find "this node's
address" through it); on close every process inside every namespace is killed and the
namespaces, veths and bridge are deleted, also when the test failed.
Each node gets its own TMPDIR (a real node has its own /tmp: Ray keeps its sockets and session
there); the filesystem is otherwise shared, as AML's mounted outputs are.
Does not know: what the run does; the tests assert that.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SUBNET = "10.231.7"  # lives only on the twin's own bridge, inside its switch namespace
MASTER_PORT = 6105  # what AML's PyTorch distribution uses; each node has its own ports
REQUIRE_ENV = "GRPO_REQUIRE_NETNS"  # set by .ci/run: a twin test that cannot run fails there


def _ip(*args: str, ns: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    cmd = ["ip", *(["netns", "exec", ns, "ip"] if ns else []), *args]
    return subprocess.run(cmd, capture_output=True, text=True, check=check)


def namespaces_unavailable() -> str | None:
    """Why this machine cannot make network namespaces, or None when it can."""
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    if os.geteuid() != 0:
        return "network namespaces need root"
    probe = f"gtwprobe{os.getpid()}"
    r = _ip("netns", "add", probe, check=False)
    if r.returncode != 0:
        return f"`ip netns add` failed: {r.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


def require_namespaces() -> None:
    """Skip (with the reason) where namespaces cannot be made; fail instead where CI demands them."""
    why = namespaces_unavailable()
    if why is None:
        return
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{REQUIRE_ENV}=1 but the twin cannot run: {why}")
    pytest.skip(f"no network namespaces here: {why}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale() -> None:
    """Namespaces left by a twin whose test process died without closing it (SIGKILL, OOM)."""
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    for line in listed.splitlines():
        name = line.split()[0] if line.strip() else ""
        if not name.startswith("gtw") or "-" not in name or name.startswith("gtwprobe"):
            continue
        owner = name[3:].split("-")[0]
        if owner.isdigit() and not _pid_alive(int(owner)):
            for pid in _ns_pids(name):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            _ip("netns", "del", name, check=False)


def _ns_pids(ns: str) -> list[int]:
    out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]


class Twin:
    """`n` simulated nodes named `node0..`, node i at SUBNET.(10+i); use as a context manager."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.tag = f"{os.getpid()}-{secrets.token_hex(2)}"
        self.switch = f"gtw{self.tag}-sw"
        self.names = [f"gtw{self.tag}-n{i}" for i in range(n)]
        self.ips = [f"{SUBNET}.{10 + i}" for i in range(n)]
        # Short root: Ray's unix sockets live under each node's TMPDIR (108-byte path limit).
        self.root = Path(tempfile.mkdtemp(prefix="gtw", dir="/tmp"))
        self.procs: dict[int, list[subprocess.Popen]] = {i: [] for i in range(n)}

    # -- lifecycle --------------------------------------------------------------------------------
    def __enter__(self) -> Twin:
        _remove_stale()
        try:
            self._create()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _create(self) -> None:
        _ip("netns", "add", self.switch)
        _ip("link", "add", "br0", "type", "bridge", ns=self.switch)
        _ip("link", "set", "br0", "up", ns=self.switch)
        short = secrets.token_hex(3)
        for i, (ns, ip) in enumerate(zip(self.names, self.ips, strict=True)):
            node_end, switch_end = f"gn{short}{i}", f"gs{short}{i}"
            _ip("netns", "add", ns)
            _ip("link", "add", node_end, "type", "veth", "peer", "name", switch_end)
            _ip("link", "set", node_end, "netns", ns)
            _ip("link", "set", switch_end, "netns", self.switch)
            _ip("link", "set", switch_end, "master", "br0", ns=self.switch)
            _ip("link", "set", switch_end, "up", ns=self.switch)
            _ip("link", "set", "lo", "up", ns=ns)
            _ip("link", "set", node_end, "name", "eth0", ns=ns)
            _ip("addr", "add", f"{ip}/24", "dev", "eth0", ns=ns)
            _ip("link", "set", "eth0", "up", ns=ns)
            _ip("route", "add", "default", "dev", "eth0", ns=ns)
            (self.root / f"node{i}" / "tmp").mkdir(parents=True)

    def pids(self, i: int) -> list[int]:
        """Every process inside node i's namespace (whoever started it)."""
        return _ns_pids(self.names[i])

    def kill_node(self, i: int) -> None:
        """SIGKILL every process inside node i until none is left."""
        for _ in range(50):
            pids = self.pids(i)
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)  # let the kernel reap before listing again (not a sync point)

    def close(self) -> None:
        for i in range(self.n):
            with contextlib.suppress(Exception):
                self.kill_node(i)
        for procs in self.procs.values():
            for p in procs:
                with contextlib.suppress(Exception):
                    p.wait(timeout=5)
        for ns in [*self.names, self.switch]:
            _ip("netns", "del", ns, check=False)
        shutil.rmtree(self.root, ignore_errors=True)

    # -- running things ---------------------------------------------------------------------------
    def node_env(self, i: int, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """The environment of a process on node i: its own TMPDIR (no stray Ray address)."""
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "TMPDIR")}
        env.update(TMPDIR=str(self.root / f"node{i}" / "tmp"), PYTHONUNBUFFERED="1")
        env.update(extra or {})
        return env

    def popen(
        self, i: int, cmd: Sequence[str], env: Mapping[str, str], log: Path
    ) -> subprocess.Popen:
        """Start `cmd` inside node i, output to `log`; its own session, as a node's init would."""
        with open(log, "wb") as fh:
            p = subprocess.Popen(
                ["ip", "netns", "exec", self.names[i], *cmd],
                cwd=REPO,
                env=dict(env),
                stdout=fh,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.procs[i].append(p)
        return p

    def run(self, i: int, cmd: Sequence[str], timeout: float = 60) -> subprocess.CompletedProcess:
        """Run a short command inside node i and return its result."""
        return subprocess.run(
            ["ip", "netns", "exec", self.names[i], *cmd],
            cwd=REPO,
            env=self.node_env(i),
            capture_output=True,
            text=True,
            timeout=timeout,
        )


class TwinJob:
    """The Azure ML job's real command on nodes 0..W-1 of a twin (the rest stay free for clients)."""

    def __init__(
        self,
        twin: Twin,
        *,
        sampler_nodes: int,
        trainer_nodes: int,
        config: Path,
        overrides: Sequence[str],
        machine_flags: Sequence[str] = (),
    ) -> None:
        from deploy.jobspec import JobOptions, environment_variables, launcher_command

        self.twin = twin
        self.world = sampler_nodes + trainer_nodes
        assert self.world <= twin.n
        self.out = twin.root / "outputs" / "checkpoints"
        self.model_out = twin.root / "outputs" / "model"
        self.out.mkdir(parents=True)
        self.model_out.mkdir(parents=True)
        token = twin.root / "ray_token"
        token.write_text(secrets.token_hex(16))
        token.chmod(0o600)
        opts = JobOptions(
            config=str(config),
            sampler_nodes=sampler_nodes,
            trainer_nodes=trainer_nodes,
            sampler_gpus_per_node=0,
            trainer_gpus_per_node=0,
            overrides=list(overrides),
        )
        command = launcher_command(opts, has_model=False, has_data=False)
        bindings = {
            "${{inputs.config}}": str(config),
            "${{outputs.checkpoints}}": str(self.out),
            "${{outputs.model}}": str(self.model_out),
            "${{inputs.ray_token}}": str(token),
        }
        for k, v in bindings.items():
            command = command.replace(k, shlex.quote(v))
        assert "${{" not in command, command
        argv = shlex.split(command)
        assert argv[:3] == ["python", "-m", "deploy.launch"], argv
        # The image's `python` is this interpreter; the machine-size flags fit a 2-core, 24 GiB box.
        self.argv = [sys.executable, *argv[1:], *machine_flags]
        self.job_env = environment_variables(opts)
        self.procs: list[subprocess.Popen] = []
        self.logs: list[Path] = []

    def start(self) -> None:
        for rank in range(self.world):
            env = self.twin.node_env(
                rank,
                {
                    **self.job_env,
                    # AML's PyTorch distribution, one process per node.
                    "NODE_RANK": str(rank),
                    "RANK": str(rank),
                    "LOCAL_RANK": "0",
                    "WORLD_SIZE": str(self.world),
                    "MASTER_ADDR": self.twin.ips[0],
                    "MASTER_PORT": str(MASTER_PORT),
                    "OMP_NUM_THREADS": "1",
                },
            )
            log = self.twin.root / f"node{rank}.log"
            self.logs.append(log)
            # A real node has its own /tmp; Ray's workers otherwise take the head's temp dir path,
            # which here is the same folder for every node.
            argv = [*self.argv, "--ray-temp-dir", env["TMPDIR"] + "/ray"]
            self.procs.append(self.twin.popen(rank, argv, env, log))

    def wait(self, timeout: float) -> list[int | None]:
        """Exit codes of every node's launcher (None for one still running after `timeout`)."""
        deadline = time.monotonic() + timeout
        for p in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=max(0.0, deadline - time.monotonic()))
        return [p.poll() for p in self.procs]

    def output(self, tail: int = 8000) -> str:
        parts = []
        for i, log in enumerate(self.logs):
            text = log.read_text(errors="replace") if log.is_file() else "(no log)"
            parts.append(f"==== node {i} ({self.twin.ips[i]}) ====\n{text[-tail:]}")
        for f in sorted((self.out / "logs").glob("*.log")) if (self.out / "logs").is_dir() else []:
            parts.append(f"==== {f.name} ====\n{f.read_text(errors='replace')[-3000:]}")
        return "\n".join(parts)
