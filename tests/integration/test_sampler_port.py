"""A replica holds its port from its first moment, not from when its engine is ready.

The server used to bind only after vLLM had loaded (seconds to minutes), and the launcher picked
a free port before starting it: vLLM opens free ports of its own while it loads, and one took
the replica's port in CI (`[Errno 98] address already in use`, after the whole engine start).
Now the server binds first (a free one when the launcher lets it pick, named in a port file),
so a port in use is an error before anything slow starts."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from sampler.launch import child_env, start_sampler

pytestmark = pytest.mark.slow


def test_a_port_in_use_is_refused_before_the_engine_loads(tiny_model_dir, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        r = subprocess.run(
            [sys.executable, "-m", "sampler", "--model", str(tiny_model_dir), "--port", str(port)],
            env=child_env(),
            capture_output=True,
            text=True,
            timeout=600,
        )
    out = r.stdout + r.stderr
    assert r.returncode == 2
    assert f"cannot bind 127.0.0.1:{port}" in out and "--port" in out, out[-2000:]
    assert "EngineCore" not in out and "Traceback" not in out, out[-2000:]  # nothing slow began


def test_a_launched_replica_holds_its_port_while_its_engine_loads(tiny_model_dir, tmp_path):
    sp = start_sampler(tiny_model_dir, log_dir=tmp_path, wait=False)
    try:
        port = int(sp.url.rsplit(":", 1)[1])  # known as soon as the server bound it
        with socket.socket() as other, pytest.raises(OSError) as e:
            other.bind(("127.0.0.1", port))
        assert e.value.errno == 98  # EADDRINUSE: held, whether or not the engine is ready yet
        sp.wait_healthy(300)
        assert "EngineCore" in sp.log_tail(100_000)
    finally:
        sp.kill()
