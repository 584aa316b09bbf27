"""Submit one multi-node GRPO run to Azure ML: `python deploy/submit.py --config CONFIG ...`.

Owns: the command line (flags override the config's `azure:` section), `--dry-run` (print the job
YAML; no credentials, no SSH key: a placeholder key stands in), workspace resolution (`--workspace-config` file or the three flags),
submission with `DefaultAzureCredential`, `--stream`, `--resume JOB`, and the hints printed after
submitting (how to reach the live sampler).
Does not know: how the job is built (deploy.jobspec) or what runs inside it (deploy.launch).
Exit codes: 0 ok, 2 bad flags/config, 1 Azure errors.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python deploy/submit.py`: make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deploy.jobspec import (
    DEFAULT_SHM_SIZE,
    JobOptions,
    JobSpecError,
    check_options,
    check_receive_memory,
    driver_overrides,
    is_remote,
)

EXIT_USAGE = 2

# Flags that may also come from the config's `azure:` section (same names, underscores).
AZURE_KEYS = (
    "sampler_nodes", "trainer_nodes", "sampler_gpus_per_node", "trainer_gpus_per_node", "instance_type",
    "compute", "model", "data", "experiment", "datastore", "environment", "shm_size", "ssh_public_key",
    "subscription", "resource_group", "workspace", "workspace_config",
)  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    # Longer than most functions on purpose: one flat list of the command's options, each with
    # its help, reads better than the same list split over helpers.
    p = argparse.ArgumentParser(
        prog="python deploy/submit.py",
        description="Submit ONE multi-node Azure ML job: N sampler nodes + M trainer nodes.",
    )
    p.add_argument(
        "--config",
        required=True,
        help="Run YAML (its `azure:` section gives defaults for these flags).",
    )
    lay = p.add_argument_group("layout")
    lay.add_argument("--sampler-nodes", type=int, help="Nodes serving the sampler (default 1).")
    lay.add_argument("--sampler-gpus-per-node", type=int, help="GPUs per sampler node (default 8).")
    lay.add_argument("--trainer-nodes", type=int, help="Nodes training (default 1).")
    lay.add_argument("--trainer-gpus-per-node", type=int, help="GPUs per trainer node (default 8).")
    lay.add_argument(
        "--instance-type", help="VM size for serverless compute (default Standard_ND96isr_H100_v5)."
    )
    lay.add_argument("--compute", help="An AML compute cluster name (instead of serverless).")
    lay.add_argument("--shm-size", help=f"Container /dev/shm (default {DEFAULT_SHM_SIZE}).")
    io = p.add_argument_group("inputs and outputs")
    io.add_argument(
        "--model",
        help="Model: azureml:NAME:VERSION, an azureml:// or https URI, or a local HF folder.",
    )
    io.add_argument(
        "--model-type", default="auto", help="auto | custom_model | mlflow_model | uri_folder."
    )
    io.add_argument(
        "--data", help="Folder with train.jsonl/validation.jsonl (local, azureml: or URI)."
    )
    io.add_argument(
        "--datastore", help="Datastore of the checkpoint folder (default workspaceblobstore)."
    )
    io.add_argument(
        "--checkpoint-path", help="Explicit azureml://datastores/.../paths/... checkpoint folder."
    )
    io.add_argument(
        "--resume", metavar="JOB_NAME", help="Continue JOB_NAME's run from its checkpoints."
    )
    io.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="Driver config override (repeatable), e.g. trainer.max_steps=500.")  # fmt: skip
    io.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="Extra job environment variable.",
    )
    job = p.add_argument_group("job")
    job.add_argument(
        "--name", help="Job name (default grpo-<time>-<random>; also names the checkpoint folder)."
    )
    job.add_argument(
        "--experiment", help="Experiment name (default: mlflow.experiment_name of the config)."
    )
    job.add_argument(
        "--environment",
        help="Use a registered environment azureml:NAME:VERSION instead of building.",
    )
    job.add_argument(
        "--ssh-public-key",
        help="Public key for the job's SSH service (default ~/.ssh/id_ed25519.pub).",
    )
    job.add_argument(
        "--no-ssh",
        action="store_true",
        help="No SSH service (the live sampler is then unreachable).",
    )
    job.add_argument("--timeout", type=int, help="Job timeout in seconds.")
    ws = p.add_argument_group("workspace")
    ws.add_argument(
        "--workspace-config", help="config.json of the workspace (as downloaded from the portal)."
    )
    ws.add_argument("--subscription", help="Subscription id.")
    ws.add_argument("--resource-group", help="Resource group.")
    ws.add_argument("--workspace", help="Workspace name.")
    p.add_argument(
        "--dry-run", action="store_true", help="Print the job YAML and exit; no credentials needed."
    )
    p.add_argument("--stream", action="store_true", help="Stream the job's logs until it ends.")
    return p


def _kv(items: Sequence[str], flag: str) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise JobSpecError(f"{flag} {item!r}: expected KEY=VALUE")
        out[key] = value
    return out


def _default_ssh_key() -> str | None:
    for name in ("id_ed25519.pub", "id_rsa.pub", "id_ecdsa.pub"):
        path = Path.home() / ".ssh" / name
        if path.is_file():
            return str(path)
    return None


def resolve(args: argparse.Namespace) -> tuple[JobOptions, dict[str, Any], Any]:
    """Merge flags over the config's `azure:` section; returns (options, workspace settings, RunConfig)."""
    cfg = _run_config(args.config, [])
    azure = dict(cfg.azure or {})
    unknown = sorted(set(azure) - set(AZURE_KEYS))
    if unknown:
        raise JobSpecError(
            f"{args.config}: unknown key(s) azure.{', azure.'.join(unknown)}; known: {', '.join(AZURE_KEYS)}"
        )

    def pick(key: str, default: Any = None) -> Any:
        value = getattr(args, key, None)
        return value if value is not None else azure.get(key, default)

    model = pick("model")
    if model is None and cfg.model.name_or_path != "tiny":
        model = (
            cfg.model.name_or_path
        )  # a local folder or URI the driver would read: ship it as the input
    data = pick("data")
    if data is None and cfg.data.source == "jsonl":
        data = cfg.data.path
    if model and not is_remote(model) and not Path(model).is_dir():
        raise JobSpecError(
            f"model {model!r} (--model or model.name_or_path): not a local folder nor an azureml:/https URI"
        )
    opts = JobOptions(
        config=args.config,
        sampler_nodes=pick("sampler_nodes", 1),
        trainer_nodes=pick("trainer_nodes", 1),
        sampler_gpus_per_node=pick("sampler_gpus_per_node", 8),
        trainer_gpus_per_node=pick("trainer_gpus_per_node", 8),
        instance_type=pick("instance_type"),
        compute=pick("compute"),
        model=model,
        model_type=args.model_type,
        data=data,
        experiment=pick("experiment", cfg.mlflow.experiment_name),
        name=args.name,
        resume=args.resume,
        checkpoint_path=args.checkpoint_path,
        datastore=pick("datastore", "workspaceblobstore"),
        environment=pick("environment"),
        shm_size=pick("shm_size", DEFAULT_SHM_SIZE),
        ssh_public_key=None if args.no_ssh else (pick("ssh_public_key") or _default_ssh_key()),
        ssh=not args.no_ssh,
        overrides=list(args.overrides),
        env=_kv(args.env, "--env"),
        timeout_s=args.timeout,
    )
    workspace = {
        k: pick(k) for k in ("subscription", "resource_group", "workspace", "workspace_config")
    }
    # What the driver will run with: the YAML plus every --set the job passes it, validated now.
    sets = driver_overrides(opts, has_model=bool(opts.model), has_data=bool(opts.data))
    return opts, workspace, _run_config(args.config, sets)


