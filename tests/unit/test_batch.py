"""trainer.batch: padding layout, masks, logprob alignment, micro-batch split, errors."""

from __future__ import annotations

import math

import pytest
import torch

from trainer.batch import collate, loss_tokens, split_micro_batches
from trainer.types import ScoredSample

PAD = 0


def _s(
    pid: str,
    prompt: list[int],
    comp: list[int],
    finish: str = "stop",
    adv: float = 0.0,
    version: int = 3,
):
    return ScoredSample(
        prompt_id=pid, group_index=0, prompt_token_ids=prompt, completion_token_ids=comp,
        sampler_logprobs=[-0.1 * (i + 1) for i in range(len(comp))], finish_reason=finish,
        policy_version=version, reward=1.0, advantage=adv,
    )  # fmt: skip


def test_layout_left_pads_prompts_right_pads_completions():
    b = collate(
        [_s("a", [5, 6, 7], [8, 9], adv=0.5), _s("b", [5], [10, 11, 12], "length", -1.0, 4)], PAD
    )
    assert b.input_ids.tolist() == [[5, 6, 7, 8, 9, PAD], [PAD, PAD, 5, 10, 11, 12]]
    assert b.attention_mask.tolist() == [[1, 1, 1, 1, 1, 0], [0, 0, 1, 1, 1, 1]]
    assert b.completion_mask.tolist() == [[1, 1, 0], [1, 1, 1]]
    assert b.position_ids.tolist() == [[0, 1, 2, 3, 4, 4], [0, 0, 0, 1, 2, 3]]
    torch.testing.assert_close(
        b.sampler_logprobs, torch.tensor([[-0.1, -0.2, 0.0], [-0.1, -0.2, -0.3]])
    )
    assert b.advantages.tolist() == [0.5, -1.0]
    assert b.truncated.tolist() == [False, True]
    assert b.policy_versions.tolist() == [3, 4]
    assert b.prompt_ids == ["a", "b"]
    assert b.num_loss_tokens == 5 and b.completion_length == 3 and b.size == 2


def test_mask_truncated_completions_drops_them_from_loss_and_attention():
    b = collate(
        [_s("a", [5], [8, 9]), _s("b", [5], [10, 11], "length")],
        PAD,
        mask_truncated_completions=True,
    )
    assert b.completion_mask.tolist() == [[1, 1], [0, 0]]
    assert b.attention_mask[1].tolist() == [1, 0, 0]


def test_pad_to_multiple_and_unknown_logprobs():
    s = _s("a", [5, 6, 7], [8, 9, 10])
    s.sampler_logprobs = [-0.5, None, -0.2]  # type: ignore[list-item]
    b = collate([s], PAD, pad_to_multiple_of=4)
    assert b.input_ids.shape == (1, 8)
    assert math.isnan(b.sampler_logprobs[0, 1].item())


def test_split_micro_batches_keeps_order():
    b = collate([_s(str(i), [5, i + 1], [8] * (i + 1)) for i in range(6)], PAD)
    parts = split_micro_batches(b, 3)
    assert [p.prompt_ids for p in parts] == [["0", "1"], ["2", "3"], ["4", "5"]]
    assert torch.equal(torch.cat([p.input_ids for p in parts]), b.input_ids)
    with pytest.raises(ValueError, match="does not split into 4 equal micro-batches"):
        split_micro_batches(b, 4)


def test_bad_samples_name_the_problem():
    with pytest.raises(ValueError, match="no samples"):
        collate([], PAD)
    bad = _s("x", [5], [8, 9])
    bad.sampler_logprobs = [-0.1]
    with pytest.raises(
        ValueError, match=r"prompt_id='x'.*1 sampler_logprobs for 2 completion tokens"
    ):
        collate([bad], PAD)
    with pytest.raises(ValueError, match="empty prompt_token_ids"):
        collate([_s("y", [], [8])], PAD)


def test_untrainable_samples_get_no_loss_tokens():
    left_out = _s("b", [5], [10, 11])
    left_out.trainable = False
    b = collate([_s("a", [5], [8, 9]), left_out], PAD)
    assert b.completion_mask.tolist() == [[1, 1], [0, 0]]
    assert b.attention_mask[1].tolist() == [1, 0, 0]
    assert b.num_loss_tokens == 2
    assert loss_tokens([_s("a", [5], [8, 9]), left_out], mask_truncated=False) == 2
