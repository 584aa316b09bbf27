"""deploy/submit.py offline: the --dry-run YAML round-trips through azure.ai.ml.load_job with the expected
job, `ml_client.jobs.validate` accepts it with a fake credential, and bad flags exit 2 with a clear message."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from deploy import submit
from deploy.jobspec import (
    NCCL_ENV,
    JobOptions,
    build_job,
    launcher_command,
    model_input_type,
)

REPO = Path(__file__).resolve().parents[2]
GPU_CONFIG = {
    "sampler": {"replicas": 8},
    "pipeline": {"num_trainer_workers": 16, "trainer_gpus_per_worker": 1},
    "trainer": {"per_device_train_batch_size": 8, "num_generations": 8, "max_steps": 10},
}


@pytest.fixture()
def files(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump(GPU_CONFIG))
    key = tmp_path / "id.pub"
    key.write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyForTests user@host\n")
    model = tmp_path / "model"
    model.mkdir()
    data = tmp_path / "data"
    data.mkdir()
    return {
        "config": str(cfg),
        "key": str(key),
        "model": str(model),
        "data": str(data),
        "tmp": tmp_path,
    }


def _dry_run(files, *extra, capsys):
    argv = ["--config", files["config"], "--ssh-public-key", files["key"], "--sampler-nodes", "1",
            "--trainer-nodes", "2", "--model", files["model"], "--data", "azureml:medmcqa:3", "--dry-run", *extra]  # fmt: skip
    rc = submit.main(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_dry_run_yaml_loads_back_with_the_expected_job(files, capsys, tmp_path):
    from azure.ai.ml import load_job

    rc, out, err = _dry_run(
        files, "--name", "grpo-test-1", "--set", "trainer.max_steps=500", capsys=capsys
    )
    assert rc == 0, err
    path = tmp_path / "job.yaml"
    path.write_text(out)
    job = load_job(path)
    assert job.type == "command" and job.name == "grpo-test-1"
    assert job.resources.instance_count == 3 and job.resources.shm_size == "256g"
    assert job.resources.instance_type == "Standard_ND96isr_H100_v5"
    assert job.distribution.type == "pytorch" and job.distribution.process_count_per_instance == 1
    for key, value in NCCL_ENV.items():
        assert job.environment_variables[key] == value
    assert all(isinstance(v, str) for v in job.environment_variables.values())
    assert job.inputs["model"].type == "uri_folder" and job.inputs["model"].mode == "download"
    assert (
        job.inputs["model"].path == files["model"]
    )  # a local folder stays local (uploaded at submit)
    assert job.inputs["data"].type == "uri_folder"
    assert job.inputs["config"].type == "uri_file" and job.inputs["ray_token"].type == "uri_file"
    ckpt = job.outputs["checkpoints"]
    assert ckpt.type == "uri_folder" and ckpt.mode == "rw_mount"
    assert (
        ckpt.path
        == "azureml://datastores/workspaceblobstore/paths/grpo-service/checkpoints/grpo-test-1/"
    )
    assert job.outputs["model"].type == "mlflow_model"
    assert job.services["ssh"].type == "ssh" and job.services["ssh"].ssh_public_keys.startswith(
        "ssh-ed25519"
    )
    assert job.environment.build.path.endswith("environment")
    cmd = job.command
    assert cmd.startswith(
        "python -m deploy.launch --config ${{inputs.config}} --sampler-nodes 1 --trainer-nodes 2"
    )
    for part in ("--output-dir ${{outputs.checkpoints}}", "--set model.name_or_path=${{inputs.model}}",
                 "--set data.path=${{inputs.data}}", "--set trainer.max_steps=500",
                 "--ray-auth-token-file ${{inputs.ray_token}}"):  # fmt: skip
        assert part in cmd
    assert "--resume" not in cmd
    assert "checkpoints: azureml://" in err


def test_resume_reuses_the_previous_jobs_checkpoint_folder(files, capsys):
    rc, out, err = _dry_run(files, "--resume", "grpo-old-7", capsys=capsys)
    assert rc == 0, err
    spec = yaml.safe_load(out)
    assert spec["outputs"]["checkpoints"]["path"].endswith("/checkpoints/grpo-old-7/")
    assert spec["command"].endswith("--resume") and spec["name"] != "grpo-old-7"


def test_compute_cluster_job_has_no_instance_type(files, capsys):
    rc, out, err = _dry_run(files, "--compute", "nd-h100", capsys=capsys)
    assert rc == 0, err
    spec = yaml.safe_load(out)
    assert spec["compute"] == "azureml:nd-h100" and "instance_type" not in spec["resources"]


def test_jobs_validate_with_a_fake_credential(files):
    from azure.ai.ml import MLClient
    from azure.core.credentials import AccessToken

    class FakeCredential:
        def get_token(self, *scopes, **kwargs):
            return AccessToken("fake", 4102444800)

    client = MLClient(FakeCredential(), "00000000-0000-0000-0000-000000000000", "rg", "ws")
    token = files["tmp"] / "tok"
    token.write_text("x")
    opts = JobOptions(
        config=files["config"], ssh_public_key=files["key"], trainer_nodes=2, model=files["model"]
    )
    job = build_job(opts, str(token))
    result = client.jobs.validate(job)
    assert result.passed, result.error_messages
    # validate is client-side (azure-ai-ml validates command jobs shallowly, no network); it does run:
    job.code = "git+https://example.invalid/repo"
    assert not client.jobs.validate(job).passed
    # and the REST payload the service would receive builds offline.
    rest = build_job(opts, str(token))._to_rest_object()
    assert rest.properties.resources.instance_count == 3


def test_model_input_type():
    assert model_input_type("azureml:qwen7b:2", "auto") == "custom_model"
    assert (
        model_input_type("azureml://registries/azureml/models/Qwen/versions/1", "auto")
        == "custom_model"
    )
    assert model_input_type("azureml://datastores/x/paths/qwen", "auto") == "uri_folder"
    assert model_input_type("/local/qwen", "auto") == "uri_folder"
    assert model_input_type("/local/qwen", "mlflow_model") == "mlflow_model"


def test_launcher_command_quotes_odd_overrides():
    opts = JobOptions(config="c.yaml", overrides=["data.system_prompt=Think step by step"])
    assert "--set 'data.system_prompt=Think step by step'" in launcher_command(
        opts, has_model=False, has_data=False
    )


@pytest.mark.parametrize("extra,match", [
    (["--compute", "c", "--instance-type", "Standard_ND96isr_H100_v5"], "--compute and --instance-type both given"),
    (["--trainer-gpus-per-node", "16"], "--trainer-gpus-per-node=16 but Standard_ND96isr_H100_v5 has 8 GPUs"),
    (["--sampler-nodes", "0"], "--sampler-nodes must be >= 1"),
    (["--set", "max_steps"], "expected dotted.key=value"),
    (["--resume", "bad name"], "--resume 'bad name'"),
    (["--shm-size", "lots"], "--shm-size 'lots'"),
    (["--env", "NOEQUALS"], "--env 'NOEQUALS': expected KEY=VALUE"),
    (["--trainer-nodes", "1"], "= 16 GPUs but the trainer nodes have 8"),
])  # fmt: skip
def test_bad_flags_exit_2_with_a_clear_message(files, capsys, extra, match):
    argv = [
        "--config",
        files["config"],
        "--ssh-public-key",
        files["key"],
        "--trainer-nodes",
        "2",
        "--dry-run",
        *extra,
    ]
    assert submit.main(argv) == 2
    assert match in capsys.readouterr().err


def test_sampler_gpu_without_room_for_the_weight_receive_buffers_is_refused(files, capsys):
    """0.97 of an 80 GiB H100 leaves 2.4 GiB: 2 receive buffers x 1 GiB + 2 GiB of CUDA/NCCL do
    not fit. The error names both settings, before anything is submitted."""
    cfg = yaml.safe_load(Path(files["config"]).read_text())
    cfg["sampler"]["gpu_memory_utilization"] = 0.97
    Path(files["config"]).write_text(yaml.safe_dump(cfg))
    rc, _, err = _dry_run(files, capsys=capsys)
    assert rc == 2
    assert "sampler.gpu_memory_utilization 0.97 leaves 2.4 GiB of a 80 GiB GPU" in err
    assert "pipeline.weight_sync_bucket_mb" in err
    cfg["pipeline"]["weight_sync_bucket_mb"] = 128  # smaller buckets fit
    Path(files["config"]).write_text(yaml.safe_dump(cfg))
    assert _dry_run(files, capsys=capsys)[0] == 0


def test_bad_inputs_exit_2(files, capsys, tmp_path):
    base = ["--config", files["config"], "--trainer-nodes", "2", "--dry-run"]
    assert submit.main([*base, "--ssh-public-key", str(tmp_path / "nope.pub")]) == 2
    assert "no such file" in capsys.readouterr().err
    priv = tmp_path / "id"
    priv.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    assert submit.main([*base, "--ssh-public-key", str(priv)]) == 2
    assert "not an OpenSSH public key" in capsys.readouterr().err
    assert submit.main([*base, "--no-ssh", "--model", str(tmp_path / "missing")]) == 2
    assert "not a local folder" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer: {max_stepz: 3}\n")
    assert submit.main(["--config", str(bad), "--no-ssh", "--dry-run"]) == 2
    assert "did you mean 'max_steps'" in capsys.readouterr().err


def test_submit_without_workspace_says_how_to_name_one(files, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # no config.json here
    argv = ["--config", files["config"], "--ssh-public-key", files["key"], "--trainer-nodes", "2"]
    assert submit.main(argv) == 2
    assert "no workspace: pass --workspace-config" in capsys.readouterr().err


def test_script_runs_as_a_file_and_imports_without_azure_at_module_level():
    out = subprocess.run(
        [sys.executable, "deploy/submit.py", "--help"], cwd=REPO, capture_output=True, text=True
    )
    assert out.returncode == 0 and "--sampler-nodes" in out.stdout
    code = ("import sys; import deploy.submit, deploy.launch, deploy.jobspec, deploy.connect, deploy.register; "
            "bad = [m for m in sys.modules if m.startswith(('azure', 'ray', 'torch', 'vllm', 'deepspeed'))]; "
            "assert not bad, bad")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_dry_run_without_an_ssh_key_shows_a_placeholder_and_submitting_still_needs_one(
    files, capsys, tmp_path, monkeypatch
):
    """A dry-run needs no key: without ~/.ssh/*.pub the job shows a throwaway OpenSSH key (and a
    note says so); a real submission still stops before contacting Azure."""
    from azure.ai.ml import load_job

    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.ssh
    base = ["--config", files["config"], "--trainer-nodes", "2", "--data", "azureml:medmcqa:3"]
    assert submit.main([*base, "--dry-run"]) == 0
    out = capsys.readouterr()
    assert "placeholder SSH key" in out.err and "ssh-keygen -t ed25519" in out.err
    (tmp_path / "job.yaml").write_text(out.out)
    key = load_job(tmp_path / "job.yaml").services["ssh"].ssh_public_keys
    assert key.startswith("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI") and "dry-run" in key
    assert submit.main(base) == 2
    assert "needs a public key" in capsys.readouterr().err
