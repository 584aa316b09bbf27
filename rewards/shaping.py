"""Shaping rewards that do not look at correctness: overlong (DAPO) and repetition penalties.

Owns: `soft_overlong_penalty` and `repetition_penalty` (pure math on one completion) and the
reward factories `make_overlong`, `make_repetition`. Does not know: tasks, tokenizers, the pool.
"""

from __future__ import annotations

from typing import Any

from rewards.text import completion_text


def soft_overlong_penalty(length: int, max_length: int, buffer: int) -> float:
    """DAPO's soft overlong punishment (Yu et al. 2025, eq. 13).

    0 up to `max_length - buffer` tokens, then linear down to -1 at `max_length`, -1 beyond.
    """
    start = max_length - buffer
    if length <= start:
        return 0.0
    if length <= max_length:
        return (start - length) / buffer
    return -1.0


def make_overlong(max_completion_length: int, buffer: int | None = None):
    """The `overlong` reward for a run generating at most `max_completion_length` tokens.

    `buffer` (DAPO's L_cache) defaults to a quarter of `max_completion_length`, at least 1.
    """
    if not isinstance(max_completion_length, int) or max_completion_length < 1:
        raise ValueError(
            f"overlong needs max_completion_length >= 1 (trainer.max_completion_length), got {max_completion_length!r}"
        )
    buf = max(1, max_completion_length // 4) if buffer is None else buffer
    if not 1 <= buf <= max_completion_length:
        raise ValueError(
            f"rewards.overlong_buffer_tokens must be in [1, max_completion_length={max_completion_length}], got {buf}"
        )

    def overlong(
        prompts: list, completions: list, completion_ids: list | None = None, **_: Any
    ) -> list[float | None]:
        """Soft penalty in [-1, 0] on the completion's token count (column `completion_ids`)."""
        if completion_ids is None:
            raise ValueError(
                "overlong needs the column `completion_ids` (token ids of each completion); the trainer "
                "passes it, direct callers must pass completion_ids=[[...], ...]"
            )
        return [
            soft_overlong_penalty(len(ids), max_completion_length, buf) for ids in completion_ids
        ]

    return overlong


def repetition_penalty(text: str, ngram_size: int = 3, max_penalty: float = -1.0) -> float:
    """`max_penalty * (1 - distinct n-grams / n-grams)` over lowercased whitespace words.

    0.0 for text without repeats or shorter than `ngram_size` words; `max_penalty` for one n-gram
    repeated forever. Words (not tokens) so the value does not depend on the tokenizer.
    """
    words = text.casefold().split()
    total = len(words) - ngram_size + 1
    if total <= 0:
        return 0.0
    distinct = len({tuple(words[i : i + ngram_size]) for i in range(total)})
    return max_penalty * (1.0 - distinct / total)


def make_repetition(ngram_size: int = 3, max_penalty: float = -1.0):
    """The `repetition` reward: `repetition_penalty` of each completion, in [max_penalty, 0]."""
    if ngram_size < 1 or max_penalty > 0:
        raise ValueError("repetition needs ngram_size >= 1 and max_penalty <= 0")

    def repetition(prompts: list, completions: list, **_: Any) -> list[float | None]:
        """Penalty in [max_penalty, 0] for repeated word n-grams."""
        return [
            repetition_penalty(completion_text(c), ngram_size, max_penalty) for c in completions
        ]

    return repetition
