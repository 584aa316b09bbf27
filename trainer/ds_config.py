"""The DeepSpeed configuration of a trainer rank from the trainer section: ZeRO stage (by the
world size when not set), micro-batch and accumulation, clipping, precision, and the warm-up.

Owns: `build_ds_config`, the default ZeRO stage, warm-up steps. Does not know: the model, the
optimizer's construction (trainer.engine), process groups.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

from trainer.config import GRPOSettings


def build_ds_config(
    settings: GRPOSettings, world_size: int, ds_config: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The DeepSpeed config for `settings`: the user's (values "auto" filled in) or a ZeRO default.

    The batch keys always follow `settings` (the loop splits batches by them); a user config that
    states different ones is rejected rather than silently overridden.
    """

    user = ds_config
    if user is None and settings.deepspeed is not None:
        if isinstance(settings.deepspeed, dict):
            user = settings.deepspeed
        else:
            path = settings.deepspeed
            if not os.path.isfile(path):
                raise FileNotFoundError(f"trainer.deepspeed: config file {path!r} not found")
            with open(path, encoding="utf-8") as f:
                user = json.load(f)
    stage = default_zero_stage(settings, world_size)
    cfg: dict[str, Any] = (
        json.loads(json.dumps(user)) if user else {"zero_optimization": {"stage": stage}}
    )
    mbs, gas = settings.per_device_train_batch_size, settings.gradient_accumulation_steps
    wanted = {
        "train_micro_batch_size_per_gpu": mbs,
        "gradient_accumulation_steps": gas,
        "train_batch_size": mbs * gas * world_size,
    }
    for key, value in wanted.items():
        if cfg.get(key, "auto") not in ("auto", value):
            raise ValueError(
                f"trainer.deepspeed.{key}={cfg[key]!r} disagrees with the trainer settings ({value}): "
                "remove it or set it to 'auto'"
            )
        cfg[key] = value
    if cfg.get("gradient_clipping", "auto") == "auto":
        cfg["gradient_clipping"] = settings.max_grad_norm
    for key, on in (("bf16", settings.bf16), ("fp16", settings.fp16)):
        section = cfg.setdefault(key, {})
        if section.get("enabled", "auto") == "auto":
            section["enabled"] = on
    # A plain torch AdamW: DeepSpeed's fused CPU Adam would need a C++ build (~35 s) for no gain here.
    cfg.setdefault("zero_allow_untested_optimizer", True)
    cfg.setdefault("steps_per_print", 10**9)
    cfg.setdefault("wall_clock_breakdown", False)
    zero = cfg.setdefault("zero_optimization", {})
    if zero.get("stage", "auto") == "auto":
        zero["stage"] = stage
    return cfg


def default_zero_stage(settings: GRPOSettings, world_size: int) -> int:
    """`zero_stage`, or 0 for a single process (nothing to partition) and 2 for several."""
    if settings.zero_stage is not None:
        return settings.zero_stage
    return 0 if world_size == 1 else 2


def warmup_steps(settings: GRPOSettings, total_steps: int) -> int:
    if settings.warmup_steps > 0:
        return settings.warmup_steps
    return math.ceil(settings.warmup_ratio * total_steps)  # as transformers' get_warmup_steps
