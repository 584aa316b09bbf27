"""Pipeline throughput: async (max_staleness 1, 2) vs synchronous (0) vs stock TRL GRPOTrainer.

    python bench/bench_pipeline.py --model 25m --steps 12          # generation-dominated workload
    python bench/bench_pipeline.py --model tiny --steps 12

One command runs every variant on the same model, prompts, batch, G, completion length, learning
rate and reward (the offline charclass task), one after another, and prints trained samples/s with
ratios, a per-phase time breakdown and the final reward of each. Steady state: the first
`--warmup` steps of each run are excluded (engine warm-up, first DeepSpeed step).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def pipeline_env() -> dict[str, str]:
    """The environment every pipeline run of a bench gets (CPU vLLM, one thread per process)."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from sampler.engine import CPU_VLLM_ENV

    return {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "RAY_AUTH_MODE": "disabled",
        **CPU_VLLM_ENV,
    }


def read_jsonl(path: Path) -> list[dict]:
    """The rows of a run's jsonl file (metrics.jsonl, trained_prompts.jsonl)."""
    return [json.loads(x) for x in path.read_text().splitlines()]


def run_pipeline(
    cfg_path: Path, out: Path, staleness: int, env: dict, sets: list[str] | None = None
) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "trainer",
        "--config",
        str(cfg_path),
        "--set",
        f"trainer.output_dir={out}",
        "--set",
        f"pipeline.max_staleness={staleness}",
    ]
    for kv in sets or []:
        cmd += ["--set", kv]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"pipeline run (staleness {staleness}) failed:\n{proc.stderr[-4000:]}")
    return {
        "metrics": read_jsonl(out / "metrics.jsonl"),
        "wall_s": wall,
    }


def bench_run_config(
    model: Path, *, batch: int, max_model_len: int, steps: int, seed: int, **trainer: object
) -> dict:
    """configs/local.yaml as a bench run: `model`, `batch` samples per step, `steps` steps, the
    given trainer settings (TRL names); no eval, checkpoints, completion logs or MLflow model."""
    cfg = yaml.safe_load((REPO / "configs" / "local.yaml").read_text())
    cfg["model"]["name_or_path"] = str(model)
    cfg["data"]["eval_split"] = None
    cfg["sampler"]["max_model_len"] = max_model_len
    cfg["trainer"].update(
        per_device_train_batch_size=batch,
        max_steps=steps,
        save_steps=10_000,
        eval_steps=None,
        log_completions=False,
        seed=seed,
        **trainer,
    )
    cfg["mlflow"]["log_model"] = False
    return cfg


def summarise(name: str, metrics: list[dict], batch: int, warmup: int) -> dict:
    steady = metrics[warmup:]
    step_s = _mean([m["timing/step_s"] for m in steady])
    phases = {
        k: _mean([m.get(k, 0.0) for m in steady])
        for k in (
            "timing/wait_rollout_s",
            "timing/train_s",
            "timing/weight_sync_s",
            "timing/generate_s",
        )
    }
    return {
        "name": name,
        "samples_per_s": batch / step_s,
        "step_s": step_s,
        **phases,
        "final_reward": _mean([m["reward"] for m in metrics[-3:]]),
        "first_reward": _mean([m["reward"] for m in metrics[:3]]),
        "rewards": [round(m["reward"], 3) for m in metrics],
    }


