"""`format_partial`: partial credit toward the reference recipe's strict layout, so a policy that
writes some of the tags has a reward gradient (the strict `format` is 0 until every detail is
right). 1.0 exactly when `format` is 1.0; else 0.2 per tag present once and in order (max 0.8)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rewards.format import format_partial, format_reward, is_strict_format
from rewards.registry import BUILTIN_INPUTS, BUILTIN_REWARDS, resolve_reward

STRICT = "<think>\nB is the drug\n</think>\n<answer>\nB\n</answer>"


@pytest.mark.parametrize(
    ("text", "score"),
    [
        (STRICT, 1.0),
        (STRICT + "\n", 1.0),
        ("<think>x</think><answer>B</answer>", 0.8),  # all tags, not the strict newlines
        ("<think>\nreasoning\n</think>\n", 0.4),
        ("the drug <think> is", 0.2),
        ("</think> then <think>", 0.2),  # </think> before <think>: only <think> counts
        ("<answer>\nB\n</answer>", 0.0),  # no <think>: nothing after it counts
        ("<think><think></think>", 0.0),  # a tag twice earns nothing from there on
        ("no tags at all", 0.0),
        ("", 0.0),
    ],
)
def test_partial_credit_per_tag_in_order(text, score):
    assert format_partial([""], [text]) == [pytest.approx(score)]


def test_chat_completions_and_name_are_trl_style():
    msgs = [[{"role": "assistant", "content": STRICT}]]
    assert format_partial([""], msgs) == [1.0]
    assert format_partial.__name__ == "format_partial"  # TRL names the metric after __name__
    assert resolve_reward("format_partial") is format_partial
    assert "format_partial" in BUILTIN_REWARDS and BUILTIN_INPUTS["format_partial"] == frozenset()


PIECES = st.sampled_from(["<think>", "</think>", "<answer>", "</answer>", "\n", "B", " "])


@given(st.lists(PIECES, max_size=12).map("".join))
def test_full_credit_exactly_when_strict_and_never_above(text):
    [partial] = format_partial([""], [text])
    [strict] = format_reward([""], [text])
    assert 0.0 <= partial <= 1.0
    assert (partial == 1.0) == (strict == 1.0) == is_strict_format(text)
    assert partial == 1.0 or partial <= 0.8 + 1e-9