def _run_config(path: str, sets: list[str]) -> Any:
    """The RunConfig of `path` with `--set` items applied, validated as the driver does."""
    from trainer.config import ConfigError
    from trainer.config_loading import load_config, parse_overrides

    try:
        return load_config(path, parse_overrides(sets))
    except ConfigError as e:
        raise JobSpecError(str(e)) from None


def ml_client(workspace: dict[str, Any], credential: Any = None) -> Any:
    """MLClient from a workspace config file or the three flags; DefaultAzureCredential unless given one."""
    from azure.ai.ml import MLClient

    if credential is None:
        from azure.identity import DefaultAzureCredential

        credential = DefaultAzureCredential()
    if all(workspace.get(k) for k in ("subscription", "resource_group", "workspace")):
        return MLClient(
            credential,
            workspace["subscription"],
            workspace["resource_group"],
            workspace["workspace"],
        )
    if (
        workspace.get("workspace_config")
        or Path("config.json").is_file()
        or Path(".azureml/config.json").is_file()
    ):
        return MLClient.from_config(credential, path=workspace.get("workspace_config"))
    raise JobSpecError(
        "no workspace: pass --workspace-config config.json (downloaded from the portal), or --subscription, "
        "--resource-group and --workspace (or put them in the config's azure: section)"
    )


