"""trainer.advantages: group-relative advantages on hand-computed cases and properties."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from trainer.advantages import STD_EPS, group_advantages, nanstd


def test_group_scaling_hand_computed():
    out = group_advantages(torch.tensor([1.0, 2.0, 3.0, 5.0, 5.0, 5.0]), 3, "group")
    expected = torch.tensor([-1.0, 0.0, 1.0, 0.0, 0.0, 0.0]) / (1.0 + STD_EPS)
    torch.testing.assert_close(out.advantages, expected)
    assert out.frac_reward_zero_std == pytest.approx(0.5)  # the second group has no signal
    assert out.reward == pytest.approx(21 / 6)
    assert out.reward_std == pytest.approx(torch.tensor([1.0, 2, 3, 5, 5, 5]).std().item())
    assert set(out.metrics()) == {"reward", "reward_std", "frac_reward_zero_std"}


def test_batch_and_none_scaling():
    r = torch.tensor([0.0, 2.0, 4.0, 8.0])
    batch = group_advantages(r, 2, "batch")
    centred = torch.tensor([-1.0, 1.0, -2.0, 2.0])
    torch.testing.assert_close(batch.advantages, centred / (r.std() + STD_EPS))
    none = group_advantages(r, 2, "none")
    torch.testing.assert_close(none.advantages, centred)
    assert none.frac_reward_zero_std == 0.0


def test_unscorable_rewards_are_left_out_and_get_zero_advantage():
    out = group_advantages(torch.tensor([1.0, math.nan, 3.0, 0.0]), 4, "group")
    assert out.advantages[1] == 0.0
    # group mean/std over the three finite rewards: mean 4/3
    finite = torch.tensor([1.0, 3.0, 0.0])
    expected = (finite - finite.mean()) / (finite.std() + STD_EPS)
    torch.testing.assert_close(out.advantages[[0, 2, 3]], expected)
    assert out.reward == pytest.approx(4 / 3)


def test_nanstd_needs_two_values():
    assert math.isnan(nanstd(torch.tensor([1.0, math.nan])).item())
    assert nanstd(torch.tensor([1.0, 3.0])).item() == pytest.approx(math.sqrt(2))


@pytest.mark.parametrize(
    "rewards, g, scale, match",
    [
        (torch.ones(5), 2, "group", "not a multiple of num_generations=2"),
        (torch.ones(4), 2, "groups", "scale_rewards='groups' is unknown"),
        (torch.ones(2, 2), 2, "group", "flat vector"),
        (torch.ones(4), 0, "group", "num_generations must be >= 1"),
    ],
)
def test_bad_input_names_the_problem(rewards, g, scale, match):
    with pytest.raises(ValueError, match=match):
        group_advantages(rewards, g, scale)


@settings(max_examples=40, deadline=None)
@given(
    st.integers(2, 6),
    st.integers(1, 4),
    st.lists(st.floats(-10, 10, allow_nan=False), min_size=24, max_size=24),
    st.floats(-5, 5),
)
def test_properties(g, groups, values, shift):
    r = torch.tensor(values[: g * groups], dtype=torch.float64)
    out = group_advantages(r, g, "group")
    # zero mean within every group, and invariant to shifting a group's rewards
    assert out.advantages.view(groups, g).sum(1).abs().max() < 1e-6
    shifted = group_advantages(r + shift, g, "group")
    torch.testing.assert_close(shifted.advantages, out.advantages, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_a_group_with_fewer_than_two_scored_rewards_is_dropped(scale):
    nan = math.nan
    out = group_advantages(torch.tensor([1.0, nan, 3.0, 2.0, nan, 5.0, nan, nan]), 4, scale)
    assert out.trainable.tolist() == [True, False, True, True] + [False] * 4
    assert out.dropped_groups == 1 and out.unscored == 4
    assert out.advantages[5] == 0.0  # the lone scored reward of the dropped group
    if scale == "batch":  # the dropped group's 5.0 stays out of the batch std as well
        kept = torch.tensor([1.0, 3.0, 2.0])
        torch.testing.assert_close(
            out.advantages[[0, 2, 3]], torch.tensor([-1.0, 1.0, 0.0]) / (kept.std() + STD_EPS)
        )
    assert out.reward == pytest.approx(11 / 4)  # logged over every scored completion
