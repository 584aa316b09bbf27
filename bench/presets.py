"""Model-size presets of the CPU benchmarks: one table, one flag (`--model NAME`).

Owns: `MODEL_PRESETS` (keyword arguments of `data.tiny_model.build_tiny_model` per size) and
`add_model_argument`. Does not know: what a benchmark measures.
"""

from __future__ import annotations

import argparse
from typing import Any

MODEL_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {},  # build_tiny_model's defaults: hidden 128, 2 layers
    "25m": {"hidden_size": 512, "num_layers": 8, "num_heads": 8, "num_kv_heads": 2},
    # ~98M parameters (392 MB float32): 11 layers of hidden 1024, 16 heads, 4 kv heads.
    "100m": {"hidden_size": 1024, "num_layers": 11, "num_heads": 16, "num_kv_heads": 4},
}


def add_model_argument(parser: argparse.ArgumentParser, default: str) -> None:
    """`--model NAME` (a preset); `--model-size` is the same flag's former spelling."""
    parser.add_argument(
        "--model",
        "--model-size",
        dest="model",
        choices=sorted(MODEL_PRESETS),
        default=default,
        help="model-size preset (bench/presets.py)",
    )


# W2, the long-tail workload of bench/bench_inflight.py: on the "25m" model (built with seed 0)
# these ids plus eos have ~1/150 of the probability per token, so completion lengths spread from
# a few tokens to the cap with a long tail. Measured and chosen by bench/w2_stop_tokens.py
# (docs/benchmarks.md, section 8); rerun it when the tiny model's build or tokenizer changes.
W2_WORKLOAD: dict[str, Any] = {
    "stop_token_ids": [411],
    "max_completion_length": 1024,
    "max_prompt_length": 128,
    # KV of two steps of 16 full-length completions (8 KiB per token on the 25m model) with room
    "kv_cache_memory_bytes": 512 << 20,
}