def placeholder_ssh_key(folder: str | Path) -> str:
    """A throwaway OpenSSH ed25519 public key (random bytes; no private key exists) for a dry-run
    on a machine without a key, so the printed job shows the SSH service it would have."""
    import base64
    import struct

    def field(b: bytes) -> bytes:
        return struct.pack(">I", len(b)) + b

    blob = field(b"ssh-ed25519") + field(os.urandom(32))
    path = Path(folder) / "dry_run_placeholder.pub"
    path.write_text(f"ssh-ed25519 {base64.b64encode(blob).decode()} grpo-dry-run-placeholder\n")
    return str(path)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="grpo-submit-") as tmp:
        return _main(args, tmp)


def _main(args: argparse.Namespace, tmp: str) -> int:
    from deploy.jobspec import build_job, checkpoint_path, job_yaml

    try:
        opts, workspace, cfg = resolve(args)
        if args.dry_run and opts.ssh and not opts.ssh_public_key:
            opts.ssh_public_key = placeholder_ssh_key(tmp)
            print(
                "submit: note: no SSH public key (~/.ssh/id_ed25519.pub): the dry-run shows a "
                "placeholder SSH key; to submit, create one (ssh-keygen -t ed25519) and pass "
                "--ssh-public-key, or --no-ssh",
                file=sys.stderr,
            )
        from deploy.layout import LayoutError, check_run_config

        try:
            warnings = check_options(opts) + check_run_config(opts.layout, cfg)
            check_receive_memory(opts, cfg)
        except LayoutError as e:
            raise JobSpecError(str(e)) from None
        for w in warnings:
            print(f"submit: warning: {w}", file=sys.stderr)
        client = None if args.dry_run else ml_client(workspace)
    except JobSpecError as e:
        print(f"submit: error: {e}", file=sys.stderr)
        return EXIT_USAGE

    if client is not None and opts.resume and not opts.checkpoint_path:
        # Honour where the previous job really wrote (it may have used --checkpoint-path).
        previous = client.jobs.get(opts.resume)
        prev_out = (previous.outputs or {}).get("checkpoints")
        if prev_out is not None and getattr(prev_out, "path", None):
            opts.checkpoint_path = prev_out.path

    token = Path(tmp) / "ray_auth_token"
    token.touch(mode=0o600)
    token.write_text(os.urandom(32).hex(), encoding="utf-8")
    job = build_job(opts, str(token))
    if args.dry_run:
        print(job_yaml(job), end="")
        print(f"# checkpoints: {checkpoint_path(opts, job.name)}", file=sys.stderr)
        return 0
    try:
        created = client.jobs.create_or_update(job)
    except (
        Exception
    ) as e:  # Azure SDK errors carry the service's message; show it without a traceback
        print(f"submit: Azure rejected the job: {e}", file=sys.stderr)
        return 1
    print(f"submitted {created.name}: {getattr(created, 'studio_url', '')}")
    print(f"checkpoints: {checkpoint_path(opts, created.name)}")
    print(
        f"live sampler (once training runs): python deploy/connect.py --job {created.name} [workspace flags]"
    )
    print(
        f"resume later: python deploy/submit.py --config {args.config} --resume {created.name} ..."
    )
    if args.stream:
        client.jobs.stream(created.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
