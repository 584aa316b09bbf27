"""Start-up: seconds from the command to the first step line, this checkout vs a baseline commit.

    python bench/bench_startup.py --baseline main --repeats 3                # fresh and warm
    python bench/bench_startup.py --baseline 2959d9d --variant HEAD --modes warm --repeats 5

Runs the README's main job (`python -m trainer --config configs/local.yaml`, one step, no eval,
no MLflow model) from a copy of the baseline commit and from this checkout, alternately, in the
same venv, and prints per mode the median seconds to `step 1/`, the ratio variant/baseline and
every run's start-up phase lines. Each run gets a new output folder. The modes:

* `fresh`: also empty build caches: a new, empty TORCH_EXTENSIONS_DIR (where DeepSpeed's JIT ops
  are built) and VLLM_CACHE_ROOT per run, as on a machine that never ran the project;
* `warm`: one TORCH_EXTENSIONS_DIR and VLLM_CACHE_ROOT for all warm runs, filled by one
  untimed run of each side first: a second run on the same machine.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_pipeline import pipeline_env  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FIRST_STEP = "step 1/"
PHASE = re.compile(r"(start-up: [^:]+): ([\d.]+)s")


def checkout(ref: str, dest: Path) -> Path:
    """The tracked files of `ref` (the baseline's code runs from here, with this venv)."""
    dest.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "archive", ref], cwd=REPO, capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def time_to_first_step(code: Path, out: Path, caches: Path, timeout: float) -> dict:
    """One run of the main job from `code`; seconds from the command to its first step line."""
    env = {
        **pipeline_env(),
        "PYTHONPATH": str(code),  # the copy's modules, also in Ray's and vLLM's processes
        "TORCH_EXTENSIONS_DIR": str(caches / "torch_extensions"),
        "VLLM_CACHE_ROOT": str(caches / "vllm"),
    }
    cmd = [sys.executable, "-m", "trainer", "--config", "configs/local.yaml"]
    for s in (f"trainer.output_dir={out}", "trainer.max_steps=1", "trainer.eval_steps=null",
              "mlflow.log_model=false"):  # fmt: skip
        cmd += ["--set", s]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=code, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)  # fmt: skip
    first, lines = None, []
    for line in proc.stdout:
        lines.append(line)
        if first is None and line.startswith(FIRST_STEP):
            first = time.perf_counter() - t0
    rc = proc.wait(timeout=timeout)
    if rc != 0 or first is None:
        raise RuntimeError(f"run from {code} failed ({rc}):\n{''.join(lines[-40:])}")
    phases = {m[1]: float(m[2]) for m in map(PHASE.search, lines) if m}
    return {"first_step_s": first, "phases": phases}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--baseline", default="main", help="git ref of the code to compare with")
    ap.add_argument("--variant", default=None, help="git ref to measure (default: this checkout)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per side and mode")
    ap.add_argument("--modes", default="fresh,warm", help="comma-separated: fresh, warm")
    ap.add_argument("--timeout", type=float, default=600)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_startup_") as tmp:
        root = Path(tmp)
        sides = {
            "baseline": checkout(args.baseline, root / "baseline"),
            "variant": checkout(args.variant, root / "variant") if args.variant else REPO,
        }
        n = 0

        def run(side: str, caches: Path) -> dict:
            nonlocal n
            n += 1
            r = time_to_first_step(sides[side], root / f"out{n}", caches, args.timeout)
            print(f"  {side:8s} {r['first_step_s']:6.1f}s  {r['phases']}", flush=True)
            return r

        for mode in args.modes.split(","):
            print(f"{mode}:", flush=True)
            results: dict[str, list[float]] = {"baseline": [], "variant": []}
            warm = root / "warm_caches"
            if mode == "warm":
                for side in sides:  # untimed: fills the shared caches, as a first run would
                    run(side, warm)
            for i in range(args.repeats):
                for side in ("baseline", "variant") if i % 2 == 0 else ("variant", "baseline"):
                    caches = warm if mode == "warm" else root / f"caches{n + 1}"
                    results[side].append(run(side, caches)["first_step_s"])
            b, v = (statistics.median(results[s]) for s in ("baseline", "variant"))
            print(
                f"{mode}: seconds to step 1, median of {args.repeats}: baseline {b:.1f} "
                f"({', '.join(f'{x:.1f}' for x in results['baseline'])}), variant {v:.1f} "
                f"({', '.join(f'{x:.1f}' for x in results['variant'])}); variant/baseline "
                f"{v / b:.2f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
