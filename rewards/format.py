"""The reference recipe's output structure: `<think>` reasoning `</think>` then `<answer>` answer `</answer>`.

Owns: `format` (strict) and `format_lenient`, both 1.0 / 0.0 per completion, and
`format_partial` (partial credit toward the strict layout, for a policy that has not found it yet).
Does not know: whether the answer is right (that is `accuracy`).

Seed: `^<think>\\n.*?\\n</think>\\n<answer>\\n.*?\\n</answer>$` with DOTALL|MULTILINE. Its `$`
matches at any line end, so text after `</answer>` passed, and `.*?` let a second block hide
inside the first. Decisions (examples in docs/rewards.md):
- strict: exactly the reference recipe's layout (tags on their own lines, `\\n` after each opening tag and
  before each closing tag), each tag exactly once, non-blank reasoning and answer, nothing
  before `<think>` and only whitespace after `</answer>` (a trailing newline is not a new answer);
- lenient: each tag at most once (`<think>` may be missing because chat templates such as
  Qwen3/R1 put it in the prompt), in order, any whitespace around tags, tags in any letter case,
  non-blank answer, only whitespace outside the blocks.
- partial: 1.0 exactly when strict; otherwise 0.2 for each tag, in the order `<think>`,
  `</think>`, `<answer>`, `</answer>`, that appears exactly once and after the previous one,
  counting stops at the first that does not (at most 0.8, so only the full layout earns 1.0).
Tag counts are checked before any regex runs, so all three are linear time on any input.
"""

from __future__ import annotations

import re
from typing import Any

from rewards.text import completion_text

_STRICT = re.compile(r"<think>\n(.*)\n</think>\n<answer>\n(.*)\n</answer>\s*", re.S)
_TAGS = ("<think>", "</think>", "<answer>", "</answer>")
_ANY_TAG = re.compile(r"</?(?:think|answer)>", re.I)


def is_strict_format(text: str) -> bool:
    """True if `text` has exactly the reference recipe's layout (see the module docstring)."""
    if any(text.count(tag) != 1 for tag in _TAGS):
        return False
    m = _STRICT.fullmatch(text)
    return bool(m and m.group(1).strip() and m.group(2).strip())


def is_lenient_format(text: str) -> bool:
    """True if `text` has the think/answer structure with relaxed whitespace and case."""
    tags = [(m.group(0).lower(), m.start(), m.end()) for m in _ANY_TAG.finditer(text)]
    names = [t[0] for t in tags]
    if names not in (list(_TAGS), list(_TAGS[1:])):
        return False
    if names[0] == "<think>":
        if text[: tags[0][1]].strip():
            return False
        tags = tags[1:]
    (_, _, think_end), (_, ans_open_s, ans_open_e), (_, ans_close_s, ans_close_e) = tags
    return (
        not text[think_end:ans_open_s].strip()
        and bool(text[ans_open_e:ans_close_s].strip())
        and not text[ans_close_e:].strip()
    )


def format_reward(prompts: list, completions: list, **_: Any) -> list[float | None]:
    """Strict reference-recipe format: 1.0 or 0.0."""
    return [1.0 if is_strict_format(completion_text(c)) else 0.0 for c in completions]


def format_lenient(prompts: list, completions: list, **_: Any) -> list[float | None]:
    """Lenient format: 1.0 or 0.0."""
    return [1.0 if is_lenient_format(completion_text(c)) else 0.0 for c in completions]


def partial_format_score(text: str) -> float:
    """Partial credit toward the strict layout (see the module docstring)."""
    if is_strict_format(text):
        return 1.0
    score, start = 0.0, 0
    for tag in _TAGS:
        at = text.find(tag, start)
        if at < 0 or text.count(tag) != 1:
            break
        score, start = score + 0.2, at + len(tag)
    return round(score, 10)


def format_partial(prompts: list, completions: list, **_: Any) -> list[float | None]:
    """Partial format credit: 1.0 for the strict layout, else 0.2 per tag in order (max 0.8)."""
    return [partial_format_score(completion_text(c)) for c in completions]


format_reward.__name__ = "format"  # TRL names metrics after __name__
