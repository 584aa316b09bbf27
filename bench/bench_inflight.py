"""In-flight weight updates vs drained ones on a long-tail workload (W2), and their learning.

    .venv/bin/python bench/bench_inflight.py --steps 10                 # throughput, W2, 25M
    .venv/bin/python bench/bench_inflight.py learning --seeds 1,2,3     # reward, configs/local.yaml

Throughput: one command runs the pipeline (`python -m trainer`) with `sampler.update_mode` drain
and inflight at each `--staleness` (drain first at each k, so the baseline is run in the same
command), on W2: the 25M model, completions that stop on a few token ids whose total probability
gives a mean of ~150 tokens with a geometric tail up to `max_completion_length` 1024
(`bench/presets.py` W2_WORKLOAD). The learning rate is tiny by default so the policy, and with it
the length distribution, stays W2 through every run. Per variant, over the steps after --warmup:
* samples/s: trained samples / mean step time;
* update latency p50/p95: the pusher's time from its start to the replica answering that the new
  version is live (`weight_sync/seconds`);
* bare transfer p50: the same push minus the replica's wait for a quiet engine
  (`weight_sync/replica_quiesce_seconds`: drain: the running requests finishing; inflight: the
  pause), i.e. what a push costs with nothing in flight;
* sampler degraded s/update: the replica's update window (`replica_update_seconds`), during which
  drain runs only its stragglers with admission closed (small batch, then idle while loading) and
  inflight generates nothing (pause + load); split as quiesce + load; and its share of run time.

Learning: configs/local.yaml (the embedded default) at max_staleness 1, drain and inflight per
seed; rewards per step, aligned by the version that generated each step's samples.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.bench_pipeline import (  # noqa: E402
    _mean,
    bench_run_config,
    pipeline_env,
    read_jsonl,
    run_pipeline,
)
from bench.presets import MODEL_PRESETS, W2_WORKLOAD, add_model_argument  # noqa: E402

MODES = ("drain", "inflight")


def _pct(xs: list[float], q: float) -> float:
    """Nearest-rank percentile (no interpolation: with ~10 pushes, p95 is the largest but none)."""
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def w2_config(a: argparse.Namespace, model: Path) -> dict:
    w = W2_WORKLOAD
    cfg = bench_run_config(
        model,
        batch=a.prompts_per_step * a.num_generations,
        max_model_len=w["max_prompt_length"] + w["max_completion_length"],
        steps=a.steps,
        seed=a.seed,
        num_generations=a.num_generations,
        max_prompt_length=w["max_prompt_length"],
        max_completion_length=w["max_completion_length"],
        generation_kwargs={"stop_token_ids": w["stop_token_ids"]},
        learning_rate=a.learning_rate,
    )
    # Two steps of full-length completions in flight must fit without preemption.
    cfg["sampler"]["kv_cache_memory_bytes"] = w["kv_cache_memory_bytes"]
    return cfg


def _met(m: dict) -> bool:
    """Whether the push found requests running on the replica."""
    return m.get("weight_sync/replica_requests_in_flight", 0) > 0


def summarise(name: str, metrics: list[dict], batch: int, warmup: int, wall: float) -> dict:
    steady = metrics[warmup:]
    pushes = [m for m in steady if "weight_sync/seconds" in m]
    lat = [m["weight_sync/seconds"] for m in pushes]
    quiet = [m.get("weight_sync/replica_quiesce_seconds", 0.0) for m in pushes]
    window = [m.get("weight_sync/replica_update_seconds", 0.0) for m in pushes]
    steps_s = sum(m["timing/step_s"] for m in steady)
    return {
        "name": name,
        "samples_per_s": batch / _mean([m["timing/step_s"] for m in steady]),
        "latency_p50": _pct(lat, 0.5),
        "latency_p95": _pct(lat, 0.95),
        "bare_p50": _pct([x - q for x, q in zip(lat, quiet, strict=True)], 0.5),
        "quiesce_s": _mean(quiet),
        "quiesce_met_s": _mean([q for m, q in zip(pushes, quiet, strict=True) if _met(m)]),
        "met_share": _mean([float(_met(m)) for m in pushes]),
        "load_s": _mean([w - q for w, q in zip(window, quiet, strict=True)]),
        "degraded_share": sum(window) / steps_s if steps_s else float("nan"),
        "in_flight": _mean([m.get("weight_sync/replica_requests_in_flight", 0) for m in pushes]),
        "mean_len": _mean([m["completions/mean_length"] for m in steady]),
        "max_len": max(m["completions/max_length"] for m in steady),
        "mixed": _mean([m.get("policy/mixed_version_fraction", 0.0) for m in steady]),
        "pushes": len(pushes),
        "wall_s": wall,
    }


def throughput(a: argparse.Namespace) -> None:
    from data.tiny_model import build_tiny_model

    env = pipeline_env()
    tmp = Path(tempfile.mkdtemp(prefix="bench_inflight_"))
    model = build_tiny_model(tmp / "model", seed=0, **MODEL_PRESETS[a.model])
    cfg_path = tmp / "w2.yaml"
    cfg_path.write_text(yaml.safe_dump(w2_config(a, model)))
    batch = a.prompts_per_step * a.num_generations
    rows = []
    for k in [int(x) for x in a.staleness.split(",")]:
        for mode in MODES:
            out = tmp / f"run_{mode}_k{k}"
            res = run_pipeline(cfg_path, out, k, env, [f"sampler.update_mode={mode}", *a.set])
            rows.append(
                {
                    "k": k,
                    "mode": mode,
                    **summarise(f"{mode} k={k}", res["metrics"], batch, a.warmup, res["wall_s"]),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    print(
        f"\nW2: model {a.model}, {a.prompts_per_step} prompts x G={a.num_generations}, stop ids "
        f"{W2_WORKLOAD['stop_token_ids']}, max {W2_WORKLOAD['max_completion_length']} tokens, "
        f"{a.steps} steps (first {a.warmup} excluded), lr {a.learning_rate}, seed {a.seed}"
    )
    print_table(rows)


def _run_rows(out: Path, name: str, warmup: int) -> dict:
    """`summarise` of a finished run's folder (its batch size from its resolved config)."""
    metrics = read_jsonl(out / "metrics.jsonl")
    t = yaml.safe_load((out / "resolved_config.yaml").read_text())["trainer"]
    return summarise(name, metrics, t["per_device_train_batch_size"], warmup, 0.0)


