"""The Ray actor of a trainer rank (the sampler replicas' actor: trainer.replica_actor).

Owns: process-level plumbing of a rank: a `TrainerWorker` is one rank of the DeepSpeed process
group (it sets the torch.distributed env, builds the `PolicyEngine`, and on rank 0 owns the weight
pusher and the weight probe). Does not know: GRPO math (engine/loss), rollout scheduling
(orchestrator), the run loop (driver). Ray is imported by the driver (trainer.roles); the class is
wrapped with `ray.remote` there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from typing import Any

from trainer.cluster import scrub_torch_env

log = logging.getLogger(__name__)


def node_ip() -> str:
    """This node's address as other nodes see it (loopback on a one-machine run)."""
    try:
        import ray

        return ray.util.get_node_ip_address()
    except Exception:  # Ray not initialised in this process: a local run
        return "127.0.0.1"


class TrainerWorker:
    """One trainer rank. Methods are collective: the driver calls them on every rank at once.

    Start-up is two calls, so that rank 0 chooses the group's address on its own node: the driver
    asks rank 0 for `rendezvous_endpoint()` (its store listens there), then calls `join(addr,
    port)` on every rank, which forms the process group and builds the engine.
    """

    def __init__(
        self,
        rank: int,
        world_size: int,
        model_path: str,
        settings: dict,
        model_cfg: dict,
        total_steps: int,
        backend: str,
        timeout_s: float,
        connect_timeout_s: float,
        threads: int | None = None,
    ):
        import threading

        self.rank, self.world_size = rank, world_size
        self.backend, self.timeout_s, self.connect_timeout_s = backend, timeout_s, connect_timeout_s
        self._model = (model_path, settings, model_cfg, total_steps)
        self.threads = threads
        self.node_ip = node_ip()
        self._store: Any = None
        self.engine: Any = None
        self.settings: Any = None
        self.pad_token_id: int | None = None
        self.pusher: Any = None
        self.client: Any = None
        # The weight probe's token ids (None: probe off) and its tolerance override.
        self.probe_ids: list[int] | None = None
        self.probe_tolerance: float | None = None
        self._loop = asyncio.new_event_loop()
        # The background push (thread, result box) and the lock that makes its waiters (the
        # driver's `finish_push`, the next `push_weights`) take turns.
        self._push: tuple[Any, dict[str, Any]] | None = None
        self._push_lock = threading.Lock()

    def rendezvous_endpoint(self) -> tuple[str, int]:
        """Rank 0: open the group's store on this node; the (address, port) other ranks dial."""
        import datetime

        import torch.distributed as dist

        assert self.rank == 0, "only rank 0 hosts the trainer group's store"
        self._store = dist.TCPStore(
            self.node_ip,
            0,
            self.world_size,
            is_master=True,
            wait_for_workers=False,
            timeout=datetime.timedelta(seconds=self.timeout_s),
        )
        return self.node_ip, self._store.port

    def _connect(self, addr: str, port: int) -> Any:
        import datetime

        import torch.distributed as dist

        try:
            store = dist.TCPStore(
                addr,
                port,
                self.world_size,
                is_master=False,
                timeout=datetime.timedelta(seconds=self.connect_timeout_s),
            )
        except (RuntimeError, OSError) as e:  # DistNetworkError is a RuntimeError
            raise ConnectionError(
                f"trainer rank {self.rank} (node {self.node_ip}) could not reach trainer rank 0's "
                f"process-group store at {addr}:{port} within {self.connect_timeout_s:.0f}s "
                f"(pipeline.connect_timeout_s): {str(e).rstrip('.')}. The trainer nodes must reach each other "
                "over TCP on any port (store, gloo/NCCL and Ray all pick free ports)."
            ) from None
        store.set_timeout(datetime.timedelta(seconds=self.timeout_s))
        return store

    def join(self, master_addr: str, master_port: int, secret: str | None = None) -> int:
        """Every rank: form the process group at rank 0's endpoint, then build the engine.

        `secret` (from the driver, over Ray): the group's keys live under it in rank 0's store,
        whose port any peer on the network can reach; without it a stranger can take no rank."""
        import datetime

        import torch
        import torch.distributed as dist

        for k in scrub_torch_env(os.environ)[1]:  # the node's, from AML/torchrun
            os.environ.pop(k)
        os.environ.update(
            RANK=str(self.rank),
            LOCAL_RANK="0",
            WORLD_SIZE=str(self.world_size),
            LOCAL_WORLD_SIZE="1",
            MASTER_ADDR=master_addr,
            MASTER_PORT=str(master_port),
        )
        if self.backend == "gloo" and not os.environ.get("GLOO_SOCKET_IFNAME"):
            # gloo binds to what gethostname() resolves to (often loopback) unless told the
            # interface; every group of this process (DeepSpeed's too) reads this variable.
            from sampler.netaddr import interface_of

            os.environ["GLOO_SOCKET_IFNAME"] = interface_of(self.node_ip)
        # Ray sets OMP_NUM_THREADS from the actor's num_cpus; CPU training wants more.
        if self.threads:
            torch.set_num_threads(self.threads)

        from trainer.config import GRPOSettings, ModelConfig
        from trainer.engine import PolicyEngine

        store = self._store if self.rank == 0 else self._connect(master_addr, master_port)
        if secret is not None:
            store = dist.PrefixStore(f"grpo-trainer/{secret}/", store)
        if not dist.is_initialized():
            dist.init_process_group(
                backend=self.backend,
                store=store,
                rank=self.rank,
                world_size=self.world_size,
                timeout=datetime.timedelta(seconds=self.timeout_s),
            )
        model_path, settings, model_cfg, total_steps = self._model
        self.settings = GRPOSettings.model_validate(settings)
        self.engine = PolicyEngine(
            model_path, self.settings, ModelConfig.model_validate(model_cfg), total_steps
        )
        self.pad_token_id = self.engine.tokenizer.pad_token_id
        return self.rank

    def where(self) -> dict[str, Any]:
        return {"rank": self.rank, "node_ip": self.node_ip, "pid": os.getpid()}

    def ready(self) -> int:
        return self.rank

    def train_step(self, samples: list, num_items_in_batch: int) -> dict[str, float]:
        from trainer.batch import collate

        batch = collate(
            samples,
            self.pad_token_id,
            mask_truncated_completions=self.settings.mask_truncated_completions,
        )
        return self.engine.train_step(batch, num_items_in_batch=num_items_in_batch)

    def setup_pusher(
        self,
        urls: list[str],
        api_key: str | None,
        admin_key: str,
        transport: str,
        bucket_bytes: int,
        timeout_s: float,
        shared_dir: str | None,
        connect_timeout_s: float | None = None,
        probe: bool = True,
        probe_tolerance: float | None = None,
    ) -> None:
        """Collective (every rank learns whether pushes run the probe's forward)."""
        if probe:
            from trainer.weight_probe import probe_token_ids

            self.probe_ids = probe_token_ids(self.engine.tokenizer)
        self.probe_tolerance = probe_tolerance
        if self.rank != 0:
            return
        from sampler.client import SamplerClient
        from sampler.weights.sender import make_weight_pusher

        self.client = SamplerClient(urls, api_key=api_key, admin_key=admin_key)
        self.pusher = make_weight_pusher(
            transport,
            self.client,
            bucket_bytes=bucket_bytes,
            timeout_s=timeout_s,
            shared_dir=shared_dir,
            connect_timeout_s=connect_timeout_s,
        )

    def set_sampler_urls(self, urls: list[str]) -> None:
        if self.rank == 0:
            self.client.set_urls(urls)

    def push_weights(
        self,
        version: int,
        bucket_bytes: int,
        urls: list[str] | None = None,
        background: bool = False,
        reset: bool = False,
    ) -> dict[str, float]:
        """Collective: every rank walks the (ZeRO-gathered) parameters; rank 0 sends them.

        With `background`, rank 0 copies the weights and returns at once; a thread sends the
        copy (training may change the parameters meanwhile) and `finish_push` returns its stats.
        At most one push is in flight: a new one first waits for the previous one.
        """
        # The probe's reference comes from the weights being pushed (a forward on every rank).
        ref = self._probe_reference()
        # The pusher's device (rank 0 has one; the others only take part in ZeRO-3's gathers).
        device = getattr(self.pusher, "device", "cpu") if self.rank == 0 else "cpu"
        it = self.engine.iter_named_params_for_sync(bucket_bytes, device)
        if self.rank != 0:
            for _ in it:
                pass
            return {}
        previous = self.finish_push()
        t0 = time.perf_counter()
        if not background:
            stats = self._loop.run_until_complete(
                self.pusher.push(it, version, urls=urls, reset=reset)
            )
            metrics = _push_metrics(stats, time.perf_counter() - t0)
            return {**previous, **metrics, **self._probe(ref, version, urls)}
        import threading

        snapshot = [(name, t.detach().clone()) for name, t in it]
        snapshot_s = time.perf_counter() - t0
        box: dict[str, Any] = {}

        def send() -> None:
            t1 = time.perf_counter()
            try:
                stats = self._loop.run_until_complete(
                    self.pusher.push(iter(snapshot), version, urls=urls, reset=reset)
                )
                metrics = _push_metrics(stats, time.perf_counter() - t1)
                box["metrics"] = {**metrics, **self._probe(ref, version, urls)}
            except BaseException as e:  # raised by finish_push, in the driver
                box["error"] = e

        thread = threading.Thread(target=send, name=f"weight-push-v{version}", daemon=True)
        thread.start()
        self._push = (thread, box)
        return {**previous, "timing/weight_snapshot_s": snapshot_s}

    def check_weights(self, version: int) -> dict[str, float]:
        """Collective: probe every replica against this policy without pushing (the start of
        a run whose samplers loaded the trainer's checkpoint themselves)."""
        ref = self._probe_reference()
        return self._probe(ref, version, None) if self.rank == 0 else {}

    def _probe_reference(self) -> tuple[list[float], str] | None:
        """This policy's logprobs of the probe and their dtype (collective), None if off."""
        return self.engine.probe_logprobs(self.probe_ids) if self.probe_ids else None

    def _probe(
        self, ref: tuple[list[float], str] | None, version: int, urls: list[str] | None
    ) -> dict[str, float]:
        """Check that every replica the push reached serves these weights (rank 0, after the
        push); raises WeightProbeError naming the replica, the version and the gap."""
        if ref is None:
            return {}
        from trainer.weight_probe import check_replicas

        failed = self.pusher.last_failed
        targets = [u.rstrip("/") for u in (urls or self.client.urls)]
        reached = [u for u in targets if u not in failed]
        logprobs, dtype = ref
        return self._loop.run_until_complete(
            check_replicas(
                self.client, reached, self.probe_ids, logprobs, version, dtype, self.probe_tolerance
            )
        )

    def finish_push(self) -> dict[str, float]:
        """Wait for the background push (if any); its metrics, or its error raised here."""
        with self._push_lock:
            if self._push is None:
                return {}
            thread, box = self._push
            thread.join()
            self._push = None
        if "error" in box:
            raise box["error"]
        return box["metrics"]

    def save_checkpoint(self, path: str, client_state: dict) -> None:
        self.engine.save_checkpoint(path, client_state)

    def load_checkpoint(self, path: str) -> dict:
        return self.engine.load_checkpoint(path)

    def save_hf(self, path: str) -> None:
        self.engine.save_hf(path)

    def shutdown(self) -> None:
        import torch.distributed as dist

        if self.pusher is not None:
            with contextlib.suppress(Exception):  # its error was reported (or the run is ending)
                self.finish_push()
            self._loop.run_until_complete(self.pusher.aclose())
            self._loop.run_until_complete(self.client.aclose())
        if dist.is_initialized():
            dist.destroy_process_group()


def _push_metrics(stats: dict[str, float] | None, seconds: float) -> dict[str, float]:
    return {
        "timing/weight_sync_s": seconds,
        **{f"weight_sync/{k}": float(v) for k, v in (stats or {}).items()},
    }
