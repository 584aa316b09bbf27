"""From scored samples to padded training tensors, and from a batch to micro-batches.

Owns: `TrainBatch` (the tensors one trainer process trains on for one optimizer step), `collate`
(prompts left-padded and completions right-padded, like TRL, so every completion starts at the
same column), which completions count in the loss (`in_loss`, `loss_tokens`) and
`split_micro_batches`.
Does not know: models, losses, where samples come from, or how batches are spread over ranks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

import torch

from trainer.types import ScoredSample


@dataclass
class TrainBatch:
    """Padded tensors for B completions. P prompt columns (left-padded), T completion columns."""

    input_ids: torch.Tensor  # (B, P+T) long: prompt (left pad) + completion (right pad)
    attention_mask: torch.Tensor  # (B, P+T) long: 1 on real tokens attended to
    completion_mask: torch.Tensor  # (B, T) long: 1 on completion tokens that count in the loss
    # (B, T) float32: the sampler's logprob of each completion token (0 on padding, NaN if unknown)
    sampler_logprobs: torch.Tensor
    advantages: torch.Tensor  # (B,) float32
    truncated: torch.Tensor  # (B,) bool: finish_reason == "length"
    policy_versions: torch.Tensor  # (B,) long: sampler weights version that generated each sample
    position_ids: torch.Tensor  # (B, P+T) long: 0 at each sequence's first real token (like vLLM)
    prompt_ids: list[str]  # the data row id of each sample

    @property
    def size(self) -> int:
        return int(self.input_ids.size(0))

    @property
    def completion_length(self) -> int:
        return int(self.completion_mask.size(1))

    @property
    def num_loss_tokens(self) -> int:
        return int(self.completion_mask.sum().item())

    def slice(self, start: int, end: int) -> TrainBatch:
        """Rows [start, end) of every tensor (views; padding columns are kept)."""
        kw = {}
        for f in fields(self):
            v = getattr(self, f.name)
            kw[f.name] = v[start:end]
        return TrainBatch(**kw)

    def to(self, device: torch.device | str) -> TrainBatch:
        moved = {
            f.name: getattr(self, f.name).to(device)
            for f in fields(self)
            if isinstance(getattr(self, f.name), torch.Tensor)
        }
        return replace(self, **moved)


def in_loss(sample: ScoredSample, mask_truncated: bool) -> bool:
    """Whether a completion's tokens count in the loss: trainable, and not a masked truncation."""
    return sample.trainable and not (mask_truncated and sample.truncated)


def loss_tokens(samples: list[ScoredSample], mask_truncated: bool) -> int:
    """Loss tokens of `samples` (dapo's normaliser for the whole step)."""
    return sum(len(s.completion_token_ids) for s in samples if in_loss(s, mask_truncated))


def collate(
    samples: list[ScoredSample],
    pad_token_id: int,
    *,
    mask_truncated_completions: bool = False,
    pad_to_multiple_of: int | None = None,
) -> TrainBatch:
    """Pad `samples` into a `TrainBatch` (order kept).

    `mask_truncated_completions`: truncated completions (finish_reason "length") get a zero
    completion mask and are not attended to, so they add nothing to the loss (TRL's semantics).
    Samples that are not `trainable` are masked the same way.
    `pad_to_multiple_of`: round P and T up (fewer distinct shapes for kernels that care).
    """
    if not samples:
        raise ValueError("collate got no samples: a batch needs at least one ScoredSample")
    for i, s in enumerate(samples):
        if not s.prompt_token_ids:
            raise ValueError(f"sample {i} (prompt_id={s.prompt_id!r}) has empty prompt_token_ids")
        if len(s.sampler_logprobs) != len(s.completion_token_ids):
            raise ValueError(
                f"sample {i} (prompt_id={s.prompt_id!r}): {len(s.sampler_logprobs)} sampler_logprobs for "
                f"{len(s.completion_token_ids)} completion tokens; the sampler must return one logprob per token"
            )

    def _round(n: int) -> int:
        return (
            n
            if not pad_to_multiple_of
            else int(math.ceil(n / pad_to_multiple_of) * pad_to_multiple_of)
        )

    b = len(samples)
    p = _round(max(len(s.prompt_token_ids) for s in samples))
    t = _round(max(max(len(s.completion_token_ids) for s in samples), 1))
    input_ids = torch.full((b, p + t), pad_token_id, dtype=torch.long)
    attention = torch.zeros((b, p + t), dtype=torch.long)
    comp_mask = torch.zeros((b, t), dtype=torch.long)
    logprobs = torch.zeros((b, t), dtype=torch.float32)
    truncated = torch.tensor([s.truncated for s in samples], dtype=torch.bool)
    for i, s in enumerate(samples):
        lp, lc = len(s.prompt_token_ids), len(s.completion_token_ids)
        input_ids[i, p - lp : p] = torch.tensor(s.prompt_token_ids, dtype=torch.long)
        attention[i, p - lp : p] = 1
        if lc:
            input_ids[i, p : p + lc] = torch.tensor(s.completion_token_ids, dtype=torch.long)
            # None (unknown logprob) becomes NaN; the IS correction treats it as ratio 1
            logprobs[i, :lc] = torch.tensor(
                [math.nan if x is None else float(x) for x in s.sampler_logprobs],
                dtype=torch.float32,
            )
            if in_loss(s, mask_truncated_completions):
                comp_mask[i, :lc] = 1
    attention[:, p:] = comp_mask
    # Positions count real tokens only, so a left-padded prompt sees the positions vLLM used.
    position_ids = (attention.cumsum(-1) - 1).clamp(min=0)
    return TrainBatch(
        input_ids=input_ids,
        attention_mask=attention,
        completion_mask=comp_mask,
        sampler_logprobs=logprobs,
        advantages=torch.tensor([float(s.advantage) for s in samples], dtype=torch.float32),
        truncated=truncated,
        policy_versions=torch.tensor([int(s.policy_version) for s in samples], dtype=torch.long),
        position_ids=position_ids,
        prompt_ids=[s.prompt_id for s in samples],
    )


def split_micro_batches(batch: TrainBatch, num_micro_batches: int) -> list[TrainBatch]:
    """`num_micro_batches` equal, consecutive slices of `batch` (its size must divide evenly)."""
    if num_micro_batches < 1:
        raise ValueError(f"num_micro_batches must be >= 1, got {num_micro_batches}")
    if batch.size % num_micro_batches:
        raise ValueError(
            f"a batch of {batch.size} samples does not split into {num_micro_batches} equal micro-batches: "
            "make per_device_train_batch_size x gradient_accumulation_steps equal this rank's share"
        )
    step = batch.size // num_micro_batches
    return [batch.slice(i * step, (i + 1) * step) for i in range(num_micro_batches)]
