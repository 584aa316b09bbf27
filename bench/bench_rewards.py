"""Reward pool throughput vs in-process scoring, in one run (baseline measured in the same process).

Workloads:
- cheap: the built-in `accuracy` + `format` (regex) on MedMCQA-like completions (~1.5 kB);
- heavy: `heavy_reward` below, CPU-bound pure Python (~2 ms per item), loaded by the actors as a
  plugin (`bench_rewards:heavy_reward`, bench/ on the actors' PYTHONPATH).
Modes: in-process (`use_ray=False`), Ray pool with 1 and 2 workers, every reward on the actors
(`inline_builtins=False`; the default config scores built-ins in the driver, i.e. like in-process).
Timings are interleaved across modes (min and median of --repeats); "driver CPU" is the process
time of the calling process (what scoring costs the trainer's own CPU). Shapes:
- single calls of B items (`score`), B in --batch-sizes: median seconds per call;
- the trainer's pattern: --groups concurrent `ascore` calls of G=--group-size items (one per
  finished group), total wall time.
Prints seconds and ratios against in-process; speedup > 1 means the pool is faster.

    .venv/bin/python bench/bench_rewards.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import time
from pathlib import Path

BENCH_DIR = str(Path(__file__).resolve().parent)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def heavy_reward(prompts: list, completions: list, **_: object) -> list[float]:
    """A CPU-bound reward (stands in for code execution / model-based checks): ~2 ms per item."""
    out = []
    for c in completions:
        text = c if isinstance(c, str) else str(c)
        h = 0
        for _ in range(40):
            for ch in text[:500]:
                h = (h * 31 + ord(ch)) % 1_000_003
        out.append(h / 1_000_003)
    return out


def heavy_probe(prompts: list, completions: list, **_: object) -> list[float]:
    """`heavy_reward` that reports, in its first 3 items, its start and end time (epoch s) and
    the CPU seconds it used: shows whether two actors really ran at once, whatever the load."""
    t0, c0 = time.time(), time.process_time()
    heavy_reward(prompts, completions)
    return [t0, time.time(), time.process_time() - c0] + [0.0] * (len(completions) - 3)


def make_items(n: int, group: int = 16, seed: int = 0) -> tuple[list, list, dict]:
    """MedMCQA-shaped items: groups of `group` completions share one ~800-char chat prompt."""
    rng = random.Random(seed)
    words = [
        "the",
        "patient",
        "drug",
        "dose",
        "nerve",
        "artery",
        "enzyme",
        "deficiency",
        "syndrome",
        "therefore",
        "likely",
        "because",
    ]
    prompts, completions, sol, ids = [], [], [], []
    prompt, letter = None, "A"
    for i in range(n):
        if i % group == 0:
            letter = rng.choice("ABCD")
            question = " ".join(rng.choice(words) for _ in range(100))
            text = f"Instructions: think step by step.\n{question}?\nOptions:\nA. one\nB. two\nC. three\nD. four\n"
            prompt = [
                {"role": "user", "content": text}
            ]  # one object per group, as the trainer passes it
        think = " ".join(rng.choice(words) for _ in range(220))  # ~1.5 kB of reasoning
        answer = letter if rng.random() < 0.5 else rng.choice("ABCD")
        completions.append(
            f"<think>\n{think}\n</think>\n<answer>\nExplanation.\nFinal Answer: {answer}\n</answer>"
        )
        prompts.append(prompt)
        sol.append(letter)
        ids.append([rng.randrange(150_000) for _ in range(350)])  # ~350 tokens per completion
    cols = {"solution": sol, "id": [f"q{i // group}" for i in range(n)], "completion_ids": ids}
    return prompts, completions, cols


def _slice(items, batch: int) -> tuple[list, list, dict]:
    prompts, completions, cols = items
    return prompts[:batch], completions[:batch], {k: v[:batch] for k, v in cols.items()}


def _one_call(scorer, items, batch: int, r: int) -> tuple[float, float]:
    prompts, completions, cols = items
    a = (r * batch) % max(1, len(completions) - batch)
    sl = slice(a, a + batch)
    args = (prompts[sl], completions[sl], {k: v[sl] for k, v in cols.items()})
    t, c = time.perf_counter(), time.process_time()
    scorer.score(*args)
    return time.perf_counter() - t, time.process_time() - c


def _stream(scorer, items, groups: int, size: int) -> tuple[float, float]:
    prompts, completions, cols = items

    def part(i: int) -> tuple:
        sl = slice(i * size, (i + 1) * size)
        return prompts[sl], completions[sl], {k: v[sl] for k, v in cols.items()}

    async def run() -> None:
        await asyncio.gather(*(scorer.ascore(*part(i)) for i in range(groups)))

    t, c = time.perf_counter(), time.process_time()
    asyncio.run(run())
    return time.perf_counter() - t, time.process_time() - c


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 64, 256, 512])
    p.add_argument(
        "--groups", type=int, default=32, help="concurrent ascore calls in the stream test"
    )
    p.add_argument("--group-size", type=int, default=16)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--workloads", nargs="+", default=["cheap", "heavy"], choices=["cheap", "heavy"])
    p.add_argument("--quick", action="store_true", help="fewer repeats, for a smoke run")
    a = p.parse_args(argv)
    if a.quick:
        a.repeats, a.batch_sizes = 3, [16, 256]
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import ray

    from rewards import make_scorer
    from rewards.config import RewardPoolConfig

    # 3 logical CPUs so the 1-worker and 2-worker pools coexist and runs can be interleaved;
    # calls are sequential, so at most 2 actors compute at a time (the machine has 2 cores).
    ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False)
    n = max(max(a.batch_sizes) * 2, a.groups * a.group_size)
    items = make_items(n)
    funcs = {"cheap": ["accuracy", "format"], "heavy": ["bench_rewards:heavy_reward"]}
    sys.path.insert(0, BENCH_DIR)
    env = {"env_vars": {"PYTHONPATH": BENCH_DIR}}
    print(
        f"cpus={os.cpu_count()} load_before={os.getloadavg()} repeats={a.repeats} (min and median of interleaved runs)"
    )
    shapes = [f"B={b}" for b in a.batch_sizes] + [f"stream {a.groups}x{a.group_size}"]
    modes = ["in-process", "pool-1w", "pool-2w"]
    rows = []
    for wname in a.workloads:
        scorers = {
            "in-process": make_scorer(funcs[wname], None, RewardPoolConfig(use_ray=False)),
            "pool-1w": make_scorer(
                funcs[wname],
                None,
                RewardPoolConfig(
                    num_workers=1, timeout_s=120, runtime_env=env, inline_builtins=False
                ),
            ),
            "pool-2w": make_scorer(
                funcs[wname],
                None,
                RewardPoolConfig(
                    num_workers=2, timeout_s=120, runtime_env=env, inline_builtins=False
                ),
            ),
        }
        try:
            for sc in scorers.values():  # warm-up: imports, first calls
                _one_call(sc, items, a.batch_sizes[0], 0)
            for shape in shapes:
                times: dict[str, list[float]] = {m: [] for m in modes}
                cpu: dict[str, list[float]] = {m: [] for m in modes}
                for r in range(a.repeats):
                    for m in modes:  # interleaved, so load changes hit every mode alike
                        if shape.startswith("stream"):
                            wall, c = _stream(scorers[m], items, a.groups, a.group_size)
                        else:
                            wall, c = _one_call(scorers[m], items, int(shape[2:]), r)
                        times[m].append(wall)
                        cpu[m].append(c)
                rows.append((wname, shape, times, cpu))
        finally:
            for sc in scorers.values():
                sc.close()
    # Probe: do the 2 workers' pieces of one batch overlap, and how much CPU did each get?
    probe = make_scorer(
        ["bench_rewards:heavy_probe"],
        None,
        RewardPoolConfig(num_workers=2, timeout_s=120, runtime_env=env, inline_builtins=False),
    )
    probe_lines = []
    try:
        for b in (256, 512):
            t = time.time()
            v = probe.score(*_slice(items, b)).per_func["heavy_probe"]
            h = b // 2
            probe_lines.append(
                f"B={b}: wall {time.time() - t:.3f}s; piece 1 ran {v[0] - t:.3f}-{v[1] - t:.3f}s "
                f"using {v[2]:.3f} CPU s; piece 2 ran {v[h] - t:.3f}-{v[h + 1] - t:.3f}s using {v[h + 2]:.3f} CPU s"
            )
    finally:
        probe.close()
    print(f"load_after={os.getloadavg()}")
    print("parallelism probe (pool-2w, heavy):")
    for line in probe_lines:
        print("  " + line)
    print(
        f"\n{'workload':8} {'shape':15} {'stat':6} {'in-process s':>12} {'pool-1w s':>10} {'pool-2w s':>10} "
        f"{'2w speedup':>10} {'2w overhead':>11} {'driver CPU s in-proc / 2w':>26}"
    )
    for wname, shape, times, cpu in rows:
        for stat, f in (("min", min), ("median", statistics.median)):
            base, p1, p2 = (f(times[m]) for m in modes)
            c0, c2 = f(cpu["in-process"]), f(cpu["pool-2w"])
            print(
                f"{wname:8} {shape:15} {stat:6} {base:12.5f} {p1:10.5f} {p2:10.5f} {base / p2:9.2f}x "
                f"{(p2 - base) / base:+10.1%} {c0:12.5f} / {c2:10.5f}"
            )
    ray.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
