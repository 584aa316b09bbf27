"""The Azure ML command job of one GRPO run: options, their checks, and the azure-ai-ml v2 job.

Owns: `JobOptions` (what `deploy/submit.py` collects from flags and the config's `azure:` section),
`check_options` (bad combinations -> `JobSpecError` naming the flag and the fix), the job's
command line (the per-node launcher), environment variables (NCCL/InfiniBand for ND H100 v5),
inputs/outputs (model, data, config, Ray token; checkpoints on a fixed datastore path, MLflow model),
the Docker build-context environment and the SSH service; `build_job` and `job_yaml`.
Does not know: credentials or workspaces (submit.py), what the driver does with its flags.
azure-ai-ml is imported inside functions only.
"""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploy.layout import Layout, LayoutError, check_set_override

REPO = Path(__file__).resolve().parents[1]
ENVIRONMENT_DIR = REPO / "environment"
DEFAULT_INSTANCE_TYPE = "Standard_ND96isr_H100_v5"
DEFAULT_SHM_SIZE = "256g"  # AML's default is 2g: too small for NCCL, Ray's object store and vLLM
CHECKPOINT_ROOT = "grpo-service/checkpoints"

# GPUs per VM of the sizes this service targets (Azure VM docs); unknown sizes are not checked.
INSTANCE_GPUS: dict[str, int] = {
    "standard_nd96isr_h100_v5": 8,
    "standard_nd96isr_h200_v5": 8,
    "standard_nd96asr_v4": 8,
    "standard_nd96amsr_a100_v4": 8,
    "standard_nc80adis_h100_v5": 2,
    "standard_nc40ads_h100_v5": 1,
    "standard_nc96ads_a100_v4": 4,
    "standard_nc48ads_a100_v4": 2,
    "standard_nc24ads_a100_v4": 1,
}

# GPU memory (GiB) of one GPU of those sizes (Azure VM docs): the weight-receive check below.
INSTANCE_GPU_MEMORY_GIB: dict[str, int] = {
    "standard_nd96isr_h100_v5": 80,
    "standard_nd96isr_h200_v5": 141,
    "standard_nd96asr_v4": 40,
    "standard_nd96amsr_a100_v4": 80,
    "standard_nc80adis_h100_v5": 94,
    "standard_nc40ads_h100_v5": 94,
    "standard_nc96ads_a100_v4": 80,
    "standard_nc48ads_a100_v4": 80,
    "standard_nc24ads_a100_v4": 80,
}
# Beside vLLM's share: CUDA context, NCCL's own buffers, allocator slack (measured elsewhere as 1-2 GiB).
SAMPLER_GPU_HEADROOM_GIB = 2.0

# NCCL over InfiniBand on ND H100 v5 (8x H100, 8x 400 Gb/s NDR, eth0 for TCP bootstrap).
NCCL_ENV: dict[str, str] = {
    "NCCL_DEBUG": "WARN",
    "NCCL_IB_DISABLE": "0",  # some base images ship NCCL_IB_DISABLE=1 for non-RDMA SKUs
    "NCCL_IB_PCI_RELAXED_ORDERING": "1",
    "NCCL_SOCKET_IFNAME": "eth0",  # bootstrap/TCP fallback on the VNet NIC, never docker0/lo
    "CUDA_DEVICE_ORDER": "PCI_BUS_ID",  # GPU i <-> NIC i affinity as the topology expects
    "TORCH_NCCL_ASYNC_ERROR_HANDLING": "1",  # a hung collective aborts instead of hanging the job
    "UCX_TLS": "rc",
}
BASE_ENV: dict[str, str] = {
    "PYTHONUNBUFFERED": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "RAY_USAGE_STATS_ENABLED": "0",
    "TOKENIZERS_PARALLELISM": "false",
}

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,254}$")
_SIZE_RE = re.compile(r"^[1-9][0-9]*[kmgKMG]?$")
_ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class JobSpecError(ValueError):
    """Bad flags for a job; the message names the flag and the fix."""


