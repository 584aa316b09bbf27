"""The GRPO objective as pure tensor functions, numerically equal to TRL 1.16's GRPOTrainer.

Owns: per-token log-probabilities and entropies from logits, the vLLM truncated importance-sampling
(IS) ratio from the sampler's per-token logprobs, and the clipped surrogate loss with its four
normalisations (`grpo`, `bnpo`, `dr_grpo`, `dapo`), optional k3 KL to a reference, and the metrics
TRL logs (`clip_ratio/*`, `kl`, `entropy`, `sampling/*`).
Does not know: models, optimizers, DeepSpeed, process groups. Cross-rank reductions are the caller's
job: every metric comes back as a (sum, count) pair so the caller can reduce exactly like TRL does.

Shapes: B sequences, T completion positions (right-padded); `mask` is 1 on real completion tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch

LossType = Literal["grpo", "bnpo", "dr_grpo", "dapo"]
LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")
ISMode = Literal["token_truncate", "token_mask", "sequence_truncate", "sequence_mask"]
IS_MODES = ("token_truncate", "token_mask", "sequence_truncate", "sequence_mask")


# --------------------------------------------------------------------------- log-probs


def token_logps_and_entropy(
    logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0, chunk_rows: int = 4096
) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(target) and the entropy of softmax(logits / temperature), per position.

    `logits`: (..., V) already aligned with `targets` (...), i.e. logits[t] predicts targets[t].
    Computed in row chunks via logsumexp so the full log-softmax is never materialised twice.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    shape = targets.shape
    flat = logits.reshape(-1, logits.size(-1))
    idx = targets.reshape(-1)
    logps, ents = [], []
    for s in range(0, flat.size(0), chunk_rows):
        lg = flat[s : s + chunk_rows].float()
        if temperature != 1.0:
            lg = lg / temperature
        lse = torch.logsumexp(lg, dim=-1)
        logps.append(lg.gather(-1, idx[s : s + chunk_rows].unsqueeze(-1)).squeeze(-1) - lse)
        probs = torch.softmax(lg, dim=-1)
        ents.append(lse - (probs * lg).sum(-1))
    if not logps:  # empty batch
        empty = flat.new_zeros(0, dtype=torch.float32)
        return empty.reshape(shape), empty.reshape(shape)
    return torch.cat(logps).reshape(shape), torch.cat(ents).reshape(shape)


def completion_logps(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    logits_to_keep: int,
    temperature: float = 1.0,
    position_ids: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token logps and entropies of the last `logits_to_keep` tokens of `input_ids` under `model`.

    Positions whose token is padding (attention_mask 0) get logp 0 and entropy 0, as in TRL.
    Only the hidden states that predict completion tokens go through the LM head (`logits_to_keep`
    + 1 positions, the last dropped), which keeps the (B, T, V) logits small.
    """
    kwargs = {} if position_ids is None else {"position_ids": position_ids}
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        logits_to_keep=logits_to_keep + 1,
        use_cache=False,
        **kwargs,
    )
    logits = out.logits[:, :-1, :]
    targets = input_ids[:, -logits_to_keep:]
    logps, ent = token_logps_and_entropy(logits, targets, temperature)
    keep = attention_mask[:, -logits_to_keep:].bool()
    return logps.masked_fill(~keep, 0.0), ent.masked_fill(~keep, 0.0)


# --------------------------------------------------------------------------- IS correction


@dataclass(frozen=True)
class ISCorrection:
    """The truncated-IS ratio exp(logp_trainer - logp_sampler) after truncation or masking."""

    ratio: torch.Tensor  # (B, T) for token_* modes, (B, 1) for sequence_* modes
    metrics: dict[str, float]  # TRL's `sampling/...` names (this rank only)


