"""Build the vLLM engine a sampler replica serves from.

Owns: turning `SamplerConfig` + a model folder into vLLM's `AsyncLLM` (the only module that imports
vLLM for serving), the CPU defaults measured on this machine (bounded KV cache, eager mode, no
torch.compile), and the worker extension hook used for weight updates.
Does not know: HTTP, versions, sampling requests.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sampler.config import SamplerConfig

CPU_DEFAULT_KV_CACHE_BYTES = 256 << 20
WORKER_EXTENSION = "sampler.weight_sync.WeightSyncExtension"


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def set_cpu_env() -> None:
    """Environment vLLM needs on CPU (must be set before vLLM is imported); keeps user overrides."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("TORCH_COMPILE_DISABLE", "1")
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def engine_kwargs(model: str | Path, cfg: SamplerConfig, *, on_gpu: bool) -> dict[str, Any]:
    """Pure mapping from our config to `AsyncEngineArgs` keyword arguments."""
    kw: dict[str, Any] = {
        "model": str(model),
        "tokenizer": str(model),
        "dtype": cfg.dtype,
        "seed": cfg.seed,
        "max_num_seqs": cfg.max_num_seqs,
        "enable_prefix_caching": cfg.enable_prefix_caching,
        "tensor_parallel_size": cfg.tensor_parallel_size,
        "worker_extension_cls": WORKER_EXTENSION,
        "enforce_eager": cfg.enforce_eager or not on_gpu,
        "disable_log_stats": True,
        "logprobs_mode": cfg.logprobs_mode,
    }
    if cfg.max_model_len is not None:
        kw["max_model_len"] = cfg.max_model_len
    if on_gpu:
        kw["gpu_memory_utilization"] = cfg.gpu_memory_utilization
        if cfg.kv_cache_memory_bytes is not None:
            kw["kv_cache_memory_bytes"] = cfg.kv_cache_memory_bytes
    else:
        kw["kv_cache_memory_bytes"] = cfg.kv_cache_memory_bytes or CPU_DEFAULT_KV_CACHE_BYTES
    return kw


def build_engine(model: str | Path, cfg: SamplerConfig) -> Any:
    """Start an `AsyncLLM` for `model` (a Hugging Face model folder). Heavy: seconds to minutes."""
    if not Path(model).is_dir():
        raise FileNotFoundError(
            f"--model {model}: not a model folder (expected config.json inside)"
        )
    on_gpu = cuda_available()
    if not on_gpu:
        set_cpu_env()
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

    args = AsyncEngineArgs(**engine_kwargs(model, cfg, on_gpu=on_gpu))
    return AsyncLLM.from_engine_args(args)


async def prepare_engine(engine: Any, cfg: SamplerConfig) -> None:
    """One-time set-up after the engine loaded the model: the CPU weight layout."""
    if not cuda_available():
        await engine.collective_rpc(
            "sampler_set_cpu_layout", kwargs={"layout": cfg.cpu_weight_layout}
        )