@dataclass
class JobOptions:
    config: str
    sampler_nodes: int = 1
    trainer_nodes: int = 1
    sampler_gpus_per_node: int = 8
    trainer_gpus_per_node: int = 8
    instance_type: str | None = None
    compute: str | None = None
    model: str | None = None
    model_type: str = "auto"
    data: str | None = None
    experiment: str = "grpo-service"
    name: str | None = None
    resume: str | None = None
    checkpoint_path: str | None = None
    datastore: str = "workspaceblobstore"
    environment: str | None = None
    shm_size: str = DEFAULT_SHM_SIZE
    ssh_public_key: str | None = None
    ssh: bool = True
    overrides: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    timeout_s: int | None = None
    ray_token_file: str | None = None

    @property
    def layout(self) -> Layout:
        return Layout(
            self.sampler_nodes,
            self.trainer_nodes,
            self.sampler_gpus_per_node,
            self.trainer_gpus_per_node,
        )


def new_job_name() -> str:
    """A job name that is also the checkpoint folder name (so --resume can find it offline)."""
    return f"grpo-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def is_remote(path: str) -> bool:
    return path.startswith(("azureml:", "https://", "http://", "wasbs://", "abfss://", "adl://"))


def model_input_type(model: str, model_type: str) -> str:
    """custom_model for registered models (`azureml:name:version`), else a uri_folder of HF files."""
    if model_type != "auto":
        return model_type
    if model.startswith("azureml:") and not model.startswith("azureml://"):
        return "custom_model"
    if model.startswith("azureml://") and "/models/" in model:
        return "custom_model"
    return "uri_folder"


def checkpoint_path(opts: JobOptions, job_name: str) -> str:
    """A datastore path named after the run, outside the job's own output folder, so it survives retries
    and a later `--resume JOB` writes to the same place."""
    if opts.checkpoint_path:
        return opts.checkpoint_path
    run = opts.resume or job_name
    return f"azureml://datastores/{opts.datastore}/paths/{CHECKPOINT_ROOT}/{run}/"


def check_options(opts: JobOptions) -> list[str]:
    """Raise JobSpecError on a bad combination; return warnings."""
    try:
        layout = opts.layout
    except LayoutError as e:
        raise JobSpecError(str(e)) from None
    warnings: list[str] = []
    if not Path(opts.config).is_file():
        raise JobSpecError(f"--config {opts.config}: no such file")
    if opts.compute and opts.instance_type:
        raise JobSpecError(
            "--compute and --instance-type both given: a compute cluster fixes its VM size; pass --compute NAME "
            "for a cluster, or only --instance-type for serverless compute"
        )
    itype = (opts.instance_type or DEFAULT_INSTANCE_TYPE).lower()
    gpus = INSTANCE_GPUS.get(itype)
    if gpus is not None and not opts.compute:
        for flag, value in (
            ("--sampler-gpus-per-node", layout.sampler_gpus_per_node),
            ("--trainer-gpus-per-node", layout.trainer_gpus_per_node),
        ):
            if value > gpus:
                raise JobSpecError(
                    f"{flag}={value} but {opts.instance_type or DEFAULT_INSTANCE_TYPE} has {gpus} GPUs"
                )
    if opts.model_type not in ("auto", "custom_model", "mlflow_model", "uri_folder"):
        raise JobSpecError(
            f"--model-type {opts.model_type!r}: choose auto, custom_model, mlflow_model or uri_folder"
        )
    for what, value in (("--model", opts.model), ("--data", opts.data)):
        if value and not is_remote(value) and not Path(value).is_dir():
            raise JobSpecError(f"{what} {value}: not a local folder nor an azureml:/https URI")
    for what, value in (
        ("--name", opts.name),
        ("--resume", opts.resume),
        ("--experiment", opts.experiment),
    ):
        if value is not None and not _NAME_RE.match(value):
            raise JobSpecError(
                f"{what} {value!r}: use letters, digits, '-' and '_' (start with a letter or digit)"
            )
    if opts.resume and opts.name and opts.resume == opts.name:
        raise JobSpecError("--resume names the job being submitted: give the previous job's name")
    if opts.checkpoint_path and not opts.checkpoint_path.startswith("azureml://"):
        raise JobSpecError(
            "--checkpoint-path must be an azureml://datastores/<store>/paths/<folder>/ URI"
        )
    if not _SIZE_RE.match(opts.shm_size):
        raise JobSpecError(f"--shm-size {opts.shm_size!r}: give a size like 256g")
    if opts.ssh:
        if not opts.ssh_public_key:
            raise JobSpecError(
                "the SSH service (to reach the live sampler) needs a public key: pass --ssh-public-key ~/.ssh/id_ed25519.pub "
                "(create one with ssh-keygen -t ed25519), or --no-ssh"
            )
        key = Path(opts.ssh_public_key).expanduser()
        if not key.is_file():
            raise JobSpecError(f"--ssh-public-key {opts.ssh_public_key}: no such file")
        text = key.read_text(encoding="utf-8", errors="replace").strip()
        if not text.startswith(("ssh-", "ecdsa-", "sk-")) or "PRIVATE KEY" in text:
            raise JobSpecError(
                f"--ssh-public-key {opts.ssh_public_key}: not an OpenSSH public key (the .pub file)"
            )
    for item in opts.overrides:
        try:
            check_set_override(item)
        except LayoutError as e:
            raise JobSpecError(str(e)) from None
    for key in opts.env:
        if not _ENV_KEY_RE.match(key):
            raise JobSpecError(f"--env {key}=...: not a valid environment variable name")
    if opts.environment is None and not (ENVIRONMENT_DIR / "Dockerfile").is_file():
        raise JobSpecError(
            f"{ENVIRONMENT_DIR}/Dockerfile is missing: pass --environment azureml:NAME:VERSION"
        )
    if layout.sampler_gpus_per_node == 0 or layout.trainer_gpus_per_node == 0:
        warnings.append(
            "a role has 0 GPUs per node: that role runs on CPU (a smoke test, not a training run)"
        )
    return warnings


