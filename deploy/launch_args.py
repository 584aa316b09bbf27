"""The per-node launcher's command line (`python -m deploy.launch ...`).

Owns: its flags, their defaults and help, and the split at `--` between launcher flags and the
driver command. Does not know: what the launcher does with them (deploy/launch.py).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m deploy.launch",
        description="Per-node launcher: Ray head/worker by node rank, the driver on node 0. "
        "Anything after `--` replaces the default driver command.",
    )
    p.add_argument(
        "--config", help="Run YAML; validated against the layout and passed to the default driver."
    )
    p.add_argument(
        "--sampler-nodes", type=int, required=True, help="N: nodes 0..N-1 serve the sampler."
    )
    p.add_argument(
        "--trainer-nodes", type=int, help="M: the remaining nodes train (default: WORLD_SIZE - N)."
    )
    p.add_argument(
        "--sampler-gpus-per-node", type=int, default=0, help="GPUs per sampler node (0: CPU node)."
    )
    p.add_argument(
        "--trainer-gpus-per-node", type=int, default=0, help="GPUs per trainer node (0: CPU node)."
    )
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="Driver config override."
    )
    p.add_argument("--resume", action="store_true", help="Pass --resume to the default driver.")
    p.add_argument(
        "--output-dir", help="trainer.output_dir for the default driver (the checkpoint output)."
    )
    p.add_argument(
        "--model-output",
        help="Folder for the final MLflow model (exported to the driver as GRPO_MODEL_OUTPUT_DIR; if the driver "
        "leaves it empty, an MLflow model found under --output-dir is copied there).",
    )
    ray = p.add_argument_group("Ray")
    ray.add_argument(
        "--ray-port", type=int, default=6379, help="Port of the Ray head (GCS) on node 0."
    )
    ray.add_argument(
        "--node-ip",
        help="This node's address for Ray (default: Ray detects it; node 0: MASTER_ADDR).",
    )
    ray.add_argument("--num-cpus", type=int, help="CPUs this node gives Ray (default: all).")
    ray.add_argument(
        "--object-store-memory",
        type=int,
        help="Ray object store bytes (default: Ray's 30%% of RAM).",
    )
    ray.add_argument(
        "--ray-temp-dir", help="Ray's temp/session dir for this node (default: /tmp/ray)."
    )
    ray.add_argument(
        "--dashboard-agent-port",
        type=int,
        help="Ray dashboard agent port (distinct per node on one host).",
    )
    ray.add_argument(
        "--ray-auth",
        choices=["token", "disabled"],
        default="token",
        help="Ray token authentication (default token; the token comes from --ray-auth-token-file or RAY_AUTH_TOKEN).",
    )
    ray.add_argument(
        "--ray-auth-token-file",
        help="File holding the cluster's Ray auth token (same on every node).",
    )
    t = p.add_argument_group("timeouts (seconds)")
    t.add_argument("--join-timeout", type=float, default=900, help="Wait for all nodes to join.")
    t.add_argument(
        "--ray-start-timeout", type=float, default=300, help="Wait for this node's Ray to start."
    )
    t.add_argument(
        "--heartbeat-timeout",
        type=float,
        default=60,
        help="A worker gives node 0 up after this silence.",
    )
    t.add_argument(
        "--driver-grace", type=float, default=30, help="SIGTERM-to-SIGKILL grace for the driver."
    )
    return p


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    """Split `argv` at `--`: launcher flags, then an optional driver command."""
    argv = list(argv)
    driver: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, driver = argv[:i], argv[i + 1 :]
    return build_parser().parse_args(argv), driver
