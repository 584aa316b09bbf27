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

from sampler import step_gate
from sampler.config import SamplerConfig

CPU_DEFAULT_KV_CACHE_BYTES = 256 << 20
# What vLLM needs on CPU, set before vLLM is imported: the in-process engine core (no forked
# engine process) and no torch.compile. The one copy: `set_cpu_env`, `sampler.launch.child_env`
# and the driver's CPU replicas all read it.
CPU_VLLM_ENV: dict[str, str] = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "TORCH_COMPILE_DISABLE": "1"}
# One OpenMP thread per process unless the user says otherwise (CPU tests share a few cores).
CPU_THREAD_ENV: dict[str, str] = {"OMP_NUM_THREADS": "1"}
WORKER_EXTENSION = "sampler.weights.receiver.WeightSyncExtension"


def on_gpu() -> bool:
    """Whether vLLM will run this replica on a GPU, decided without touching CUDA.

    `torch.cuda.is_available()` before vLLM is imported initialises CUDA (vLLM sets
    PYTORCH_NVML_BASED_CUDA_CHECK=1 only on import), and vLLM then forks its engine core from a
    poisoned process: "Cannot re-initialize CUDA in forked subprocess". A CPU build of torch has
    no CUDA to ask; otherwise vLLM's own platform detection (NVML) answers.
    """
    import torch

    if torch.version.cuda is None and torch.version.hip is None:
        return False
    from vllm.platforms import current_platform

    return current_platform.is_cuda_alike()


def cpu_threads_bind(tensor_parallel_size: int, cores: list[int]) -> str:
    """`VLLM_CPU_OMP_THREADS_BIND` for `tensor_parallel_size` CPU workers: the allowed cores
    split into contiguous groups, one per worker ("0|1" for 2 workers on 2 cores). vLLM's own
    default ("auto") wants one NUMA node per worker, which one-socket machines do not have."""
    if len(cores) < tensor_parallel_size:
        raise ValueError(
            f"sampler.tensor_parallel_size {tensor_parallel_size} needs at least that many CPU "
            f"cores on CPU, this process may use {len(cores)}: lower it, or set "
            "VLLM_CPU_OMP_THREADS_BIND yourself"
        )
    cores = sorted(cores)
    per = len(cores) // tensor_parallel_size
    groups = [cores[i * per : (i + 1) * per] for i in range(tensor_parallel_size)]
    return "|".join(",".join(str(c) for c in g) for g in groups)


def set_cpu_env(tensor_parallel_size: int = 1) -> None:
    """Environment vLLM needs on CPU (must be set before vLLM is imported); keeps user overrides."""
    for key, value in {**CPU_VLLM_ENV, **CPU_THREAD_ENV}.items():
        os.environ.setdefault(key, value)
    if tensor_parallel_size > 1 and not os.environ.get("VLLM_CPU_OMP_THREADS_BIND"):
        cores = sorted(os.sched_getaffinity(0))
        os.environ["VLLM_CPU_OMP_THREADS_BIND"] = cpu_threads_bind(tensor_parallel_size, cores)


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
        # The trainer's requests (priority 0) go ahead of public ones (1) in vLLM's queue.
        "scheduling_policy": "priority",
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
    gpu = on_gpu()
    if not gpu:
        set_cpu_env(cfg.tensor_parallel_size)
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

    kw = engine_kwargs(model, cfg, on_gpu=gpu)
    if step_gate.enabled():  # tests only (see sampler/step_gate.py)
        kw["logits_processors"] = [step_gate.QUALNAME]
    args = AsyncEngineArgs(**kw)
    return AsyncLLM.from_engine_args(args)


async def prepare_engine(engine: Any, cfg: SamplerConfig) -> None:
    """One-time set-up after the engine loaded the model: the CPU weight layout."""
    if not on_gpu():
        from sampler.weights.rpc import raise_rpc_errors

        raise_rpc_errors(
            await engine.collective_rpc(
                "sampler_set_cpu_layout", kwargs={"layout": cfg.cpu_weight_layout}
            )
        )
