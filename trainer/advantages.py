"""Group-relative advantages (GRPO), as TRL 1.16's GRPOTrainer computes them.

Owns: turning a flat reward vector (ordered group by group: G consecutive entries per prompt) into
advantages, plus the reward statistics TRL logs (`reward`, `reward_std`, `frac_reward_zero_std`).
Does not know: where rewards come from, how samples are batched, or anything about models.

A NaN reward marks an unscorable completion (every reward function returned None or failed). As in
TRL it is left out of its group's mean/std and its advantage is 0; beyond TRL it is also marked not
trainable (`Advantages.trainable`), so it adds no loss tokens and no KL term. A group left with fewer
than MIN_SCORED_PER_GROUP scored completions has no baseline to compare with: the whole group is
dropped (not trainable, out of the batch std too) and counted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

ScaleRewards = Literal["group", "batch", "none"]
SCALE_REWARDS = ("group", "batch", "none")
# TRL divides by (std + 1e-4) so zero-variance groups give advantage 0 instead of inf.
STD_EPS = 1e-4
# A group-relative advantage needs at least two scored completions to compare.
MIN_SCORED_PER_GROUP = 2


@dataclass(frozen=True)
class Advantages:
    """Advantages for one batch and the statistics TRL logs for it."""

    advantages: torch.Tensor  # (N,), same order as the rewards
    reward: float  # nanmean of the rewards (TRL: `reward`)
    reward_std: float  # nanstd of the rewards over the batch (TRL: `reward_std`)
    # fraction of samples whose scaling std is ~0 (TRL: `frac_reward_zero_std`)
    frac_reward_zero_std: float
    # (N,) bool: False for unscored completions and every member of a dropped group
    trainable: torch.Tensor | None = None
    unscored: int = 0  # completions with a NaN reward
    dropped_groups: int = 0  # groups with fewer than MIN_SCORED_PER_GROUP scored completions

    def metrics(self) -> dict[str, float]:
        return {
            "reward": self.reward,
            "reward_std": self.reward_std,
            "frac_reward_zero_std": self.frac_reward_zero_std,
        }


def nanstd(x: torch.Tensor, dim: int | None = None, keepdim: bool = False) -> torch.Tensor:
    """Unbiased (Bessel-corrected) std ignoring NaNs; NaN where fewer than 2 values are finite."""
    mean = torch.nanmean(x, dim=dim, keepdim=True)
    var = torch.nanmean((x - mean) ** 2, dim=dim, keepdim=True)
    n = (~torch.isnan(x)).sum(dim=dim, keepdim=True).to(x.dtype)
    # n / (n - 1) is inf or negative for n <= 1: those positions have no defined std
    var = torch.where(n > 1, var * n / (n - 1), torch.full_like(var, float("nan")))
    std = var.sqrt()
    if not keepdim:
        std = std.squeeze(dim) if dim is not None else std.reshape(())
    return std


def group_advantages(
    rewards: torch.Tensor,
    num_generations: int,
    scale_rewards: ScaleRewards = "group",
) -> Advantages:
    """Advantages `(r - mean_group) / (std + 1e-4)` for a flat reward vector of whole groups.

    `rewards`: shape (N,), N a multiple of `num_generations`; entry i belongs to group i // G.
    `scale_rewards`: "group" divides by each group's std, "batch" by the whole batch's std,
    "none" only centres (Dr. GRPO).
    """
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be a flat vector (N,), got shape {tuple(rewards.shape)}")
    if num_generations < 1:
        raise ValueError(f"num_generations must be >= 1, got {num_generations}")
    if rewards.numel() % num_generations:
        raise ValueError(
            f"got {rewards.numel()} rewards, not a multiple of num_generations={num_generations}: "
            "pass whole groups (G consecutive completions per prompt)"
        )
    if scale_rewards not in SCALE_REWARDS:
        raise ValueError(
            f"scale_rewards={scale_rewards!r} is unknown: use one of {', '.join(SCALE_REWARDS)}"
        )
    rewards = rewards.float() if not rewards.is_floating_point() else rewards
    logged = rewards
    trainable, dropped = _trainable(rewards, num_generations)
    # A dropped group's lone score must not enter the batch std either.
    rewards = torch.where(trainable, rewards, torch.full_like(rewards, float("nan")))
    grouped = rewards.view(-1, num_generations)
    mean = torch.nanmean(grouped, dim=1).repeat_interleave(num_generations)
    if scale_rewards == "batch":
        std = (
            nanstd(rewards).expand_as(rewards) if rewards.numel() > 1 else torch.zeros_like(rewards)
        )
    elif num_generations > 1:
        # "none" still computes the group std: TRL logs frac_reward_zero_std from it
        std = nanstd(grouped, dim=1).repeat_interleave(num_generations)
    else:
        std = torch.zeros_like(rewards)
    adv = rewards - mean
    if scale_rewards != "none":
        adv = adv / (std + STD_EPS)
    adv = torch.nan_to_num(adv, nan=0.0)
    zero_std = torch.isclose(std, torch.zeros_like(std))
    return Advantages(
        advantages=adv,
        # over every scored completion, a dropped group's too: what the policy earned
        reward=torch.nanmean(logged).item(),
        reward_std=nanstd(logged).item(),
        frac_reward_zero_std=zero_std.float().mean().item(),
        trainable=trainable,
        unscored=int(torch.isnan(logged).sum().item()),
        dropped_groups=dropped,
    )


def _trainable(rewards: torch.Tensor, num_generations: int) -> tuple[torch.Tensor, int]:
    """(N,) mask of completions that train, and how many groups were dropped entirely."""
    scored = ~torch.isnan(rewards).view(-1, num_generations)
    need = min(MIN_SCORED_PER_GROUP, num_generations)  # G = 1 (eval-style calls) keeps its one
    kept = scored.sum(dim=1) >= need
    trainable = (scored & kept.unsqueeze(1)).reshape(-1)
    return trainable, int((~kept).sum().item())
