"""deploy/submit.py validates `--set` overrides exactly like the YAML, before anything is submitted
(also in --dry-run): unknown keys and sections, bad values and cross-field checks exit 2 with one
line naming the key, and no job YAML is printed."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from deploy import submit

CONFIG = {
    "sampler": {"replicas": 8},
    "pipeline": {"num_trainer_workers": 16, "trainer_gpus_per_worker": 1},
    "trainer": {"per_device_train_batch_size": 8, "num_generations": 8, "max_steps": 10},
}


@pytest.fixture()
def argv(tmp_path: Path) -> list[str]:
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump(CONFIG))
    model = tmp_path / "model"
    model.mkdir()
    return ["--config", str(cfg), "--no-ssh", "--trainer-nodes", "2", "--model", str(model),
            "--data", "azureml:medmcqa:3", "--dry-run"]  # fmt: skip


@pytest.mark.parametrize("override,needle", [
    ("trainer.learnin_rate=1", "trainer.learnin_rate (--set): unknown key (did you mean 'learning_rate'?)"),
    ("samplr.replicas=2", "--set samplr.replicas: unknown section 'samplr' (did you mean 'sampler'?)"),
    ("trainer.loss_type=ppo", "trainer.loss_type (--set): Input should be"),
    ("trainer.num_generations=3", "trainer.num_generations=3 must divide"),
    ("trainer.max_steps", "expected dotted.key=value"),
])  # fmt: skip
def test_a_bad_set_override_fails_the_dry_run_with_one_line(argv, capsys, override, needle):
    assert submit.main([*argv, "--set", override]) == 2
    out = capsys.readouterr()
    assert out.out == ""  # no job YAML
    lines = out.err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], out.err


def test_set_overrides_count_in_the_layout_checks(argv, capsys):
    """32 trainer ranks of 1 GPU do not fit 2 trainer nodes of 8 GPUs: the override is what runs."""
    assert submit.main([*argv, "--set", "pipeline.num_trainer_workers=32"]) == 2
    assert "= 32 GPUs but the trainer nodes have 16" in capsys.readouterr().err


def test_a_valid_set_override_reaches_the_job_command(argv, capsys):
    assert submit.main([*argv, "--set", "trainer.learning_rate=2e-6"]) == 0
    job = yaml.safe_load(capsys.readouterr().out)
    assert "--set trainer.learning_rate=2e-6" in job["command"]


@pytest.mark.parametrize("override,flag", [
    ("model.name_or_path=/home/me/qwen", "--model"),
    ("data.path=./medmcqa", "--data"),
    ("data.source=hub", "--data"),
])  # fmt: skip
def test_a_set_override_of_a_job_input_binding_is_refused(argv, capsys, override, flag):
    """--model / --data bind job inputs to those keys; a --set of the same key would silently
    replace the binding (the nodes would look for a path of the submitting machine)."""
    assert submit.main([*argv, "--set", override]) == 2
    out = capsys.readouterr()
    assert out.out == ""
    key = override.split("=")[0]
    assert f"--set {key}" in out.err and flag in out.err, out.err