def check_receive_memory(opts: JobOptions, cfg: Any) -> None:
    """A sampler GPU must fit the weight-receive buffers beside vLLM's share of its memory."""
    if opts.compute and not opts.instance_type:
        return  # a cluster's VM size is not known here
    mem = INSTANCE_GPU_MEMORY_GIB.get((opts.instance_type or DEFAULT_INSTANCE_TYPE).lower())
    s, p = cfg.sampler, cfg.pipeline
    if mem is None or opts.sampler_gpus_per_node == 0 or p.weight_sync == "filesystem":
        return
    left = (1 - s.gpu_memory_utilization) * mem
    need = s.weight_sync_buffers * p.weight_sync_bucket_mb / 1024 + SAMPLER_GPU_HEADROOM_GIB
    if need > left:
        raise JobSpecError(
            f"sampler.gpu_memory_utilization {s.gpu_memory_utilization} leaves {left:.1f} GiB of "
            f"a {mem} GiB GPU, but receiving weights needs {need:.1f} GiB "
            f"(sampler.weight_sync_buffers {s.weight_sync_buffers} x pipeline.weight_sync_bucket_mb "
            f"{p.weight_sync_bucket_mb} + {SAMPLER_GPU_HEADROOM_GIB:.0f} GiB for CUDA/NCCL): lower "
            "sampler.gpu_memory_utilization or pipeline.weight_sync_bucket_mb"
        )


def driver_overrides(opts: JobOptions, *, has_model: bool, has_data: bool) -> list[str]:
    """The driver's `--set` items in the job: the inputs' bindings, then the user's overrides.
    A user's override of a bound key is refused: it would silently replace the job input (the
    nodes would look for a path of the submitting machine)."""
    bound = {}
    if has_model:
        bound["model.name_or_path"] = ("${{inputs.model}}", "--model")
    if has_data:
        bound["data.source"] = ("jsonl", "--data")
        bound["data.path"] = ("${{inputs.data}}", "--data")
    for item in opts.overrides:
        key = item.split("=", 1)[0].strip()
        if key in bound:
            flag = bound[key][1]
            raise JobSpecError(
                f"--set {key}: set by {flag} (a job input the nodes mount); change {flag} "
                f"instead, or drop {flag} to take {key} from the YAML or --set"
            )
    return [f"{k}={v}" for k, (v, _) in bound.items()] + list(opts.overrides)


def launcher_command(opts: JobOptions, *, has_model: bool, has_data: bool) -> str:
    """The job's command: the per-node launcher with the layout and the driver's overrides."""
    lay = opts.layout
    parts = [
        "python -m deploy.launch --config ${{inputs.config}}",
        f"--sampler-nodes {lay.sampler_nodes} --trainer-nodes {lay.trainer_nodes}",
        f"--sampler-gpus-per-node {lay.sampler_gpus_per_node} --trainer-gpus-per-node {lay.trainer_gpus_per_node}",
        "--output-dir ${{outputs.checkpoints}} --model-output ${{outputs.model}}",
        "--ray-auth-token-file ${{inputs.ray_token}}",
    ]
    sets = driver_overrides(opts, has_model=has_model, has_data=has_data)
    parts += [f"--set {_quote(s)}" for s in sets]
    if opts.resume:
        parts.append("--resume")
    return " ".join(parts)


