"""What the launcher (deploy/) and the driver agree on about the cluster; deploy imports it from
here, the trainer never imports deploy.

Owns: the Ray custom resource names the driver places roles by (the launcher gives each node
its role's resource), and the per-node torch/MPI variables no role process may inherit.
Does not know: Ray, AML, how roles are started.
"""

from __future__ import annotations

from collections.abc import Mapping

# The driver places sampler replicas and trainer processes by these Ray custom resources.
SAMPLER_RESOURCE = "grpo_sampler"
TRAINER_RESOURCE = "grpo_trainer"

# Variables that torchrun / AML's PyTorch distribution / MPI set for *one process per node*. Left in
# place they make DeepSpeed or Ray Train believe they are rank NODE_RANK of a WORLD_SIZE-process
# group (env:// init), so every role process must start without them.
TORCH_ENV_VARS: tuple[str, ...] = (
    "RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
    "LOCAL_WORLD_SIZE",
    "NODE_RANK",
    "GROUP_RANK",
    "GROUP_WORLD_SIZE",
    "ROLE_RANK",
    "ROLE_NAME",
    "ROLE_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "TORCH_DISTRIBUTED_INIT_METHOD",
    "PMI_RANK",
    "PMI_SIZE",
)
TORCH_ENV_PREFIXES: tuple[str, ...] = ("TORCHELASTIC_", "OMPI_COMM_WORLD_", "PMIX_RANK")


def scrub_torch_env(env: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
    """A copy of `env` without the per-node torch/MPI variables, and the names removed (sorted)."""
    clean: dict[str, str] = {}
    removed: list[str] = []
    for key, value in env.items():
        if key in TORCH_ENV_VARS or key.startswith(TORCH_ENV_PREFIXES):
            removed.append(key)
        else:
            clean[key] = value
    return clean, sorted(removed)
