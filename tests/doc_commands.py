"""The shell commands the docs give a user, and a fresh clone to run them in (shared by the unit
and the integration tests that walk them).

`README_WALKS` says, for every command of README.md's bash blocks, which test runs it as written
or why none does; `tests/unit/test_doc_commands.py` fails on a README command it does not list,
and the walking tests take their command from the README text itself (`readme_command`), so a
README that changes to a command that does not work fails them.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# README command (`&&` parts separate) -> where it is walked, or why it is not run. A command
# belongs to the key it starts with.
_SERVE_TEST = (
    "tests/integration/test_pipeline.py::test_serve_keeps_the_final_policy_live_until_ctrl_c"
)
README_WALKS = {
    "bash scripts/setup.sh": ".ci/run (the install every test runs in)",
    ".venv/bin/python -m trainer --config configs/local.yaml": f"{_SERVE_TEST} (plus --serve)",
    '.venv/bin/python -m pytest -m "not gpu"': ".ci/run (test_ci_runs_the_readme_test_command)",
    "URL=$(": f"{_SERVE_TEST}, against the live sampler",
    "curl -s $URL/v1/chat/completions": f"{_SERVE_TEST}, against the live sampler",
    ".venv/bin/python -m trainer --config configs/medmcqa_tiny.yaml": (
        "tests/integration/test_pipeline.py::test_medmcqa_seed_setup_runs_on_the_tiny_model"
    ),
    ".venv/bin/python -m data.tiny_model OUT_DIR": "test_readme_data_commands_run_as_written",
    ".venv/bin/python -m data.synthetic OUT_DIR": "test_readme_data_commands_run_as_written",
    "python deploy/submit.py --config": "test_documented_dry_run_runs_as_written",
    # Not run here, and why:
    ".venv/bin/python -m data.prep_medmcqa": "needs the hub (its conversion: test_synthetic_and_prep)",
    "python -m data.prep_medmcqa": "needs the hub (its conversion: test_synthetic_and_prep)",
    'pip install -e ".[azure]"': "an install from the package index",
    "az login": "an Azure login",
    "az ml compute create": "creates Azure resources",
    "python deploy/submit.py ... --stream": "submits an Azure ML job",
    "python deploy/connect.py": "needs a running Azure ML job",
    "python deploy/register.py": "needs a finished Azure ML job",
}


def shell_commands(markdown: str) -> list[str]:
    """Every command of the doc's ```bash blocks, `\\`-continued lines joined."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", markdown, re.S):
        for cmd in re.sub(r"\\\n\s*", "", block).splitlines():
            if cmd.strip() and not cmd.lstrip().startswith("#"):
                out.append(cmd.strip())
    return out


def without_comment(cmd: str) -> str:
    return re.split(r"\s#", cmd)[0].strip()


def readme_commands() -> list[str]:
    """README.md's commands, trailing comments dropped, `a && b` as two commands."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    return [part.strip() for c in shell_commands(text) for part in without_comment(c).split(" && ")]


def readme_command(start: str) -> str:
    """The README command that starts with `start` (exactly one)."""
    found = [c for c in readme_commands() if c.startswith(start)]
    assert len(found) == 1, f"README.md has {len(found)} commands starting with {start!r}: {found}"
    return found[0]


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


def set_up_clone(dest: Path) -> Path:
    """A fresh copy after `bash scripts/setup.sh`: its `.venv` is this checkout's (a link), so
    `.venv/bin/python` of the docs runs the copy's code (its folder comes first on sys.path)."""
    fresh_copy(dest)
    (dest / ".venv").symlink_to(REPO / ".venv", target_is_directory=True)
    return dest