def main() -> None:
    sys.path.insert(0, str(REPO))
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    from bench.presets import MODEL_PRESETS, add_model_argument

    add_model_argument(p, default="25m")
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--prompts-per-step", type=int, default=2)
    p.add_argument("--num-generations", type=int, default=8)
    p.add_argument("--max-completion-length", type=int, default=128)
    p.add_argument("--learning-rate", type=float, default=1e-3)
    p.add_argument("--staleness", default="0,1,2")
    p.add_argument("--skip-trl", action="store_true")
    p.add_argument(
        "--seed",
        type=int,
        default=42,
        help="trainer.seed of the pipeline (data order and the sampler's engine seed) and TRL's --seed. "
        "The reward after ~10 steps varies a lot between seeds (on both sides): compare several.",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra run-config override for every pipeline run (e.g. sampler.cpu_weight_layout=packed)",
    )
    a = p.parse_args()
    env = pipeline_env()
    from data.tiny_model import build_tiny_model

    tmp = Path(tempfile.mkdtemp(prefix="bench_pipeline_"))
    model = build_tiny_model(tmp / "model", seed=0, **MODEL_PRESETS[a.model])
    batch = a.prompts_per_step * a.num_generations
    cfg = bench_run_config(
        model,
        batch=batch,
        max_model_len=256 + a.max_completion_length,
        steps=a.steps,
        seed=a.seed,
        num_generations=a.num_generations,
        max_completion_length=a.max_completion_length,
        learning_rate=a.learning_rate,
    )
    cfg_path = tmp / "bench.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))

    rows = []
    for k in [int(x) for x in a.staleness.split(",")]:
        res = run_pipeline(cfg_path, tmp / f"run_s{k}", k, env, a.set)
        rows.append(
            {
                **summarise(f"pipeline max_staleness={k}", res["metrics"], batch, a.warmup),
                "wall_s": res["wall_s"],
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    if not a.skip_trl:
        out = tmp / "trl.json"
        trl_env = {**env}
        trl_env.pop("OMP_NUM_THREADS")  # stock TRL as a user runs it: torch's default threads
        t0 = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                str(REPO / "bench" / "trl_baseline.py"),
                "--model",
                str(model),
                "--steps",
                str(a.steps),
                "--prompts-per-step",
                str(a.prompts_per_step),
                "--num-generations",
                str(a.num_generations),
                "--max-completion-length",
                str(a.max_completion_length),
                "--learning-rate",
                str(a.learning_rate),
                "--seed",
                str(a.seed),
                "--out",
                str(out),
                "--classes",
                ",".join(cfg["data"].get("classes") or ["digits", "lower", "upper"]),
            ],
            cwd=REPO,
            env=trl_env,
            check=True,
            capture_output=True,
            text=True,
        )
        trl = json.loads(out.read_text())
        steady = trl["step_s"][a.warmup :]
        rows.append(
            {
                "name": "stock TRL GRPOTrainer",
                "samples_per_s": batch / _mean(steady),
                "step_s": _mean(steady),
                "final_reward": _mean(trl["rewards"][-3:]),
                "first_reward": _mean(trl["rewards"][:3]),
                "rewards": [round(r, 3) for r in trl["rewards"]],
                "wall_s": time.perf_counter() - t0,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    base = {r["name"]: r["samples_per_s"] for r in rows}
    sync = base.get("pipeline max_staleness=0")
    trl = base.get("stock TRL GRPOTrainer")
    print(
        f"\nmodel {a.model}, {a.prompts_per_step} prompts x G={a.num_generations}, "
        f"{a.max_completion_length} completion tokens, {a.steps} steps (first {a.warmup} excluded), "
        f"seed {a.seed}"
    )
    print(
        "| variant | samples/s | vs sync | vs TRL | step s | wait rollout s | train s | weight sync s | reward first→last |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        vs_sync = f"{r['samples_per_s'] / sync:.2f}" if sync else "-"
        vs_trl = f"{r['samples_per_s'] / trl:.2f}" if trl else "-"
        print(
            f"| {r['name']} | {r['samples_per_s']:.2f} | {vs_sync} | {vs_trl} | {r['step_s']:.2f} | "
            f"{r.get('timing/wait_rollout_s', float('nan')):.2f} | {r.get('timing/train_s', float('nan')):.2f} | "
            f"{r.get('timing/weight_sync_s', float('nan')):.3f} | {r['first_reward']:.3f}→{r['final_reward']:.3f} |"
        )


if __name__ == "__main__":
    main()