def report_throughput(tmp: Path, warmup: int) -> None:
    """The table of an earlier throughput command's folder (`--report DIR`)."""
    rows = []
    for out in sorted(tmp.glob("run_*_k*"), key=lambda p: (p.name[-1], p.name)):
        _, mode, k = out.name.split("_")
        rows.append({"k": int(k[1:]), "mode": mode, **_run_rows(out, f"{mode} {k}", warmup)})
    print_table(rows)


def print_table(rows: list[dict]) -> None:
    print(
        "| variant | samples/s | vs drain | update p50 s | p95 s | bare transfer p50 s | "
        "p95 / bare | degraded s/update (quiesce + load) | degraded share | pushes meeting "
        "requests | their quiesce s | mean / max length | mixed-version |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    base = {r["k"]: r for r in rows if r["mode"] == "drain"}
    for r in rows:
        b = base.get(r["k"])
        vs = f"{r['samples_per_s'] / b['samples_per_s']:.2f}" if b else "-"
        print(
            f"| {r['name']} | {r['samples_per_s']:.2f} | {vs} | {r['latency_p50']:.3f} | "
            f"{r['latency_p95']:.3f} | {r['bare_p50']:.3f} | "
            f"{r['latency_p95'] / r['bare_p50']:.2f} | "
            f"{r['quiesce_s'] + r['load_s']:.3f} ({r['quiesce_s']:.3f} + {r['load_s']:.3f}) | "
            f"{r['degraded_share']:.2f} | {r['met_share']:.2f} ({r['in_flight']:.1f} requests) | "
            f"{r['quiesce_met_s']:.3f} | {r['mean_len']:.0f} / {r['max_len']:.0f} | "
            f"{r['mixed']:.2f} |"
        )


def _by_version(out: Path) -> list[tuple[int, float, float]]:
    """(step, mean version of the step's groups, reward) per trained step (metrics.jsonl counts
    steps from 1, the audit log from 0)."""
    versions = {
        r["step"] + 1: _mean(r["versions"]) for r in read_jsonl(out / "trained_prompts.jsonl")
    }
    return [
        (m["step"], versions[m["step"]], m["reward"]) for m in read_jsonl(out / "metrics.jsonl")
    ]


def learning(a: argparse.Namespace) -> None:
    """configs/local.yaml as it is (tiny model, its own task and steps), k=1, both modes."""
    env = pipeline_env()
    tmp = Path(tempfile.mkdtemp(prefix="bench_inflight_learning_"))
    cfg = yaml.safe_load((REPO / "configs" / "local.yaml").read_text())
    cfg["data"]["eval_split"] = None  # eval costs time and is not what is compared
    cfg["trainer"].update(eval_steps=None, save_steps=10_000, log_completions=False)
    cfg["mlflow"]["log_model"] = False
    cfg_path = tmp / "local.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    for seed in [int(s) for s in a.seeds.split(",")]:
        for mode in MODES:
            out = tmp / f"{mode}_s{seed}"
            sets = [f"sampler.update_mode={mode}", f"trainer.seed={seed}", *a.set]
            run_pipeline(cfg_path, out, 1, env, sets)
            rewards = [round(r, 3) for *_, r in _by_version(out)]
            print(json.dumps({"seed": seed, "mode": mode, "rewards": rewards}), flush=True)
    report_learning(tmp)


def report_learning(tmp: Path) -> None:
    """The tables of a `learning` run's folder (`learning --report DIR` prints them again)."""
    table, rows = {}, []
    for out in sorted(tmp.glob("*_s*"), key=lambda p: (int(p.name.split("_s")[1]), p.name)):
        mode, seed = out.name.split("_s")
        table[(int(seed), mode)] = _by_version(out)
        rows.append({"k": int(seed), "mode": mode, **_run_rows(out, f"{mode} seed {seed}", 2)})
    last = max(s for steps in table.values() for s, *_ in steps)
    windows = [(lo, min(lo + 9, last)) for lo in range(1, last + 1, 10)]
    print("\nreward by the version that generated the samples (mean over the steps whose mean")
    print("generating version falls in the window), configs/local.yaml, max_staleness 1")
    print("| seed | mode | " + " | ".join(f"v {lo - 1}-{hi - 1}" for lo, hi in windows) + " |")
    print("|---|---|" + "---|" * len(windows))
    means = {m: [[] for _ in windows] for m in MODES}
    for (seed, mode), steps in table.items():
        cells = []
        for i, (lo, hi) in enumerate(windows):
            xs = [r for _, v, r in steps if lo - 1 <= v < hi]
            cells.append(f"{_mean(xs):.3f}")
            if xs:
                means[mode][i].append(_mean(xs))
        print(f"| {seed} | {mode} | " + " | ".join(cells) + " |")
    for mode in MODES:
        print(f"| mean | {mode} | " + " | ".join(f"{_mean(c):.3f}" for c in means[mode]) + " |")
    print('\nweight updates of the same runs ("vs drain": the same seed\'s drain run)')
    print_table(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="what")
    lp = sub.add_parser("learning", help="reward of drain vs inflight on configs/local.yaml, k=1")
    lp.add_argument("--seeds", default="1,2,3")
    for q in (p, lp):
        q.add_argument("--report", type=Path, help="print the tables of an earlier run's folder")
        q.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    add_model_argument(p, default="25m")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--prompts-per-step", type=int, default=2)
    p.add_argument("--num-generations", type=int, default=8)
    p.add_argument(
        "--learning-rate",
        type=float,
        default=1e-6,
        help="TRL's default; small enough that the completion lengths stay W2's",
    )
    p.add_argument("--staleness", default="1,2")
    p.add_argument("--seed", type=int, default=42)
    a = p.parse_args()
    if a.what == "learning":
        report_learning(a.report) if a.report else learning(a)
    else:
        report_throughput(a.report, a.warmup) if a.report else throughput(a)


if __name__ == "__main__":
    main()
