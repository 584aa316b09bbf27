"""The run's processes on Ray: where the sampler replicas and trainer ranks run, the keys they
are started with, and their teardown.

Owns: Ray's start (a loopback cluster of this machine, or the job's cluster), placement by the
launcher's node resources, the three sampler keys (only the API key is written to disk), the
replica actors (or the external URLs), the trainer ranks and their group's rendezvous, the
weight transport choice, calls on every rank, and tearing all of it down.
Does not know: the step loop, rollouts, checkpoints' contents, MLflow.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from sampler.engine import CPU_VLLM_ENV
from trainer.cluster import SAMPLER_RESOURCE, TRAINER_RESOURCE
from trainer.config import ConfigError, RunConfig
from trainer.files import write_secret
from trainer.run_files import RunFiles

log = logging.getLogger("trainer")
T = TypeVar("T")
_STARTS_GONE_S = 60  # how long release() waits for start-ups whose actors it killed


def replica_port(first: int, index: int) -> int | None:
    """`sampler.port`: replica i serves on `port + i`; 0 lets each replica bind a free port."""
    return first + index if first else None


def _sampler_args(config_file: Path, dtype: str, seed: int) -> list[str]:
    """The sampler reads its section of the resolved run config; the dtype and the engine seed are
    decided here (each replica gets its own seed, so replicas never share a sampling stream)."""
    return ["--config", str(config_file), "--dtype", dtype, "--seed", str(seed)]


class Roles:
    def __init__(self, cfg: RunConfig, out: Path, files: RunFiles) -> None:
        self.cfg, self.out, self.files = cfg, out, files
        self.replicas: list[Any] = []  # SamplerReplica actors (none with external_urls)
        self.workers: list[Any] = []  # TrainerWorker actors, rank order
        self.api_key: str | None = None
        self.admin_key: str | None = None
        self.trainer_key: str | None = None
        self.key_file = out / "sampler_api_key"
        # Where each role runs ({"sampler_replicas": [...], "trainer_ranks": [...]}).
        self.placement: dict[str, list[dict[str, Any]]] = {}
        # The replicas and the ranks start side by side (two threads), both recording placement.
        self._placement_lock = threading.Lock()
        # Start-ups running in threads, and whether release() began (no actor is made after).
        self._starting = threading.Condition()
        self._running_starts = 0
        self._closing = False
        self.overlap_push = False  # decided in start_trainers (needs to know about GPUs)
        self.owns_ray = False

    # ------------------------------------------------------------------ Ray
    def init_ray(self) -> None:
        import ray

        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        if ray.is_initialized():
            return
        p = self.cfg.pipeline
        here = str(Path(__file__).resolve().parents[1])
        path = os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")]))
        env = {"env_vars": {"PYTHONPATH": path}}
        if p.ray_address:
            ray.init(address=p.ray_address, runtime_env=env, log_to_driver=True)
        else:
            from rewards.local_ray import init_loopback_ray

            init_loopback_ray(
                num_cpus=p.ray_num_cpus or os.cpu_count(),
                include_dashboard=False,
                runtime_env=env,
                object_store_memory=256 << 20,
                log_to_driver=True,
            )
        self.owns_ray = True

    def _options(self, role: str, gpus: float) -> dict[str, Any]:
        """Place by the launcher's node resources when the cluster has them (Azure ML), else anywhere."""
        import ray

        opts: dict[str, Any] = {
            "num_cpus": 0.01 if role == SAMPLER_RESOURCE else 0.5,
            "num_gpus": gpus,
        }
        if ray.cluster_resources().get(role):
            opts["resources"] = {role: 0.001}
        if not gpus:
            # CPU nodes: one node's cores are the resource, so spread a role's processes over its
            # nodes (GPU roles are placed by their GPUs and pack onto nodes).
            opts["scheduling_strategy"] = "SPREAD"
        return opts

    def on_own_machines(self) -> bool:
        """Whether the roles have cores of their own (GPU nodes, or a cluster of several nodes),
        so their start-ups can overlap; on one CPU machine they compete for its cores."""
        import ray

        return self.has_gpus() or sum(1 for n in ray.nodes() if n.get("Alive")) > 1

    def has_gpus(self) -> bool:
        import ray

        return ray.cluster_resources().get("GPU", 0) > 0

    # ------------------------------------------------------------------ samplers
    def _keys(self) -> None:
        """Three scopes (sampler/api.py): the api key is for people trying the live policy and is
        the only one written to disk; the trainer's and the admin key stay in memory."""
        s = self.cfg.sampler
        self.api_key = s.api_key or os.environ.get("SAMPLER_API_KEY") or secrets.token_urlsafe(24)
        self.admin_key = s.admin_key or secrets.token_urlsafe(24)
        self.trainer_key = s.trainer_key or secrets.token_urlsafe(24)
        write_secret(self.key_file, self.api_key + "\n")
        if s.external_urls:
            self.admin_key = s.admin_key or os.environ.get("SAMPLER_ADMIN_KEY") or ""
            self.trainer_key = (
                s.trainer_key or os.environ.get("SAMPLER_TRAINER_KEY") or self.api_key
            )
            if not self.admin_key:
                raise ConfigError(
                    "sampler.external_urls needs sampler.admin_key (or SAMPLER_ADMIN_KEY): the "
                    "trainer pushes weights through the samplers' admin routes"
                )

    def start_samplers(self, model_path: str, config_file: Path) -> list[str]:
        """Launch the replicas (or take the external URLs); their URLs once all are live."""
        s = self.cfg.sampler
        dtype = s.dtype if s.dtype != "auto" else self.cfg.model.torch_dtype
        dtype = "float32" if dtype == "auto" else dtype
        with self._start():
            return self._start_samplers(model_path, dtype, config_file)

    def _start_samplers(self, model_path: str, dtype: str, config_file: Path) -> list[str]:
        import ray

        from trainer.replica_actor import SamplerReplica

        s = self.cfg.sampler
        self._keys()
        if s.external_urls:
            return list(s.external_urls)
        gpus = s.tensor_parallel_size if self.has_gpus() else 0
        Actor = ray.remote(max_restarts=0)(SamplerReplica)
        env = dict(CPU_VLLM_ENV) if not gpus else {}
        self.replicas = self._create(lambda: [
            Actor.options(**self._options(SAMPLER_RESOURCE, gpus)).remote(
                i,
                model_path,
                _sampler_args(config_file, dtype, s.seed + i),
                s.host,
                self.api_key,
                self.admin_key,
                str(self.out / "logs"),
                env,
                self.trainer_key,
                replica_port(s.port, i),
            )
            for i in range(s.replicas)
        ])  # fmt: skip
        urls = ray.get([r.start.remote(s.startup_timeout_s) for r in self.replicas])
        infos = ray.get([r.info.remote() for r in self.replicas])
        self.files.write_replicas(infos)
        self._place(
            "sampler_replicas",
            [{"index": i["index"], "node_ip": i["node_ip"], "url": i["url"]} for i in infos],
        )
        for u in urls:
            log.info(
                "sampler replica live at %s (OpenAI API: %s/v1; API key in %s)", u, u, self.key_file
            )
        return urls

    # ------------------------------------------------------------------ trainers
    def start_trainers(self, model_path: str, steps: int) -> None:
        with self._start():
            self._start_trainers(model_path, steps)

    def _start_trainers(self, model_path: str, steps: int) -> None:
        import ray

        from trainer.workers import TrainerWorker

        p = self.cfg.pipeline
        gpus = p.trainer_gpus_per_worker if self.has_gpus() else 0
        self.overlap_push = (
            p.overlap_weight_push
            if p.overlap_weight_push is not None
            else p.max_staleness >= 1 and not gpus
        )
        threads = p.trainer_threads or (
            None if gpus else max(1, (os.cpu_count() or 1) // p.num_trainer_workers)
        )
        # "push": a second thread on which `finish_push` waits for a background weight push while
        # the default group (one thread, calls in order) trains.
        Actor = ray.remote(max_restarts=0, concurrency_groups={"push": 1})(TrainerWorker)
        self.workers = self._create(lambda: [
            Actor.options(**self._options(TRAINER_RESOURCE, gpus)).remote(
                r,
                p.num_trainer_workers,
                model_path,
                self.cfg.trainer.model_dump(),
                self.cfg.model.model_dump(),
                steps,
                "nccl" if gpus else "gloo",
                p.dist_timeout_s,
                p.connect_timeout_s,
                threads,
            )
            for r in range(p.num_trainer_workers)
        ])  # fmt: skip
        # Rank 0 opens the group's store on its own node (the driver's node may not train at
        # all); the others learn the address from it.
        addr, port = ray.get(self.workers[0].rendezvous_endpoint.remote())
        log.info("trainer group: %d ranks, rank 0 at %s:%d", p.num_trainer_workers, addr, port)
        secret = secrets.token_hex(16)  # the group's keys live under it (TrainerWorker.join)
        ray.get([w.join.remote(addr, port, secret) for w in self.workers])
        self._place("trainer_ranks", ray.get([w.where.remote() for w in self.workers]))

    async def setup_pushers(self, urls: list[str]) -> None:
        """Every rank's weight pusher for the replicas at `urls` (rank 0 pushes; all probe)."""
        p = self.cfg.pipeline
        await self.all(
            "setup_pusher",
            urls,
            self.trainer_key,
            self.admin_key,
            self.weight_transport(),
            p.weight_sync_bucket_mb << 20,
            p.dist_timeout_s,
            p.weight_sync_dir or str(self.out / "weight_sync"),
            p.connect_timeout_s,
            p.weight_probe,
            p.weight_probe_tolerance,
        )

    @contextlib.contextmanager
    def _start(self) -> Iterator[None]:
        """Around a start-up that runs in a thread (the replicas', the ranks'): release() stops
        Ray only after it ended, because a thread that calls Ray after ray.shutdown() takes the
        whole process down (Ray's core worker exits, code 1, no message)."""
        with self._starting:
            self._running_starts += 1
        try:
            yield
        finally:
            with self._starting:
                self._running_starts -= 1
                self._starting.notify_all()

    def _create(self, make: Callable[[], T]) -> T:
        """Make actors, unless release() began (it kills the ones it knows of)."""
        with self._starting:
            if self._closing:
                raise RuntimeError("not starting roles: the run is shutting down")
            return make()

    def _place(self, role: str, where: list[dict[str, Any]]) -> None:
        with self._placement_lock:
            self.placement[role] = where
            self.files.write_placement(self.placement)

    def weight_transport(self) -> str:
        t = self.cfg.pipeline.weight_sync
        if t == "auto":
            return "nccl" if self.has_gpus() else "gloo"
        return t

    async def all(self, method: str, *args: Any, per_rank: list[tuple] | None = None) -> list:
        """`method` on every trainer rank (the same args, or `per_rank[i]` for rank i)."""
        refs = [
            getattr(w, method).remote(*(per_rank[i] if per_rank else args))
            for i, w in enumerate(self.workers)
        ]
        return list(await asyncio.gather(*refs))

    # ------------------------------------------------------------------ teardown
    async def stop(self) -> None:
        """Shut the trainer ranks and the replicas down (errors logged: this runs after failures)."""
        if self.workers:
            try:
                await asyncio.wait_for(self.all("shutdown"), timeout=60)
            except Exception as e:  # shutting down after a failure: log and keep tearing down
                log.warning("trainer shutdown: %r", e)
        for r in self.replicas:
            try:
                await asyncio.wait_for(r.stop.remote(), timeout=30)
            except Exception as e:
                log.warning("sampler stop: %r", e)

    def release(self) -> None:
        """Kill every actor, mark the replicas dead in replicas.json, stop Ray if we started it."""
        import ray

        with self._starting:
            self._closing = True
            actors = [*self.workers, *self.replicas]
        for a in actors:
            ray.kill(a)
        with self._starting:  # a start-up's next Ray call fails now that its actors are dead
            if not self._starting.wait_for(lambda: not self._running_starts, _STARTS_GONE_S):
                log.warning("a role's start-up is still running; stopping Ray anyway")
        self.files.mark_replicas_dead()
        if self.owns_ray:
            ray.shutdown()
