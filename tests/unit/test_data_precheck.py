"""Data errors come first: `python -m trainer` reads every split the run will use right after the
config, before the tiny model is built or Ray, vLLM or DeepSpeed start, and a bad file is one
line (file, line number, field), exit code 2, no traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from data.loader import DataError
from trainer.config_loading import parse_config
from trainer.precheck import check_data

REPO = Path(__file__).resolve().parents[2]
GOOD = {"id": "1", "problem": "Which? A) x B) y", "solution": "A"}


def _data(tmp_path: Path, train: list[str], validation: list[str] | None = None) -> Path:
    d = tmp_path / "data"
    d.mkdir(exist_ok=True)
    (d / "train.jsonl").write_text("".join(x + "\n" for x in train))
    if validation is not None:
        (d / "validation.jsonl").write_text("".join(x + "\n" for x in validation))
    return d


def _cfg(tmp_path: Path, data_dir: Path, eval_steps: int | None = None):
    return parse_config(
        {
            "data": {"source": "jsonl", "path": str(data_dir), "answer_choices": ["A", "B"]},
            "trainer": {"output_dir": str(tmp_path / "run"), "eval_steps": eval_steps},
        }
    )


@pytest.mark.parametrize("rows,needle", [
    ([json.dumps(GOOD), "{not json"], "train.jsonl, line 2: not valid JSON"),
    ([json.dumps(GOOD), json.dumps({"id": "2", "problem": "p"})], "train.jsonl, line 2 field 'solution': missing"),
    ([json.dumps({**GOOD, "solution": "E"})], "train.jsonl, line 1 field 'solution': 'E' is not one of"),
])  # fmt: skip
def test_a_bad_train_row_is_reported_with_file_line_and_field(tmp_path, rows, needle):
    cfg = _cfg(tmp_path, _data(tmp_path, rows))
    with pytest.raises(DataError, match=needle.replace("(", r"\(")):
        check_data(cfg)


def test_the_eval_split_is_checked_only_when_the_run_evaluates(tmp_path):
    d = _data(tmp_path, [json.dumps(GOOD)])  # no validation.jsonl
    check_data(_cfg(tmp_path, d, eval_steps=None))
    with pytest.raises(DataError, match=r"validation\.jsonl: file not found"):
        check_data(_cfg(tmp_path, d, eval_steps=5))


def _driver(tmp_path: Path, data_dir: Path) -> subprocess.CompletedProcess:
    cfg = yaml.safe_load((REPO / "configs" / "local.yaml").read_text())
    cfg["data"] = {"source": "jsonl", "path": str(data_dir), "eval_split": None}
    cfg["trainer"]["output_dir"] = str(tmp_path / "run")
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return subprocess.run(
        [sys.executable, "-m", "trainer", "--config", str(path)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_driver_reports_a_bad_row_in_one_line_before_anything_starts(tmp_path):
    d = _data(tmp_path, [json.dumps(GOOD), json.dumps({"id": "2", "solution": "B"})])
    proc = _driver(tmp_path, d)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    [line] = [x for x in proc.stderr.splitlines() if "train.jsonl" in x]
    assert line == f"error: data: {d / 'train.jsonl'}, line 2 field 'problem': missing; every " \
        "row needs ['id', 'problem', 'solution']"  # fmt: skip
    assert not (tmp_path / "run" / "base_model").exists()  # the tiny model was never built


def test_the_driver_reports_a_missing_data_file_before_anything_starts(tmp_path):
    d = tmp_path / "empty"
    d.mkdir()
    proc = _driver(tmp_path, d)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert f"error: data: {d / 'train.jsonl'}: file not found" in proc.stderr
    assert not (tmp_path / "run" / "base_model").exists()
