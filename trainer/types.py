"""Records that flow from the rollout side (sampler + rewards) into the trainer.

Owns: the `ScoredSample` record (one completion with everything the loss needs). Does not know:
how samples are produced, batched or trained on.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ScoredSample:
    """One completion of one prompt, scored, with the policy version that produced it."""

    prompt_id: str  # the data row's id (resume and no-duplicate checks use it)
    group_index: int  # position within its group of G completions
    prompt_token_ids: list[int]
    completion_token_ids: list[int]
    sampler_logprobs: list[float]  # per completion token, from the sampler (for IS correction)
    finish_reason: str  # "stop" | "length" ("length" = truncated)
    policy_version: int  # the oldest sampler weights version of its tokens (staleness uses it)
    reward: float  # weighted total over reward functions (TRL: nansum of weighted rewards)
    rewards_per_func: dict[str, float | None] = field(default_factory=dict)
    advantage: float = 0.0
    completion_text: str = ""
    # False: no reward scored it, or its group had too few scored completions (trainer.advantages);
    # it stays in the batch (shapes and data order unchanged) with no loss tokens.
    trainable: bool = True
    # (version, first token index) per span of tokens one weights version produced, oldest
    # first; more than one when an in-flight update (sampler.update_mode=inflight) came mid-way
    versions: list[tuple[int, int]] = field(default_factory=list)

    @property
    def truncated(self) -> bool:
        return self.finish_reason == "length"
