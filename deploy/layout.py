"""Node layout of one multi-node job: which node does what, and what each node tells Ray.

Owns: `Layout` (sampler/trainer node counts and GPUs per node), role-by-rank assignment, which
of the driver's Ray custom resources (named in trainer.cluster) each node advertises, reading
AML's per-node variables (`NodeEnv`) and the consistency checks shared by `deploy.submit` (before
submitting) and `deploy.launch` (on each node).
Does not know: Azure, Ray's Python API, or how the driver places its actors (it only asks for the
resources named in trainer.cluster). Pure functions; no heavy imports.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from trainer.cluster import SAMPLER_RESOURCE, TRAINER_RESOURCE

Role = Literal["sampler", "trainer"]


class LayoutError(ValueError):
    """The node layout, the AML environment and the run config disagree; the message says how to fix it."""


@dataclass(frozen=True)
class Layout:
    """How many nodes of each role, and GPUs per node (0: a CPU node)."""

    sampler_nodes: int
    trainer_nodes: int
    sampler_gpus_per_node: int = 0
    trainer_gpus_per_node: int = 0

    def __post_init__(self) -> None:
        if self.sampler_nodes < 1:
            raise LayoutError(
                f"--sampler-nodes must be >= 1 (got {self.sampler_nodes}): the sampler needs a node"
            )
        if self.trainer_nodes < 1:
            raise LayoutError(
                f"--trainer-nodes must be >= 1 (got {self.trainer_nodes}): the trainer needs a node"
            )
        for flag, value in (
            ("--sampler-gpus-per-node", self.sampler_gpus_per_node),
            ("--trainer-gpus-per-node", self.trainer_gpus_per_node),
        ):
            if value < 0:
                raise LayoutError(f"{flag} must be >= 0 (got {value}); 0 means a CPU node")

    @property
    def num_nodes(self) -> int:
        return self.sampler_nodes + self.trainer_nodes

    def role(self, node_rank: int) -> Role:
        """Nodes 0..N-1 are sampler nodes, N..N+M-1 trainer nodes (node 0 also hosts the Ray head)."""
        if not 0 <= node_rank < self.num_nodes:
            raise LayoutError(
                f"node rank {node_rank} is outside 0..{self.num_nodes - 1} "
                f"({self.sampler_nodes} sampler + {self.trainer_nodes} trainer nodes)"
            )
        return "sampler" if node_rank < self.sampler_nodes else "trainer"

    def resources(self, role: Role) -> dict[str, float]:
        """Ray custom resources a node of `role` advertises: one unit per GPU, 1 on a CPU node."""
        if role == "sampler":
            return {SAMPLER_RESOURCE: float(self.sampler_gpus_per_node or 1)}
        return {TRAINER_RESOURCE: float(self.trainer_gpus_per_node or 1)}

    def gpus(self, role: Role) -> int:
        return self.sampler_gpus_per_node if role == "sampler" else self.trainer_gpus_per_node


@dataclass(frozen=True)
class NodeEnv:
    """What AML's PyTorch distribution (one process per node) tells each node."""

    node_rank: int
    world_size: int
    master_addr: str
    master_port: int


def _int_var(env: Mapping[str, str], name: str, fallback: str | None = None) -> int:
    raw = env.get(name)
    used = name
    if raw is None and fallback is not None:
        raw, used = env.get(fallback), fallback
    if raw is None:
        names = f"{name} (or {fallback})" if fallback else name
        raise LayoutError(
            f"environment variable {names} is not set: run the launcher under AML's PyTorch distribution "
            f"(process_count_per_instance=1) or export it (e.g. {name}=0 for the first node)"
        )
    try:
        return int(raw)
    except ValueError:
        raise LayoutError(f"environment variable {used}={raw!r} is not an integer") from None


def read_node_env(env: Mapping[str, str]) -> NodeEnv:
    """Read NODE_RANK (RANK as fallback: one process per node), WORLD_SIZE, MASTER_ADDR, MASTER_PORT."""
    rank = _int_var(env, "NODE_RANK", "RANK")
    world = _int_var(env, "WORLD_SIZE")
    addr = (env.get("MASTER_ADDR") or "").strip()
    if not addr:
        raise LayoutError(
            "environment variable MASTER_ADDR is not set: AML sets it to node 0's address under the PyTorch "
            "distribution; locally export MASTER_ADDR=127.0.0.1"
        )
    port = _int_var(env, "MASTER_PORT")
    if not 0 < port < 65536:
        raise LayoutError(f"MASTER_PORT={port} is not a TCP port (1..65535)")
    if world < 1:
        raise LayoutError(f"WORLD_SIZE={world} must be >= 1")
    if not 0 <= rank < world:
        raise LayoutError(f"NODE_RANK={rank} is outside 0..WORLD_SIZE-1 (WORLD_SIZE={world})")
    return NodeEnv(node_rank=rank, world_size=world, master_addr=addr, master_port=port)


