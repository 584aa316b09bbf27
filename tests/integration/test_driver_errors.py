"""Bad runs fail before training, with a message that names the setting (through the real CLI)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _driver(
    tmp_path: Path, overrides: dict, *args: str, timeout: float = 300
) -> subprocess.CompletedProcess:
    cfg = yaml.safe_load((REPO / "configs" / "local.yaml").read_text())
    for dotted, value in {"trainer.output_dir": str(tmp_path / "run"), **overrides}.items():
        *parents, leaf = dotted.split(".")
        cur = cfg
        for p in parents:
            cur = cur.setdefault(p, {})
        cur[leaf] = value
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "trainer", "--config", str(path), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.parametrize(
    "overrides,needle",
    [
        ({"trainer.num_generations": 6}, "trainer.num_generations=6 must divide"),
        ({"trainer.loss_type": "ppo"}, "trainer.loss_type"),
        ({"trainer.reward_funcs": ["char_class", "nope"]}, "nope"),
        # well formed, so it passes the load-time check; the driver's import fails first
        ({"trainer.reward_funcs": ["char_class", "no_such_pkg.rewards:bonus"]}, "no_such_pkg"),
        ({"model.name_or_path": "/does/not/exist"}, "model.name_or_path"),
        ({"pipeline.weight_sync_bucket": 3}, "pipeline.weight_sync_bucket"),
        (
            {
                "sampler.external_urls": ["http://127.0.0.1:9"],
                "sampler.admin_key": "k",
                "sampler.startup_timeout_s": 2,
            },
            "sampler.external_urls",
        ),
        ({"sampler.external_urls": ["http://127.0.0.1:9"]}, "needs sampler.admin_key"),
    ],
)
def test_bad_config_fails_before_training(tmp_path, overrides, needle):
    proc = _driver(tmp_path, overrides)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert needle in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_resume_without_checkpoint_and_fresh_run_over_checkpoints(tmp_path):
    proc = _driver(tmp_path, {}, "--resume")
    assert proc.returncode == 2 and "--resume: no complete checkpoint" in proc.stderr, proc.stderr[
        -2000:
    ]
    (tmp_path / "run" / "checkpoints" / "step-3").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "step-3" / "client_state.json").write_text("{}")
    proc = _driver(tmp_path, {})
    assert proc.returncode == 2 and "pass --resume" in proc.stderr, proc.stderr[-2000:]


def test_bad_set_override(tmp_path):
    proc = _driver(tmp_path, {}, "--set", "trainer.max_steps")
    assert proc.returncode != 0 and "expected dotted.key=value" in proc.stderr