def importance_sampling_ratio(
    old_logps: torch.Tensor,
    sampler_logps: torch.Tensor,
    mask: torch.Tensor,
    mode: ISMode = "sequence_mask",
    clip_min: float | None = None,
    clip_max: float | None = 3.0,
) -> ISCorrection:
    """TRL's vLLM IS correction: ratio of the trainer's (old) to the sampler's token probabilities.

    token_* modes: one ratio per token; sequence_* modes: exp(sum of masked log-ratio differences).
    *_truncate clamps the ratio into [clip_min, clip_max]; *_mask sets ratios outside it to 0 (the
    token/sequence is dropped from the loss). NaN sampler logprobs (unknown) count as ratio 1.
    """
    if mode not in IS_MODES:
        raise ValueError(
            f"vllm_importance_sampling_mode={mode!r} is unknown: use one of {', '.join(IS_MODES)}"
        )
    old_logps = old_logps.detach()
    diff = torch.nan_to_num((old_logps - sampler_logps) * mask, nan=0.0)
    sequence_level = mode.startswith("sequence")
    ratio = torch.exp(diff.sum(-1, keepdim=True) if sequence_level else diff)
    if mode.endswith("truncate"):
        ratio = torch.clamp(ratio, min=clip_min, max=clip_max)
    else:
        lo = -math.inf if clip_min is None else clip_min
        hi = math.inf if clip_max is None else clip_max
        ratio = ratio.masked_fill((ratio < lo) | (ratio > hi), 0.0)
    # Stats as TRL logs them: difference over real tokens with known sampler logprobs.
    bmask = mask.bool()
    delta = (old_logps - sampler_logps).abs()[bmask]
    delta = delta[~torch.isnan(delta)]
    flat = ratio.flatten() if sequence_level else ratio[bmask]
    metrics = {
        "sampling/sampling_logp_difference/mean": delta.mean().item() if delta.numel() else 0.0,
        "sampling/sampling_logp_difference/max": delta.max().item() if delta.numel() else 0.0,
        "sampling/importance_sampling_ratio/min": flat.min().item() if flat.numel() else 0.0,
        "sampling/importance_sampling_ratio/mean": flat.mean().item() if flat.numel() else 0.0,
        "sampling/importance_sampling_ratio/max": flat.max().item() if flat.numel() else 0.0,
    }
    return ISCorrection(ratio=ratio, metrics=metrics)


# --------------------------------------------------------------------------- loss


@dataclass
class LossOutput:
    """The micro-batch loss to backpropagate, and metric partial sums for cross-rank reduction."""

    loss: torch.Tensor  # scalar; already divided for gradient accumulation like TRL's
    # name -> (sum over this micro-batch's real tokens, token count); reduce both over ranks, then divide
    token_sums: dict[str, tuple[float, float]] = field(default_factory=dict)

    def local_metrics(self) -> dict[str, float]:
        """Metrics of this micro-batch on this rank alone (sum / count)."""
        return {k: s / max(c, 1.0) for k, (s, c) in self.token_sums.items()}


def grpo_loss(
    logps: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    loss_type: LossType = "dapo",
    epsilon_low: float = 0.2,
    epsilon_high: float | None = None,
    old_logps: torch.Tensor | None = None,
    beta: float = 0.0,
    ref_logps: torch.Tensor | None = None,
    is_ratio: torch.Tensor | None = None,
    entropies: torch.Tensor | None = None,
    max_completion_length: int | None = None,
    num_items_in_batch: float | torch.Tensor | None = None,
    num_processes: int = 1,
    gradient_accumulation_steps: int = 1,
) -> LossOutput:
    """TRL 1.16's clipped GRPO loss for one micro-batch.

    `logps`: (B, T) current policy logps (with grad). `old_logps`: logps of the policy that the
    batch is "on" (default: `logps.detach()`, exact when each batch gets one optimizer step).
    `advantages`: (B,) or (B, T). `is_ratio`: the vLLM IS ratio from `importance_sampling_ratio`
    (multiplies the per-token loss). `beta` > 0 adds beta * k3-KL to `ref_logps`.

    Normalisation (gradient accumulation included, as in TRL, so summing the micro-batch losses of
    one optimizer step gives the step's objective):
      grpo    mean over sequences of the per-sequence token mean, / accumulation steps
      bnpo    token mean over the micro-batch, / accumulation steps
      dr_grpo token sum / (B * max_completion_length), / accumulation steps
      dapo    token sum / (num_items_in_batch / num_processes), where num_items_in_batch is the
              number of loss tokens in the whole optimizer step over all processes
    """
    _check_args(logps, mask, loss_type, beta, ref_logps, max_completion_length, num_items_in_batch)
    eps_high = epsilon_low if epsilon_high is None else epsilon_high
    mask = mask.to(logps.dtype)
    adv = advantages.unsqueeze(1) if advantages.dim() == 1 else advantages
    old = logps.detach() if old_logps is None else old_logps

    coef_1 = torch.exp(logps - old)
    coef_2 = torch.clamp(coef_1, 1 - epsilon_low, 1 + eps_high)
    per_token = -torch.min(coef_1 * adv, coef_2 * adv)
    if is_ratio is not None:
        per_token = per_token * is_ratio
    if beta != 0.0:
        d = ref_logps - logps
        per_token_kl = torch.exp(d) - d - 1  # k3 estimator of KL(pi || ref)
        per_token = per_token + beta * per_token_kl

    loss = _normalise(
        per_token * mask,
        mask,
        loss_type,
        max_completion_length,
        num_items_in_batch,
        num_processes,
        gradient_accumulation_steps,
    )
    with torch.no_grad():
        sums = _clip_sums(coef_1, adv, mask, epsilon_low, eps_high)
        count = mask.sum().item()
        if entropies is not None:
            sums["entropy"] = ((entropies * mask).sum().item(), count)
        if beta != 0.0:
            sums["kl"] = ((per_token_kl * mask).sum().item(), count)
    return LossOutput(loss=loss, token_sums=sums)


