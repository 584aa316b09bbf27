"""The policy a trainer rank trains, before DeepSpeed wraps it: the model (LoRA-wrapped with
`model.use_peft`) in train mode without dropout, the frozen reference when the KL term needs
one, and the AdamW optimizer.

Owns: how the model folder is loaded (dtype, attention implementation, gradient checkpointing),
LoRA, the reference, the optimizer's parameter groups. Does not know: DeepSpeed, training steps.
"""

from __future__ import annotations

from typing import Any

import torch

from trainer.config import GRPOSettings, ModelConfig

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_policy(
    model_path: str, settings: GRPOSettings, model_cfg: ModelConfig
) -> tuple[torch.nn.Module, torch.nn.Module | None]:
    """The trainable policy (LoRA-wrapped with use_peft) in train mode without dropout, and the
    frozen reference when beta > 0 without LoRA (with LoRA it is the base, adapters disabled)."""
    from transformers import AutoModelForCausalLM

    dtype = (
        _DTYPES.get(model_cfg.torch_dtype, torch.float32)
        if model_cfg.torch_dtype != "auto"
        else "auto"
    )
    load_kw: dict[str, Any] = {"dtype": dtype}
    if model_cfg.attn_implementation:
        load_kw["attn_implementation"] = model_cfg.attn_implementation
    model = AutoModelForCausalLM.from_pretrained(model_path, **load_kw)
    if settings.gradient_checkpointing:
        model.gradient_checkpointing_enable(
            gradient_checkpointing_kwargs=settings.gradient_checkpointing_kwargs
        )
        if model_cfg.use_peft:  # frozen embeddings: checkpointed blocks need inputs with grad
            model.enable_input_require_grads()
    ref_model = None
    if model_cfg.use_peft:
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(
            r=model_cfg.lora_r,
            lora_alpha=model_cfg.lora_alpha,
            lora_dropout=model_cfg.lora_dropout,
            target_modules=model_cfg.lora_target_modules or "all-linear",
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, lora)
    elif settings.beta != 0.0:
        ref_model = AutoModelForCausalLM.from_pretrained(model_path, **load_kw).eval()
        ref_model.requires_grad_(False)
    model.train()
    # dropout off, as TRL's disable_dropout: logps must be deterministic
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    return model, ref_model


def make_optimizer(model: torch.nn.Module, settings: GRPOSettings) -> torch.optim.Optimizer:
    """AdamW as TRL's default: weight decay on matrices only."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    return torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": settings.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=settings.learning_rate,
        betas=(settings.adam_beta1, settings.adam_beta2),
        eps=settings.adam_epsilon,
        fused=settings.optim == "adamw_torch_fused",
    )
