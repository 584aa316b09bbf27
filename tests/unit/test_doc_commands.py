"""The docs' commands run as written. Every README command is walked by a test or says why not
(tests/doc_commands.py); here: the Azure ML dry-run commands of README.md and docs/azure-ml.md, in
a fresh copy of the project, after only what the docs tell a user to create first (the data
folder), with no SSH key, no workspace config and no credentials: exit 0 and the job the command
describes; the README's data commands; its test command is CI's."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from doc_commands import (
    README_WALKS,
    fresh_copy,
    readme_command,
    readme_commands,
    set_up_clone,
    shell_commands,
    without_comment,
)

REPO = Path(__file__).resolve().parents[2]
DOCS = ("README.md", "docs/azure-ml.md")
DATA_PREP = "python -m data.prep_medmcqa local_data/medmcqa"  # what the docs say makes --data


def dry_runs(doc: str) -> list[str]:
    cmds = shell_commands((REPO / doc).read_text(encoding="utf-8"))
    code = {c: without_comment(c) for c in cmds}  # a trailing comment may mention --dry-run
    return [c for c in cmds if "deploy/submit.py" in code[c] and "--dry-run" in code[c]]


def test_shell_commands_joins_continuations_and_skips_comments():
    md = "x\n```bash\n# note\na --b \\\n  --c  # why\nd\n```\n```python\nno\n```\n"
    assert shell_commands(md) == ["a --b --c  # why", "d"]


@pytest.mark.parametrize("doc", DOCS)
def test_docs_say_how_to_make_the_data_folder_of_their_dry_run(doc):
    """The test below makes `local_data/medmcqa` itself (no hub here): the docs must say how."""
    assert "--data local_data/medmcqa" in dry_runs(doc)[0]
    assert DATA_PREP in (REPO / doc).read_text(encoding="utf-8")


@pytest.mark.parametrize("doc", DOCS)
def test_documented_dry_run_runs_as_written(doc, tmp_path, medmcqa_dir):
    [cmd] = dry_runs(doc)
    clone = fresh_copy(tmp_path / "clone")
    # What the docs' data step makes (the hub is out of reach here): the same files.
    shutil.copytree(medmcqa_dir / "small", clone / "local_data" / "medmcqa")
    home = tmp_path / "home"  # no ~/.ssh key, no Azure login, no config.json
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AZURE_", "PYTHONPATH"))}
    env.update(HOME=str(home), PATH=f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}")
    proc = subprocess.run(["bash", "-c", cmd], cwd=clone, env=env, capture_output=True,
                          text=True, timeout=180)  # fmt: skip
    assert proc.returncode == 0, f"{cmd}\n{proc.stderr[-3000:]}"
    job = yaml.safe_load(proc.stdout)
    assert job["resources"]["instance_count"] == 3 and job["compute"] == "azureml:nd-h100"
    assert job["inputs"]["model"]["path"] == "azureml:qwen2_5-7b-instruct:1"
    assert job["inputs"]["model"]["type"] == "custom_model"
    data = clone / job["inputs"]["data"]["path"]  # as given: relative to where the user ran it
    assert data.resolve() == (clone / "local_data" / "medmcqa").resolve()
    assert "placeholder SSH key" in proc.stderr, proc.stderr[-2000:]
    assert not (home / ".ssh").exists()  # nothing written to the user's home


def test_every_readme_command_is_walked_or_says_why_not():
    unlisted = [c for c in readme_commands() if not any(c.startswith(k) for k in README_WALKS)]
    assert unlisted == [], f"add each to tests/doc_commands.py README_WALKS: {unlisted}"
    gone = [k for k in README_WALKS if not any(c.startswith(k) for c in readme_commands())]
    assert gone == [], f"README_WALKS lists commands the README no longer has: {gone}"


def test_ci_runs_the_readme_set_up_and_test_commands():
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    for start in ("bash scripts/setup.sh", '.venv/bin/python -m pytest -m "not gpu"'):
        assert f"time {readme_command(start)}" in ci, start


@pytest.mark.slow
def test_readme_data_commands_run_as_written(tmp_path):
    """`python -m data.tiny_model OUT_DIR --seed 0` and `python -m data.synthetic OUT_DIR` in a
    set-up clone, OUT_DIR a new folder: a model folder vLLM and transformers load, and splits."""
    clone = set_up_clone(tmp_path / "clone")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    made = {}
    for start in (".venv/bin/python -m data.tiny_model", ".venv/bin/python -m data.synthetic"):
        cmd = readme_command(start)
        made[start] = tmp_path / start.rsplit(".", 1)[1]
        proc = subprocess.run(["bash", "-c", cmd.replace("OUT_DIR", str(made[start]))],
                              cwd=clone, env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
        assert proc.returncode == 0, f"{cmd}\n{proc.stderr[-3000:]}"
    model = made[".venv/bin/python -m data.tiny_model"]
    assert (model / "config.json").is_file() and (model / "tokenizer_config.json").is_file()
    splits = made[".venv/bin/python -m data.synthetic"]
    assert (splits / "train.jsonl").read_text().count("\n") > 100
    assert (splits / "validation.jsonl").is_file()
