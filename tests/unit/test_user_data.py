"""A user's own data: the shipped configs name no data folder outside the clone; the MedMCQA
configs take the folder as an explicit setting (`--set data.path=DIR`) and say what to pass and
how to make the files when it is unset or missing. The tests give them the shared sample through
the `medmcqa_dir` fixture, never through a path in a shipped config."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from trainer.config import ConfigError
from trainer.config_loading import load_config

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))
MEDMCQA_CONFIGS = [REPO / "configs" / n for n in ("medmcqa_tiny.yaml", "medmcqa_recipe_style.yaml")]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_no_shipped_config_points_outside_the_clone(path):
    data = (yaml.safe_load(path.read_text()) or {}).get("data") or {}
    where = str(data.get("path") or "")
    assert "shared" not in where and not where.startswith(".."), f"{path.name}: data.path {where}"


@pytest.mark.parametrize("path", MEDMCQA_CONFIGS, ids=lambda p: p.name)
def test_medmcqa_configs_need_an_explicit_data_folder(path):
    with pytest.raises(ConfigError) as e:
        load_config(path)
    msg = str(e.value)
    assert "data.path is required" in msg and "--set data.path=DIR" in msg, msg
    assert "python -m data.prep_medmcqa local_data/medmcqa" in msg, msg
    assert "train.jsonl" in msg and "docs/data.md" in msg, msg


@pytest.mark.parametrize("path", MEDMCQA_CONFIGS, ids=lambda p: p.name)
def test_medmcqa_configs_run_on_the_folder_given(path, medmcqa_dir):
    cfg = load_config(path, {"data.path": str(medmcqa_dir / "small")})
    assert cfg.data.path == str(medmcqa_dir / "small") and cfg.data.answer_choices == list("ABCD")


def test_the_driver_names_a_missing_data_folder_and_how_to_make_it(tmp_path):
    missing = tmp_path / "nope"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "trainer", "--config", "configs/medmcqa_tiny.yaml",
           "--set", f"data.path={missing}", "--set", f"trainer.output_dir={tmp_path / 'run'}"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    [line] = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
    assert line.startswith(f"error: data: {missing}: data folder not found (data.path); "), line
    assert "--set data.path=DIR" in line and "python -m data.prep_medmcqa" in line, line
    assert not (tmp_path / "run" / "base_model").exists()  # failed before the model was built