def _quote(item: str) -> str:
    # `${{...}}` bindings must stay unquoted-visible to AML; shell-quote only what needs it.
    return (
        item
        if re.fullmatch(r"[A-Za-z0-9_.=/:${}@+,-]+", item)
        else "'" + item.replace("'", "'\\''") + "'"
    )


def environment_variables(opts: JobOptions) -> dict[str, str]:
    env = {**BASE_ENV, **NCCL_ENV, **opts.env}
    env["GRPO_SAMPLER_NODES"] = opts.sampler_nodes
    env["GRPO_TRAINER_NODES"] = opts.trainer_nodes
    return {k: str(v) for k, v in env.items()}  # AML rejects non-string values


def build_job(opts: JobOptions, ray_token_file: str) -> Any:
    """The azure-ai-ml Command job (already `_to_job()`-ed, so it dumps and validates)."""
    from azure.ai.ml import Input, Output, PyTorchDistribution, command
    from azure.ai.ml.entities import BuildContext, Environment, SshJobService

    name = opts.name or new_job_name()
    inputs: dict[str, Any] = {
        "config": Input(type="uri_file", path=str(Path(opts.config).resolve()), mode="download"),
        # The Ray cluster's shared secret, uploaded as a file input so it is not in the job definition.
        "ray_token": Input(type="uri_file", path=ray_token_file, mode="download"),
    }
    if opts.model:
        inputs["model"] = Input(
            type=model_input_type(opts.model, opts.model_type), path=opts.model, mode="download"
        )
    if opts.data:
        inputs["data"] = Input(type="uri_folder", path=opts.data, mode="download")
    outputs = {
        "checkpoints": Output(type="uri_folder", path=checkpoint_path(opts, name), mode="rw_mount"),
        "model": Output(type="mlflow_model", mode="rw_mount"),
    }
    if opts.environment:
        environment: Any = opts.environment
    else:
        environment = Environment(  # anonymous: AML names it by the build context's hash
            description="vLLM + TRL + DeepSpeed + Ray + MLflow (environment/Dockerfile)",
            build=BuildContext(path=str(ENVIRONMENT_DIR), dockerfile_path="Dockerfile"),
        )
    services = {}
    if opts.ssh:
        key = Path(opts.ssh_public_key or "").expanduser().read_text(encoding="utf-8").strip()
        services["ssh"] = SshJobService(ssh_public_keys=key, nodes="all")
    builder = command(
        name=name,
        display_name=name,
        experiment_name=opts.experiment,
        description=f"GRPO: {opts.sampler_nodes} sampler + {opts.trainer_nodes} trainer nodes",
        tags={
            "sampler_nodes": str(opts.sampler_nodes),
            "trainer_nodes": str(opts.trainer_nodes),
            "resumes": opts.resume or "",
        },
        command=launcher_command(opts, has_model=bool(opts.model), has_data=bool(opts.data)),
        code=str(REPO),
        environment=environment,
        environment_variables=environment_variables(opts),
        distribution=PyTorchDistribution(process_count_per_instance=1),
        instance_count=opts.layout.num_nodes,
        inputs=inputs,
        outputs=outputs,
        compute=opts.compute,
        shm_size=opts.shm_size,
        services=services or None,
        timeout=opts.timeout_s,
    )
    if not opts.compute:  # serverless compute: the VM size goes on the job
        builder.resources.instance_type = opts.instance_type or DEFAULT_INSTANCE_TYPE
    return builder._to_job()


def job_yaml(job: Any) -> str:
    """The job as the YAML `az ml job create --file` and `azure.ai.ml.load_job` accept."""
    import json

    import yaml

    data = json.loads(json.dumps(job._to_dict()))  # OrderedDicts -> plain, for yaml.safe_dump
    # azure-ai-ml 1.35 serialises every input path as `azureml:<path>`, which turns a local file into
    # a (non-existent) asset reference; write local paths back as they are.
    for name, inp in (job.inputs or {}).items():
        path = getattr(inp, "path", None)
        if isinstance(path, str) and not is_remote(path) and name in data.get("inputs", {}):
            data["inputs"][name]["path"] = path
    return yaml.safe_dump(data, sort_keys=False, width=120)