def check_world(node: NodeEnv, layout: Layout) -> None:
    """One launcher per node: WORLD_SIZE must equal the nodes the layout asks for."""
    if node.world_size != layout.num_nodes:
        raise LayoutError(
            f"WORLD_SIZE={node.world_size} but the layout asks for {layout.num_nodes} nodes "
            f"({layout.sampler_nodes} sampler + {layout.trainer_nodes} trainer): submit the job with "
            f"instance_count={layout.num_nodes} and process_count_per_instance=1, or change "
            "--sampler-nodes/--trainer-nodes"
        )


def check_config_fits(
    layout: Layout,
    *,
    sampler_replicas: int,
    sampler_tensor_parallel: int,
    trainer_workers: int,
    trainer_gpus_per_worker: float,
) -> list[str]:
    """Errors (LayoutError) when the run config cannot fit the nodes; returns warnings for idle capacity."""
    warnings: list[str] = []
    if layout.sampler_gpus_per_node > 0:
        need = sampler_replicas * sampler_tensor_parallel
        have = layout.sampler_nodes * layout.sampler_gpus_per_node
        if sampler_tensor_parallel > layout.sampler_gpus_per_node:
            raise LayoutError(
                f"sampler.tensor_parallel_size={sampler_tensor_parallel} exceeds --sampler-gpus-per-node="
                f"{layout.sampler_gpus_per_node}: a replica must fit on one node"
            )
        if need > have:
            raise LayoutError(
                f"sampler.replicas x sampler.tensor_parallel_size = {need} GPUs but the sampler nodes have "
                f"{have} ({layout.sampler_nodes} x {layout.sampler_gpus_per_node}): lower sampler.replicas or "
                "add --sampler-nodes"
            )
        if need < have:
            warnings.append(
                f"sampler uses {need} of {have} sampler GPUs; raise sampler.replicas to use the rest"
            )
    elif sampler_replicas < layout.sampler_nodes:
        warnings.append(
            f"{layout.sampler_nodes} sampler nodes but sampler.replicas={sampler_replicas}"
        )
    if layout.trainer_gpus_per_node > 0:
        if trainer_gpus_per_worker <= 0:
            raise LayoutError(
                f"trainer nodes have {layout.trainer_gpus_per_node} GPUs but pipeline.trainer_gpus_per_worker is "
                "0 (CPU training): set pipeline.trainer_gpus_per_worker: 1"
            )
        need_t = trainer_workers * trainer_gpus_per_worker
        have_t = layout.trainer_nodes * layout.trainer_gpus_per_node
        if need_t > have_t:
            raise LayoutError(
                f"pipeline.num_trainer_workers x pipeline.trainer_gpus_per_worker = {need_t:g} GPUs but the trainer "
                f"nodes have {have_t} ({layout.trainer_nodes} x {layout.trainer_gpus_per_node}): lower "
                "pipeline.num_trainer_workers or add --trainer-nodes"
            )
        if need_t < have_t:
            warnings.append(
                f"trainer uses {need_t:g} of {have_t} trainer GPUs; raise pipeline.num_trainer_workers to use the rest"
            )
    return warnings


def check_run_config(layout: Layout, cfg: Any) -> list[str]:
    """`check_config_fits` for a `trainer.config.RunConfig`."""
    return check_config_fits(
        layout,
        sampler_replicas=cfg.sampler.replicas,
        sampler_tensor_parallel=cfg.sampler.tensor_parallel_size,
        trainer_workers=cfg.pipeline.num_trainer_workers,
        trainer_gpus_per_worker=cfg.pipeline.trainer_gpus_per_worker,
    )


_SET_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*=")


def check_set_override(item: str) -> str:
    """A driver override must look like `section.key=value`; returns it unchanged."""
    if not _SET_RE.match(item):
        raise LayoutError(
            f"--set {item!r}: expected dotted.key=value, e.g. --set trainer.max_steps=100"
        )
    return item
