"""The Ray actor of a sampler replica: it runs one `python -m sampler` server process on its node,
reports its URL, and stops or kills it (its whole process group).

Owns: the server's environment (the node's torch.distributed variables removed), the URL it
publishes (this node's address unless it binds loopback), restarts counted. Does not know:
health policy (trainer.healing decides when to restart), HTTP routes, weights.
Ray is imported by the driver (trainer.roles); the class is wrapped with `ray.remote` there.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainer.cluster import scrub_torch_env
from trainer.workers import node_ip

if TYPE_CHECKING:
    from sampler.launch import SamplerProcess


class SamplerReplica:
    """Runs one sampler server process (`python -m sampler`) on this node."""

    def __init__(
        self,
        index: int,
        model_path: str,
        sampler_args: list[str],
        host: str,
        api_key: str | None,
        admin_key: str,
        log_dir: str,
        env: dict[str, str] | None = None,
        trainer_key: str | None = None,
        port: int | None = None,
    ):
        self.index, self.model_path, self.args = index, model_path, sampler_args
        self.host, self.api_key, self.admin_key = host, api_key, admin_key
        self.trainer_key = trainer_key
        self.port = port  # None: the server binds a free port and reports it
        self.log_dir = Path(log_dir)
        self.env = env or {}
        self.proc: SamplerProcess | None = None
        self.url: str | None = None
        self.restarts = -1

    def start(self, timeout_s: float = 600.0) -> str:
        """(Re)start the server and return its URL once /health says it is ready."""
        from sampler.launch import start_sampler
        from sampler.netaddr import is_loopback

        self.stop()
        loopback = is_loopback(self.host)
        advertise = "127.0.0.1" if loopback else node_ip()
        if not loopback and is_loopback(advertise):
            raise RuntimeError(
                f"sampler replica {self.index} binds {self.host} but this node's address is "
                f"{advertise}: it would publish a URL no other node can reach (is Ray running here?)"
            )
        env, _ = scrub_torch_env(os.environ)
        env.update({"OMP_NUM_THREADS": env.get("OMP_NUM_THREADS", "1"), **self.env})
        self.restarts += 1
        self.proc = start_sampler(
            self.model_path,
            log_path=self.log_dir / f"sampler-{self.index}.log",
            host=self.host,
            port=self.port,
            advertise=advertise,
            api_key=self.api_key,
            admin_key=self.admin_key,
            trainer_key=self.trainer_key,
            extra_args=self.args,
            env=env,
            die_with_parent=True,
            timeout_s=timeout_s,
        )
        self.url = self.proc.url
        return self.url

    def pid(self) -> int | None:
        return self.proc.proc.pid if self.proc else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.proc.poll() is None

    def info(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "node_ip": node_ip(),
            "url": self.url,
            "pid": self.pid(),
            "alive": self.alive(),
            "restarts": self.restarts,
        }

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()
        self.proc = None

    def kill(self) -> None:
        """SIGKILL the server and its engine (a hung replica: SIGTERM would wait on a stopped
        or deadlocked process); connections to it then fail at once."""
        if self.proc is not None:
            self.proc.kill()
