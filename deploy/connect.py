"""Reach the live sampler of a running job: `python deploy/connect.py --job NAME [--run]`.

Owns: finding the sampler's URL and API-key file (MLflow params `sampler_urls`,
`sampler_api_key_file` that the driver logs to the job's run; the AML run id is the job name),
finding the job's SSH service endpoint, and building the `ssh -L` tunnel command (printed, or run
with `--run`). The sampler listens on a sampler node's private IP; only the tunnel reaches it.
Does not know: how the job was built, the sampler's API. azure/mlflow imported inside functions.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


class ConnectError(ValueError):
    """Not enough information to build the tunnel; the message says what to pass."""


def parse_sampler_urls(value: str) -> list[str]:
    """`sampler_urls` as logged: a JSON list or a comma-separated string."""
    value = value.strip()
    urls = (
        json.loads(value) if value.startswith("[") else [u for u in value.split(",") if u.strip()]
    )
    urls = [str(u).strip() for u in urls]
    for u in urls:
        parts = urlsplit(u)
        if parts.scheme not in ("http", "https") or not parts.hostname or not parts.port:
            raise ConnectError(f"sampler URL {u!r} is not http(s)://host:port")
    if not urls:
        raise ConnectError("sampler_urls is empty: has the driver started the sampler yet?")
    return urls


def parse_ssh_endpoint(endpoint: str) -> tuple[str, int]:
    """`ssh://host:port` or `host:port` (AML's SSH service endpoint) -> (host, port)."""
    raw = endpoint if "://" in endpoint else f"ssh://{endpoint}"
    parts = urlsplit(raw)
    if not parts.hostname:
        raise ConnectError(f"SSH endpoint {endpoint!r} has no host")
    return parts.hostname, parts.port or 22


def tunnel_command(
    sampler_url: str,
    ssh_host: str,
    ssh_port: int,
    local_port: int,
    private_key: str | None = None,
    user: str = "root",
) -> list[str]:
    """`ssh -N -L local_port:sampler_host:sampler_port user@ssh_host -p ssh_port`."""
    target = urlsplit(sampler_url)
    cmd = ["ssh", "-N", "-L", f"{local_port}:{target.hostname}:{target.port}", "-p", str(ssh_port)]
    if private_key:
        cmd += ["-i", private_key]
    cmd += ["-o", "ExitOnForwardFailure=yes", "-o", "ServerAliveInterval=30", f"{user}@{ssh_host}"]
    return cmd


def lookup(client, job: str) -> tuple[str | None, str | None, str | None]:
    """(sampler_urls, sampler_api_key_file, ssh endpoint) from the job's MLflow run and services."""
    import mlflow

    ws = client.workspaces.get(client.workspace_name)
    params = mlflow.MlflowClient(tracking_uri=ws.mlflow_tracking_uri).get_run(job).data.params
    services = client.jobs.show_services(job, node_index=0) or {}
    ssh = services.get("ssh") or services.get("SSH")
    return (
        params.get("sampler_urls"),
        params.get("sampler_api_key_file"),
        getattr(ssh, "endpoint", None),
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python deploy/connect.py", description="SSH tunnel to a job's live sampler."
    )
    p.add_argument("--job", required=True, help="The AML job name (printed by submit.py).")
    p.add_argument("--local-port", type=int, default=8000, help="Local end of the tunnel.")
    p.add_argument("--private-key", help="Private key matching the job's --ssh-public-key.")
    p.add_argument(
        "--sampler-url", help="Skip the MLflow lookup: the sampler URL (http://10.0.0.4:8000)."
    )
    p.add_argument(
        "--ssh-endpoint", help="Skip the service lookup: host:port of the job's SSH service."
    )
    p.add_argument("--run", action="store_true", help="Run the tunnel instead of printing it.")
    for flag in ("--workspace-config", "--subscription", "--resource-group", "--workspace"):
        p.add_argument(flag)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    key_file = None
    try:
        urls_raw, endpoint = args.sampler_url, args.ssh_endpoint
        if not (urls_raw and endpoint):
            from deploy.submit import ml_client

            client = ml_client(
                {
                    k: getattr(args, k)
                    for k in ("subscription", "resource_group", "workspace", "workspace_config")
                }
            )
            found_urls, key_file, found_ep = lookup(client, args.job)
            urls_raw, endpoint = urls_raw or found_urls, endpoint or found_ep
        if not urls_raw:
            raise ConnectError(
                f"job {args.job} has no sampler_urls param yet (the driver logs it once the sampler is up)"
            )
        if not endpoint:
            raise ConnectError(
                f"job {args.job} exposes no SSH endpoint (submitted with --no-ssh, or not running); inside the job use "
                f"`az ml job connect-ssh --name {args.job} --node-index 0` and curl the sampler from there"
            )
        urls = parse_sampler_urls(urls_raw)
        host, port = parse_ssh_endpoint(endpoint)
    except Exception as e:  # noqa: BLE001 - Azure/MLflow errors become one clear line
        print(f"connect: error: {e}", file=sys.stderr)
        return 2
    cmd = tunnel_command(urls[0], host, port, args.local_port, args.private_key)
    print(f"sampler: {urls[0]} -> http://127.0.0.1:{args.local_port}/v1 (OpenAI-compatible)")
    if key_file:
        print(
            f"API key: in {key_file} on the sampler node (read it over `az ml job connect-ssh --name {args.job}`)"
        )
    print(shlex.join(cmd))
    if args.run:
        return subprocess.call(cmd)
    return 0


if __name__ == "__main__":
    sys.exit(main())
