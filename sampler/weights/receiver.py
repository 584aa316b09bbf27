"""vLLM worker side of a weight update: the extension vLLM mixes into each worker.

Owns: `WeightSyncExtension` (vLLM's `worker_extension_cls`, named in `sampler/engine.py` as
`sampler.weights.receiver.WeightSyncExtension`): joining the trainer's group as rank 1 + this
worker's rank and keeping it per session (a group that saw an error is dropped), receiving an update
(`receiver_stream.receive_buckets`, bounded by `receiver_buffers.ReceiveBuffers`) and loading it
in place (vLLM's reload, refused when incomplete: `receiver_reload.checked_reload`; or the CPU
plain layout's direct load, `cpu_layout.py`), loading a folder of safetensors (the filesystem
transport) and switching the CPU layout.
Does not know: HTTP, versions, when generation pauses (`serving.py`), the trainer's sender.
Only what `collective_rpc` carries crosses into these methods (plain values, not tensors).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from sampler.weights.group import make_group
from sampler.weights.receiver_buffers import DEFAULT_MAX_BUFFERS, ReceiveBuffers
from sampler.weights.receiver_stream import receive_buckets
from sampler.weights.rpc import rpc_method

if TYPE_CHECKING:
    import torch


class WeightSyncExtension:
    """Mixed into vLLM's worker (`worker_extension_cls`): methods run inside each worker process.

    Only what `collective_rpc` can carry crosses the boundary (plain values, not tensors).
    """

    @rpc_method
    def sampler_receive_weights(
        self,
        backend: str,
        host: str,
        port: int,
        timeout_s: float,
        session: str | None = None,
        new_group: bool = True,
        connect_timeout_s: float | None = None,
        max_buffers: int = DEFAULT_MAX_BUFFERS,
    ) -> dict[str, float]:
        """Receive one update as rank 1 + this worker's rank of the trainer's group; load it.

        With `new_group` (or no session) join a fresh group; else reuse the group of `session`.
        Only the newest session is kept, and a group that saw an error is dropped, so a
        restarted trainer or replica never meets a stale group.
        """
        import time

        import torch

        t0 = time.perf_counter()
        device = "cpu" if backend == "gloo" else f"cuda:{torch.cuda.current_device()}"
        pool = getattr(self, "_sampler_buffer_pool", None)
        if pool is None or pool.device != device or pool.max_buffers != max_buffers:
            pool = ReceiveBuffers(device, max_buffers)
            self._sampler_buffer_pool = pool
        pool.start_update()
        sessions: dict[str, Any] = getattr(self, "_sampler_sessions", {})
        if new_group or session is None or session not in sessions:
            if not new_group:
                raise RuntimeError(f"unknown weight-sync session {session!r}: start a new group")
            # Every worker of the replica (TP x PP) is a receiver, at rank 1 + its worker rank.
            _, pg = make_group(
                backend,
                host,
                port,
                1 + self.rank,
                timeout_s,
                connect_timeout_s=connect_timeout_s,
                world_size=1 + self.parallel_config.world_size,
                secret=session,
            )
            sessions = {session: pg} if session else {}
            self._sampler_sessions = sessions
        else:
            pg = sessions[session]
        stats: dict[str, float] = {"rendezvous_seconds": time.perf_counter() - t0}
        placed: set[str] = set()
        stream = receive_buckets(pg, pool, device, stats, self._sampler_targets(), placed)
        ok = False
        try:
            self._sampler_load(stream, placed)
            ok = True
        finally:
            # Read up to the end marker even if loading stopped early (e.g. an unknown tensor
            # name): the trainer then finishes its broadcasts and gets our error over HTTP
            # instead of waiting for the group timeout.
            try:
                for _ in stream:
                    pass
            finally:
                if not ok:
                    sessions.pop(session, None)
        stats["worker_seconds"] = time.perf_counter() - t0
        return stats

    @rpc_method
    def sampler_load_path(self, path: str) -> dict[str, float]:
        """Reload all weights from a folder of safetensors files (the filesystem transport)."""
        import time

        t0 = time.perf_counter()
        if self._sampler_targets() is None:
            self._sampler_reload(weights_path=path)
        else:
            self._sampler_load(_safetensors_items(path))
        return {"worker_seconds": time.perf_counter() - t0}

    @rpc_method
    def sampler_set_cpu_layout(self, layout: str) -> dict[str, float]:
        """Switch this CPU worker to `layout` (see `sampler.cpu_layout`); call once, at start."""
        import time

        from sampler.cpu_layout import LAYOUTS, use_plain_layout

        if layout not in LAYOUTS:
            raise ValueError(f"cpu_weight_layout must be one of {LAYOUTS}, got {layout!r}")
        t0 = time.perf_counter()
        if layout == "plain" and self._sampler_targets() is None:
            from vllm.config import set_current_vllm_config
            from vllm.model_executor.model_loader import get_model_loader

            cfg = self.vllm_config
            model = self.model_runner.get_model()
            with set_current_vllm_config(cfg):
                weights = get_model_loader(cfg.load_config).get_all_weights(cfg.model_config, model)
                plain = use_plain_layout(model, weights)
            if getattr(cfg.model_config.hf_config, "tie_word_embeddings", False):
                # Trainers send the tied head too; the loader refuses it without the embedding.
                plain.ignored.add("lm_head.weight")
            self._sampler_plain = plain
        plain = self._sampler_plain_map()
        return {
            "seconds": time.perf_counter() - t0,
            "direct_targets": float(len(plain.direct)) if plain else 0.0,
        }

    def _sampler_plain_map(self) -> Any:
        """The `cpu_layout.PlainMap` of the plain layout; None in vLLM's own layout."""
        return getattr(self, "_sampler_plain", None)

    def _sampler_targets(self) -> dict[str, torch.Tensor] | None:
        plain = self._sampler_plain_map()
        return None if plain is None else plain.direct

    def _sampler_load(
        self, weights: Iterator[tuple[str, torch.Tensor]], placed: set[str] | None = None
    ) -> None:
        """Load a full set of named checkpoint tensors into the served model, in place.

        `placed`: names the transport already wrote straight into their parameters.
        """
        plain = self._sampler_plain_map()
        if plain is None:  # GPU, or the CPU packed layout: vLLM's in-place reload
            self._sampler_reload(weights_iterator=weights)
            return
        from vllm.config import set_current_vllm_config

        from sampler.cpu_layout import load_plain

        with set_current_vllm_config(self.vllm_config):
            loaded = load_plain(self.model_runner.get_model(), weights, plain.ignored)
        missing = plain.required() - set(loaded) - (placed or set())
        if missing:
            # The model now mixes old and new weights; the server marks itself broken.
            raise RuntimeError(
                f"weight update left {len(missing)} parameters on their old values "
                f"(e.g. {sorted(missing)[:3]}): send the full state dict"
            )

    def _sampler_reload(self, **kwargs: Any) -> None:
        """vLLM's in-place reload, refusing an update that leaves any weight on its old value."""
        from sampler.weights.receiver_reload import checked_reload

        checked_reload(self.model_runner.get_model(), lambda: self.reload_weights(**kwargs))
        self._sampler_after_reload()

    def _sampler_after_reload(self) -> int:
        import torch

        if torch.cuda.is_available():
            return 0
        from sampler.cpu_layout import refresh_packed_copies

        return refresh_packed_copies(self.model_runner.get_model())


def _safetensors_items(path: str) -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor of every `*.safetensors` file in a folder, one at a time."""
    from pathlib import Path

    from safetensors import safe_open

    for file in sorted(Path(path).glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 (safe_open is not a dict)
                yield name, f.get_tensor(name)
