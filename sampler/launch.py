"""Start and stop `python -m sampler` replicas as subprocesses (the driver's replica actors,
tests, benchmarks).

Owns: the child environment (CPU settings for tests), polling /health with a
deadline, tying the server's life to its parent's, and killing a replica's whole process group
(the vLLM engine core may be a child of the server).
Does not know: what the replica is used for, Ray.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from sampler.engine import CPU_THREAD_ENV, CPU_VLLM_ENV
from sampler.lifecycle import die_with_launcher


class SamplerProcess:
    """A started `python -m sampler` process; its URL is known once it has bound its port (a
    launcher that let it pick a free one reads the port from `port_file`)."""

    def __init__(
        self,
        url: str,
        proc: subprocess.Popen,
        log_path: Path,
        port_file: Path | None = None,
        timeout_s: float = 300,
    ) -> None:
        self._url = url
        self.proc = proc
        self.log_path = log_path
        self.port_file = port_file
        self.timeout_s = timeout_s

    @property
    def url(self) -> str:
        if self.port_file is not None:
            self._url = f"{self._url}:{self._wait_port()}"
            self.port_file = None
        return self._url

    def _wait_port(self) -> int:
        """The port the server bound (it writes it first thing, before the engine loads)."""
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            with contextlib.suppress(FileNotFoundError, ValueError):
                return int(self.port_file.read_text())
            self._raise_if_exited()
            time.sleep(0.05)  # polling interval of a deadline loop
        self.kill()
        raise TimeoutError(f"sampler bound no port in {self.timeout_s}s (log {self.log_path})")

    def _raise_if_exited(self) -> None:
        """While starting: a server that exited is an error carrying its log."""
        if self.proc.poll() is not None:
            raise RuntimeError(
                f"sampler exited with {self.proc.returncode} while starting (log "
                f"{self.log_path}):\n{self.log_tail()}"
            )

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the replica's process group (server + engine core) and reap the server."""
        # The whole group, even when the server itself is gone: its engine core may not be.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        self.kill(signal.SIGTERM)

    def wait_healthy(self, timeout_s: float = 300) -> SamplerProcess:
        """Poll /health until ok; raise with the replica's log if it exits or times out."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self._raise_if_exited()
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.25)  # polling interval of a deadline loop
        self.kill()
        raise TimeoutError(
            f"sampler not healthy after {timeout_s}s at {self.url} (log {self.log_path}):\n"
            f"{self.log_tail()}"
        )


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment plus the CPU settings tests and benchmarks run vLLM with."""
    env = dict(os.environ)
    env.update({**CPU_VLLM_ENV, **CPU_THREAD_ENV, "TOKENIZERS_PARALLELISM": "false"})
    env.update(extra or {})
    return env


def start_sampler(
    model: str | Path,
    *,
    log_dir: str | Path | None = None,
    log_path: str | Path | None = None,
    host: str = "127.0.0.1",
    advertise: str | None = None,
    port: int | None = None,
    api_key: str | None = None,
    admin_key: str | None = None,
    trainer_key: str | None = None,
    extra_args: list[str] | None = None,
    env: dict[str, str] | None = None,
    die_with_parent: bool = False,
    timeout_s: float = 300,
    wait: bool = True,
) -> SamplerProcess:
    """Start a replica bound to `host`; with `wait`, return once /health answers ok (raises with
    its log). Start several with wait=False, then call `wait_healthy()` on each (parallel boot).

    `advertise`: the address others reach it at (default `host`). `env`: the child's whole
    environment (default: `child_env()`, CPU settings for tests); keys are added to it.
    `log_path` (appended to) or `log_dir` (a file per port) must be given.
    """
    published = advertise or host
    if published in ("0.0.0.0", "::", ""):
        raise ValueError(
            f"start_sampler(host={host!r}) needs advertise=: the address others reach it at"
        )
    child = dict(env) if env is not None else child_env()
    if api_key:
        child["SAMPLER_API_KEY"] = api_key
    if admin_key:
        child["SAMPLER_ADMIN_KEY"] = admin_key
    if trainer_key:
        child["SAMPLER_TRAINER_KEY"] = trainer_key
    args = [
        sys.executable,
        "-m",
        "sampler",
        "--model",
        str(model),
        "--host",
        host,
        "--port",
        str(port or 0),
        *(extra_args or []),
    ]
    if log_path is None:
        if log_dir is None:
            raise ValueError("start_sampler needs log_path or log_dir")
        Path(log_dir).mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f"sampler-{port or 'free'}-", suffix=".log", dir=log_dir)
        os.close(fd)
        log_path = name
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    # No port given: the server binds a free one itself and names it here. A port picked now
    # and bound later by the server could be taken meanwhile (vLLM opens free ports of its own
    # while the engine loads).
    port_file = None if port else log_path.with_suffix(".port")
    if port_file is not None:
        port_file.unlink(missing_ok=True)  # a restart's: never the previous server's port
        args += ["--port-file", str(port_file)]
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            args,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=child,
            start_new_session=True,
            preexec_fn=die_with_launcher if die_with_parent else None,
        )
    url = f"http://{published}:{port}" if port else f"http://{published}"
    sp = SamplerProcess(url, proc, log_path, port_file, timeout_s)
    return sp.wait_healthy(timeout_s) if wait else sp