def _check_args(
    logps: torch.Tensor,
    mask: torch.Tensor,
    loss_type: str,
    beta: float,
    ref_logps: torch.Tensor | None,
    max_completion_length: int | None,
    num_items_in_batch: float | torch.Tensor | None,
) -> None:
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type={loss_type!r} is unknown: use one of {', '.join(LOSS_TYPES)}")
    if logps.shape != mask.shape:
        raise ValueError(
            f"logps {tuple(logps.shape)} and mask {tuple(mask.shape)} must have the same shape"
        )
    if beta != 0.0 and ref_logps is None:
        raise ValueError("beta != 0 needs ref_logps (the reference model's per-token logps)")
    if loss_type == "dr_grpo" and not max_completion_length:
        raise ValueError("loss_type='dr_grpo' needs max_completion_length")
    if loss_type == "dapo" and num_items_in_batch is None:
        raise ValueError(
            "loss_type='dapo' needs num_items_in_batch (loss tokens in the optimizer step, all ranks)"
        )


def _normalise(
    masked: torch.Tensor,
    mask: torch.Tensor,
    loss_type: str,
    max_completion_length: int | None,
    num_items_in_batch: float | torch.Tensor | None,
    num_processes: int,
    gradient_accumulation_steps: int,
) -> torch.Tensor:
    """The micro-batch loss from the masked per-token losses, by `loss_type` (see grpo_loss)."""
    if loss_type == "grpo":
        per_seq = masked.sum(-1) / mask.sum(-1).clamp(min=1.0)
        return per_seq.mean() / gradient_accumulation_steps
    if loss_type == "bnpo":
        return masked.sum() / mask.sum().clamp(min=1.0) / gradient_accumulation_steps
    if loss_type == "dr_grpo":
        return masked.sum() / (masked.size(0) * max_completion_length) / gradient_accumulation_steps
    n = torch.as_tensor(num_items_in_batch, dtype=masked.dtype, device=masked.device)  # dapo
    return masked.sum() / (n.clamp(min=1.0) / num_processes)


def _clip_sums(
    coef_1: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor, eps_low: float, eps_high: float
) -> dict[str, tuple[float, float]]:
    """(sum, count) of the tokens clipped below, above, and either (TRL's clip_ratio metrics)."""
    count = mask.sum().item()
    low = ((coef_1 < 1 - eps_low) & (adv < 0)).to(mask.dtype)
    high = ((coef_1 > 1 + eps_high) & (adv > 0)).to(mask.dtype)
    region = torch.clamp(low + high, max=1.0)
    return {
        "clip_ratio/low_mean": ((low * mask).sum().item(), count),
        "clip_ratio/high_mean": ((high * mask).sum().item(), count),
        "clip_ratio/region_mean": ((region * mask).sum().item(), count),
    }
