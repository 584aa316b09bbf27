"""Benchmark of trainer.engine.PolicyEngine: one GRPO optimizer step and one full-weight export.

Runs `--world` gloo ranks (trainer.dist_launch) on a random-init Qwen2 (tiny, or ~25M parameters
like the DESIGN workload) for each variant (ZeRO stage x AdamW implementation) in the same command,
and prints per-step time, trained tokens/s, and the time of `iter_named_params_for_sync` (what each
weight push costs on the trainer side), with ratios against the first variant (the baseline).

    .venv/bin/python bench/bench_engine.py --model tiny
    .venv/bin/python bench/bench_engine.py --model 25m --steps 3
    # one trainer process, as the local pipeline runs it: ZeRO-2 vs 0, per-tensor vs fused AdamW
    .venv/bin/python bench/bench_engine.py --model 25m --world 1 --threads 2 --mbs 16 --gas 1 \\
        --steps 5 --variants 2:adamw_torch,0:adamw_torch,2:adamw_torch_fused,0:adamw_torch_fused
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _samples(seed: int, n: int, g: int, prompt_len: int, completion_len: int, vocab: int) -> list:
    from trainer.types import ScoredSample

    rng = random.Random(seed)
    out = []
    for i in range(n):
        out.append(
            ScoredSample(
                prompt_id=f"p{seed}-{i // g}",
                group_index=i % g,
                prompt_token_ids=[rng.randrange(5, vocab) for _ in range(prompt_len)],
                completion_token_ids=[rng.randrange(5, vocab) for _ in range(completion_len)],
                sampler_logprobs=[-rng.uniform(5, 8) for _ in range(completion_len)],
                finish_reason="length",
                policy_version=0,
                reward=float(rng.random()),
                advantage=rng.gauss(0, 1),
            )
        )
    return out


def _rank(
    model_dir: str, stage: int, optim: str, mbs: int, gas: int, steps: int, completion_len: int
) -> dict:
    import torch.distributed as dist

    from trainer.batch import collate
    from trainer.config import GRPOSettings, ModelConfig
    from trainer.engine import PolicyEngine

    settings = GRPOSettings(
        learning_rate=1e-5,
        per_device_train_batch_size=mbs,
        gradient_accumulation_steps=gas,
        num_generations=8,
        max_completion_length=completion_len,
        zero_stage=stage,
        optim=optim,
    )
    t0 = time.perf_counter()
    eng = PolicyEngine(
        model_dir, settings, ModelConfig(name_or_path=model_dir), total_steps=steps + 1
    )
    init_s = time.perf_counter() - t0
    pad, vocab = eng.tokenizer.pad_token_id, len(eng.tokenizer)
    rank = dist.get_rank()
    step_s, sync_s = [], []
    for step in range(steps + 1):  # step 0 is warm-up
        batch = collate(_samples(1000 * step + rank, mbs * gas, 8, 40, completion_len, vocab), pad)
        dist.barrier()
        t0 = time.perf_counter()
        eng.train_step(batch)
        dist.barrier()
        t1 = time.perf_counter()
        n = sum(1 for _ in eng.iter_named_params_for_sync(bucket_bytes=64 << 20))
        dist.barrier()
        t2 = time.perf_counter()
        if step:
            step_s.append(t1 - t0)
            sync_s.append(t2 - t1)
    params = sum(p.ds_numel if stage == 3 else p.numel() for p in eng.module.parameters())
    return {"init_s": init_s, "step_s": step_s, "sync_s": sync_s, "tensors": n, "params": params}


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    from bench.presets import MODEL_PRESETS, add_model_argument

    add_model_argument(ap, default="tiny")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--mbs", type=int, default=4, help="per_device_train_batch_size")
    ap.add_argument("--gas", type=int, default=2, help="gradient_accumulation_steps")
    ap.add_argument("--completion-len", type=int, default=128)
    ap.add_argument("--world", type=int, default=2, help="trainer processes (gloo ranks)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process")
    ap.add_argument(
        "--variants",
        default="2:adamw_torch_fused,3:adamw_torch_fused",
        help="comma-separated STAGE:OPTIM; the first is the baseline of the ratios",
    )
    args = ap.parse_args()
    os.environ.setdefault(
        "TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "grpo-service" / "torch_extensions")
    )
    from data.tiny_model import build_tiny_model
    from trainer.dist_launch import run_distributed

    variants = [(int(v.split(":")[0]), v.split(":")[1]) for v in args.variants.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = str(build_tiny_model(Path(tmp) / "model", seed=0, **MODEL_PRESETS[args.model]))
        env = {"OMP_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false"}
        res = {}
        for stage, optim in variants:
            r = run_distributed(
                _rank, args.world, model_dir, stage, optim, args.mbs, args.gas, args.steps,
                args.completion_len, timeout_s=900, env=env,
            )  # fmt: skip
            res[stage, optim] = r[0]
    samples = args.world * args.mbs * args.gas
    tokens = samples * args.completion_len
    first = res[variants[0]]
    print(f"model={args.model} params={first['params']:,} world={args.world} (gloo, CPU) "
          f"threads={args.threads} samples/step={samples} completion_len={args.completion_len} "
          f"steps={args.steps} load={os.getloadavg()[0]:.2f}")  # fmt: skip
    base_st = statistics.median(first["step_s"])
    base_sy = statistics.median(first["sync_s"])
    for (stage, optim), r in res.items():
        st, sy = statistics.median(r["step_s"]), statistics.median(r["sync_s"])
        print(
            f"ZeRO-{stage} {optim}: init {r['init_s']:.2f}s  train_step {st:.3f}s "
            f"({tokens / st:,.0f} completion tok/s, {samples / st:.2f} samples/s, "
            f"{st / base_st:.2f}x baseline)  iter_named_params_for_sync {sy * 1000:.1f} ms "
            f"({sy / base_sy:.2f}x, {r['tensors']} tensors)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
