"""What a GPU sampler does first, checked on CPU: nothing touches CUDA before vLLM is imported.

On a GPU, `torch.cuda.is_available()` (or any CUDA query) before vLLM's import initialises CUDA,
and vLLM's engine core, forked by default, then dies with "Cannot re-initialize CUDA in forked
subprocess". This test traces every CUDA entry point of torch and builds a real (CPU) engine
through the sampler's own start-up path; a call made while vLLM is not imported yet fails it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.slow]

TRACED = textwrap.dedent("""
    import asyncio, json, sys
    import torch, torch.cuda
    calls = []
    def trace(name, fn):
        def wrapped(*a, **k):
            calls.append([name, "vllm" in sys.modules])
            return fn(*a, **k)
        return wrapped
    for name in ("is_available", "device_count", "init", "_lazy_init", "current_device",
                 "get_device_properties", "set_device", "mem_get_info", "synchronize"):
        setattr(torch.cuda, name, trace("torch.cuda." + name, getattr(torch.cuda, name)))
    if hasattr(torch._C, "_cuda_getDeviceCount"):  # CUDA builds only
        torch._C._cuda_getDeviceCount = trace("cudaGetDeviceCount", torch._C._cuda_getDeviceCount)

    import sampler.__main__  # the entry point's own imports
    from sampler.config import SamplerConfig
    from sampler.engine import build_engine, prepare_engine

    cfg = SamplerConfig(dtype="float32", max_model_len=256, kv_cache_memory_bytes=32 << 20)
    async def main():
        engine = build_engine(sys.argv[1], cfg)
        try:
            await prepare_engine(engine, cfg)
        finally:
            engine.shutdown()
    asyncio.run(main())
    print("CALLS " + json.dumps(calls), flush=True)
""")


def test_sampler_start_up_touches_no_cuda_before_vllm(tiny_model_dir):
    r = subprocess.run(
        [sys.executable, "-c", TRACED, str(tiny_model_dir)],
        cwd=REPO,
        env={**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-4000:]
    line = next(x for x in r.stdout.splitlines() if x.startswith("CALLS "))
    calls = json.loads(line.removeprefix("CALLS "))
    early = [name for name, vllm_imported in calls if not vllm_imported]
    assert early == [], f"CUDA queried before vLLM was imported: {early}"
