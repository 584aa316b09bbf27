"""Grouped-route throughput (tokens/s) vs the same vLLM AsyncLLM called in-process.

One command runs both on the same model, prompts, n, max_tokens and seeds: first the baseline
(`AsyncLLM.generate` in this process, FINAL_ONLY, logprobs=0, one request per prompt, all prompts
concurrent) and a real `python -m sampler` replica driven through `SamplerClient.generate`
(HTTP + JSON + admission gate), alternating run by run after one warm-up each. Prints generated
tokens/s of each run, and the median ratio server/baseline over the paired runs (goal >= 0.95).

    .venv/bin/python bench/bench_sampler_throughput.py --model 25m
    .venv/bin/python bench/bench_sampler_throughput.py --model tiny
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def prompts_for(n_prompts: int) -> list[list[int]]:
    return [[10 + i, 20 + i, 30 + i, 40 + i, 50 + i, 60 + i] for i in range(n_prompts)]


async def run_both(model: Path, prompts, n: int, max_tokens: int, repeats: int, log_dir: str):
    """Alternate baseline and server runs (same seeds) so load drift from other processes on
    the machine hits both alike; only one engine generates at a time. Returns paired tok/s."""
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    from sampler.client import SamplerClient, SamplingSpec
    from sampler.config import SamplerConfig
    from sampler.engine import build_engine, prepare_engine
    from sampler.launch import start_sampler

    sp = start_sampler(model, log_dir=log_dir, extra_args=["--dtype", "float32"])
    client = SamplerClient([sp.url])
    cfg = SamplerConfig(dtype="float32")
    engine = build_engine(model, cfg)
    await prepare_engine(engine, cfg)  # the server's CPU weight layout, so only HTTP differs
    pairs = []
    try:
        for r in range(repeats + 1):  # r == 0 warms both up
            params = SamplingParams(
                n=n,
                temperature=1.0,
                max_tokens=max_tokens,
                logprobs=0,
                seed=r,
                output_kind=RequestOutputKind.FINAL_ONLY,
            )

            async def one(i, p, params=params, r=r):
                final = None
                async for out in engine.generate({"prompt_token_ids": p}, params, f"b{r}-{i}"):
                    final = out
                return sum(len(c.token_ids) for c in final.outputs)

            t0 = time.perf_counter()
            btoks = sum(await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts))))
            bdt = time.perf_counter() - t0
            spec = SamplingSpec(max_tokens=max_tokens, temperature=1.0, seed=r)
            t0 = time.perf_counter()
            groups = await client.generate(prompts, n, spec)
            sdt = time.perf_counter() - t0
            stoks = sum(len(c.token_ids) for g in groups for c in g.completions)
            if r:
                pairs.append((btoks / bdt, stoks / sdt))
                print(
                    f"  run {r}: baseline {btoks} tok in {bdt:.3f}s = {btoks / bdt:,.0f} tok/s | "
                    f"server {stoks} tok in {sdt:.3f}s = {stoks / sdt:,.0f} tok/s | "
                    f"ratio {(stoks / sdt) / (btoks / bdt):.3f}"
                )
    finally:
        engine.shutdown()
        await client.aclose()
        sp.stop()
    return pairs


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    from bench.presets import MODEL_PRESETS, add_model_argument

    add_model_argument(p, default="25m")
    p.add_argument("--prompts", type=int, default=2)
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()
    from data.tiny_model import build_tiny_model
    from sampler.engine import set_cpu_env

    set_cpu_env()
    with tempfile.TemporaryDirectory() as tmp:
        model = build_tiny_model(Path(tmp) / "m", seed=0, **MODEL_PRESETS[a.model])
        prompts = prompts_for(a.prompts)
        print(
            f"model={a.model} prompts={a.prompts} n={a.n} max_tokens={a.max_tokens} repeats={a.repeats}"
        )
        pairs = asyncio.run(run_both(model, prompts, a.n, a.max_tokens, a.repeats, tmp))
    base = statistics.median(b for b, _ in pairs)
    srv = statistics.median(s for _, s in pairs)
    ratio = statistics.median(s / b for b, s in pairs)
    print(f"baseline in-process AsyncLLM: median {base:,.0f} tok/s")
    print(f"sampler grouped route (HTTP):  median {srv:,.0f} tok/s")
    print(f"ratio server/baseline: median of paired runs {ratio:.3f} (goal >= 0.95)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
