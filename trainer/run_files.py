"""The run's own files in its output folder, which operators, tests and `deploy.connect` read
while it runs: the audit log of trained prompts, the metrics log, where each role runs, the
replicas' URLs, and the console progress line.

Owns: their names and formats, the truncation of the logs on resume, and marking the replicas
dead at shutdown. Does not know: Ray, MLflow, or how the numbers were made.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from trainer.files import write_atomic
from trainer.orchestrator import StepBatch
from trainer.types import ScoredSample

log = logging.getLogger(__name__)


class RunFiles:
    def __init__(self, out: Path) -> None:
        self.out = out

    def append(self, name: str, row: dict) -> None:
        with open(self.out / name, "a") as f:
            f.write(json.dumps(row) + "\n")

    def record_trained(self, step: int, batch: StepBatch) -> None:
        """Audit log: which prompts (and versions: the oldest per group, and every completion's
        spans) each step trained on. Tests check it for exactness."""
        self.append(
            "trained_prompts.jsonl",
            {
                "step": step,
                "prompt_ids": [g.prompt.id for g in batch.groups],
                "versions": [g.policy_version for g in batch.groups],
                "replicas": [g.replica for g in batch.groups],
                # per group, per completion: [version, first token] of each span of tokens one
                # weights version made (several after an in-flight update)
                "sample_versions": [[_spans(s) for s in g.samples] for g in batch.groups],
            },
        )

    def metrics(self, step: int, metrics: dict[str, float]) -> None:
        self.append("metrics.jsonl", {"step": step, **metrics})

    def truncate(self, start_step: int) -> None:
        """On resume, forget steps after the checkpoint: they are trained again."""
        for name, last_kept in (
            ("trained_prompts.jsonl", start_step - 1),
            ("metrics.jsonl", start_step),
        ):
            path = self.out / name
            if path.exists():
                keep = [
                    x
                    for x in path.read_text().splitlines()
                    if x and json.loads(x)["step"] <= last_kept
                ]
                path.write_text("".join(x + "\n" for x in keep))

    def write_placement(self, placement: dict[str, list[dict[str, Any]]]) -> None:
        """Which node each role's process runs on (node addresses as Ray knows them)."""
        write_atomic(self.out / "placement.json", json.dumps(placement, indent=2))

    def write_replicas(self, infos: list[dict[str, Any]]) -> None:
        """Where each replica lives now (URL, PID, restarts, alive): for operators and tests."""
        write_atomic(self.out / "replicas.json", json.dumps(infos, indent=2))

    def mark_replicas_dead(self) -> None:
        """At shutdown every replica is stopped: `replicas.json` must not show a dead URL alive."""
        path = self.out / "replicas.json"
        if not path.is_file():
            return
        try:
            infos = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            log.warning("replicas.json not updated at shutdown: %r", e)
            return
        self.write_replicas([{**info, "alive": False} for info in infos])


def completion_rows(step: int, batch: StepBatch) -> list[dict[str, Any]]:
    """The completions table of a step (MLflow `completions/step_<N>.json`)."""
    return [
        {
            "step": step,
            "prompt_id": s.prompt_id,
            "completion": s.completion_text,
            "reward": s.reward,
            "advantage": s.advantage,
            "policy_version": s.policy_version,
            "versions": _spans(s),
        }
        for s in batch.samples
    ]


def _spans(s: ScoredSample) -> list[list[int]]:
    return [[v, start] for v, start in s.versions]


def progress_line(step: int, steps: int, m: dict[str, float]) -> str:
    return (
        f"step {step}/{steps} | reward {m.get('reward', float('nan')):.3f} "
        f"| step {m['timing/step_s']:.2f}s | {m.get('sampler/tokens_per_s', 0):.0f} tok/s "
        f"| version {int(m['policy/version'])} | loss {m.get('loss', float('nan')):.4f}"
    )


def eval_line(step: int, n: int, m: dict[str, float]) -> str:
    parts = [f"eval at step {step} ({n} prompts) | reward {m['eval_reward']:.3f}"]
    parts += [
        f"{k.split('/')[1]} {v:.3f}" for k, v in sorted(m.items()) if k.startswith("eval_rewards/")
    ]
    return " | ".join(parts)
