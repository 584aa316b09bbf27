"""The Azure ML dry-run commands of README.md and docs/azure-ml.md run exactly as written, in a
fresh copy of the project, after only what the docs tell a user to create first (the data folder),
with no SSH key, no workspace config and no credentials: exit 0 and the job the command describes."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DOCS = ("README.md", "docs/azure-ml.md")
DATA_PREP = "python -m data.prep_medmcqa local_data/medmcqa"  # what the docs say makes --data


def shell_commands(markdown: str) -> list[str]:
    """Every command of the doc's ```bash blocks, `\\`-continued lines joined."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", markdown, re.S):
        for cmd in re.sub(r"\\\n\s*", "", block).splitlines():
            if cmd.strip() and not cmd.lstrip().startswith("#"):
                out.append(cmd.strip())
    return out


def dry_runs(doc: str) -> list[str]:
    cmds = shell_commands((REPO / doc).read_text(encoding="utf-8"))
    code = {c: re.split(r"\s#", c)[0] for c in cmds}  # a trailing comment may mention --dry-run
    return [c for c in cmds if "deploy/submit.py" in code[c] and "--dry-run" in code[c]]


def test_shell_commands_joins_continuations_and_skips_comments():
    md = "x\n```bash\n# note\na --b \\\n  --c  # why\nd\n```\n```python\nno\n```\n"
    assert shell_commands(md) == ["a --b --c  # why", "d"]


@pytest.mark.parametrize("doc", DOCS)
def test_docs_say_how_to_make_the_data_folder_of_their_dry_run(doc):
    """The test below makes `local_data/medmcqa` itself (no hub here): the docs must say how."""
    assert "--data local_data/medmcqa" in dry_runs(doc)[0]
    assert DATA_PREP in (REPO / doc).read_text(encoding="utf-8")


def fresh_copy(dest: Path) -> Path:
    """The project's files as a fresh clone has them (tracked and new, nothing git ignores)."""
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout.split("\0")  # fmt: skip
    for rel in filter(None, files):
        src, dst = REPO / rel, dest / rel
        if not (src.exists() or src.is_symlink()):
            continue  # deleted in the working tree
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst, follow_symlinks=False)
    return dest


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
