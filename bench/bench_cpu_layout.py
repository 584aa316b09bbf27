"""Generation speed of vLLM on CPU with the plain vs the packed weight layout, one process.

`sampler.cpu_weight_layout` trades generation speed for update speed (see sampler/cpu_layout.py):
this measures the generation side. One in-process vLLM engine (float32, eager) generates the
same batch first with vLLM's prepacked oneDNN weights, then after switching the same engine to
the plain layout (`sampler_set_cpu_layout`), alternating `--rounds` times. Prints seconds per
batch and the ratio plain/packed (>1: plain is slower). The update side is measured by
bench_sampler_weight_sync.py.

    .venv/bin/python bench/bench_cpu_layout.py --model 25m
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    from bench.presets import MODEL_PRESETS, add_model_argument

    add_model_argument(p, default="25m")
    p.add_argument("--prompts", type=int, default=2)
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args()
    from sampler.engine import CPU_THREAD_ENV, CPU_VLLM_ENV

    os.environ.update({**CPU_VLLM_ENV, **CPU_THREAD_ENV})
    from vllm import LLM, SamplingParams

    from data.tiny_model import build_tiny_model
    from sampler.engine import WORKER_EXTENSION

    model = build_tiny_model(Path(tempfile.mkdtemp()) / "m", seed=0, **MODEL_PRESETS[a.model])
    llm = LLM(
        model=str(model),
        dtype="float32",
        enforce_eager=True,
        kv_cache_memory_bytes=256 << 20,
        worker_extension_cls=WORKER_EXTENSION,
        seed=0,
    )
    prompts = [
        {"prompt_token_ids": [1 + (i * 7 + j) % 200 for j in range(40)]} for i in range(a.prompts)
    ]
    params = SamplingParams(
        n=a.n, max_tokens=a.max_tokens, min_tokens=a.max_tokens, temperature=1.0, seed=0
    )
    llm.generate(prompts[:1], SamplingParams(max_tokens=4), use_tqdm=False)  # warm-up

    def batch() -> float:
        t0 = time.perf_counter()
        llm.generate(prompts, params, use_tqdm=False)
        return time.perf_counter() - t0

    packed = [batch() for _ in range(a.rounds)]
    switch = llm.collective_rpc("sampler_set_cpu_layout", kwargs={"layout": "plain"})[0]
    plain = [batch() for _ in range(a.rounds)]
    tokens = a.prompts * a.n * a.max_tokens
    print(
        f"model={a.model} batch={a.prompts}x{a.n}x{a.max_tokens} tokens={tokens} "
        f"rounds={a.rounds}; switch to plain {switch['seconds']:.2f}s "
        f"({int(switch['direct_targets'])} tensors placed directly)"
    )
    print("packed s: " + " ".join(f"{x:.2f}" for x in packed))
    print("plain  s: " + " ".join(f"{x:.2f}" for x in plain))
    ratio = statistics.median(plain) / statistics.median(packed)
    print(f"median plain/packed generation time: {ratio:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
