"""Start and stop `python -m sampler` replicas as subprocesses (tests, benchmarks, local runs).

Owns: free-port picking, the child environment (CPU settings), polling /health with a deadline,
and killing a replica's whole process group (the vLLM engine core is a child of the server).
Does not know: what the replica is used for.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class SamplerProcess:
    url: str
    proc: subprocess.Popen
    log_path: Path
    args: list[str] = field(default_factory=list)

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the replica's process group (server + engine core) and reap the server."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        self.kill(signal.SIGTERM)

    def wait_healthy(self, timeout_s: float = 300) -> SamplerProcess:
        """Poll /health until ok; raise with the replica's log if it exits or times out."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"sampler exited with {self.proc.returncode}:\n{self.log_tail()}"
                )
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.25)  # polling interval of a deadline loop
        self.kill()
        raise TimeoutError(f"sampler not healthy after {timeout_s}s:\n{self.log_tail()}")


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
            "TORCH_COMPILE_DISABLE": "1",
            "OMP_NUM_THREADS": "1",
            "TOKENIZERS_PARALLELISM": "false",
        }
    )
    env.update(extra or {})
    return env


def start_sampler(
    model: str | Path,
    *,
    log_dir: str | Path,
    port: int | None = None,
    api_key: str | None = None,
    admin_key: str | None = None,
    extra_args: list[str] | None = None,
    timeout_s: float = 300,
    wait: bool = True,
) -> SamplerProcess:
    """Start a replica on 127.0.0.1; with `wait`, return once /health answers ok (raises with
    its log). Start several with wait=False, then call `wait_healthy()` on each (parallel boot)."""
    port = port or free_port()
    env_keys = {}
    if api_key:
        env_keys["SAMPLER_API_KEY"] = api_key
    if admin_key:
        env_keys["SAMPLER_ADMIN_KEY"] = admin_key
    args = [
        sys.executable,
        "-m",
        "sampler",
        "--model",
        str(model),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        *(extra_args or []),
    ]
    log_path = Path(log_dir) / f"sampler-{port}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            args,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=child_env(env_keys),
            start_new_session=True,
        )
    sp = SamplerProcess(url=f"http://127.0.0.1:{port}", proc=proc, log_path=log_path, args=args)
    return sp.wait_healthy(timeout_s) if wait else sp
