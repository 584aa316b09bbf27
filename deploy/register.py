"""After training: register the job's MLflow model and serve it from a managed online endpoint.

`python deploy/register.py --job NAME [--model-name grpo-policy] [--endpoint grpo-ep] [--dry-run]`
Owns: the Model (type mlflow_model, from the job's `model` output), the ManagedOnlineEndpoint
(key auth) and the ManagedOnlineDeployment (MLflow no-code deployment: AML builds the scoring
server from the MLflow model, so no scoring script or environment), and their creation in order.
`--dry-run` prints the three specs as YAML, no credentials.
Does not know: training; how the MLflow model was written (the driver / launcher).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

_NAME_RE = re.compile(r"^[a-zA-Z][a-zA-Z0-9-]{1,30}[a-zA-Z0-9]$")  # AML endpoint naming rule


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python deploy/register.py", description="Register + deploy a job's model."
    )
    p.add_argument("--job", required=True, help="The finished training job's name.")
    p.add_argument("--output", default="model", help="The job output holding the MLflow model.")
    p.add_argument("--model-name", default="grpo-policy")
    p.add_argument(
        "--endpoint",
        default="grpo-policy-ep",
        help="Online endpoint name (3-32 chars, letters/digits/-).",
    )
    p.add_argument("--deployment", default="blue")
    p.add_argument("--instance-type", default="Standard_NC24ads_A100_v4", help="Serving VM size.")
    p.add_argument("--instance-count", type=int, default=1)
    p.add_argument("--dry-run", action="store_true", help="Print the specs; no credentials.")
    for flag in ("--workspace-config", "--subscription", "--resource-group", "--workspace"):
        p.add_argument(flag)
    return p


def build_specs(args: argparse.Namespace) -> tuple[Any, Any, Any]:
    """(Model, ManagedOnlineEndpoint, ManagedOnlineDeployment) for the job's MLflow model."""
    from azure.ai.ml.entities import ManagedOnlineDeployment, ManagedOnlineEndpoint, Model

    model = Model(
        name=args.model_name,
        type="mlflow_model",
        path=f"azureml://jobs/{args.job}/outputs/{args.output}",
        description=f"GRPO policy trained by job {args.job}",
        tags={"job": args.job},
    )
    endpoint = ManagedOnlineEndpoint(name=args.endpoint, auth_mode="key", description="GRPO policy")
    deployment = ManagedOnlineDeployment(
        name=args.deployment,
        endpoint_name=args.endpoint,
        model=model,
        instance_type=args.instance_type,
        instance_count=args.instance_count,
    )
    return model, endpoint, deployment


def specs_yaml(specs: Sequence[Any]) -> str:
    import json

    import yaml

    docs = [json.loads(json.dumps(s._to_dict(), default=str)) for s in specs]
    return yaml.safe_dump_all(docs, sort_keys=False)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not _NAME_RE.match(args.endpoint):
        print(f"register: error: --endpoint {args.endpoint!r}: 3-32 letters, digits or '-', starting with a letter",
              file=sys.stderr)  # fmt: skip
        return 2
    if args.instance_count < 1:
        print("register: error: --instance-count must be >= 1", file=sys.stderr)
        return 2
    model, endpoint, deployment = build_specs(args)
    if args.dry_run:
        print(specs_yaml([model, endpoint, deployment]), end="")
        return 0
    from deploy.submit import ml_client

    try:
        client = ml_client(
            {
                k: getattr(args, k)
                for k in ("subscription", "resource_group", "workspace", "workspace_config")
            }
        )
        registered = client.models.create_or_update(model)
        print(f"registered model {registered.name}:{registered.version}")
        client.online_endpoints.begin_create_or_update(endpoint).result()
        deployment.model = f"azureml:{registered.name}:{registered.version}"
        client.online_deployments.begin_create_or_update(deployment).result()
        endpoint.traffic = {args.deployment: 100}
        client.online_endpoints.begin_create_or_update(endpoint).result()
    except Exception as e:  # noqa: BLE001 - Azure errors become one clear line
        print(f"register: error: {e}", file=sys.stderr)
        return 1
    print(
        f"endpoint {args.endpoint} serves {registered.name}:{registered.version} ({args.deployment}, 100% traffic)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
