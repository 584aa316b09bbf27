"""The `char_class` reward of the offline task "charclass" (see data/synthetic.py).

Owns: the class definitions it scores against and the reward. Does not know: how rows are made
(the classes are restated here, not imported, so rewards never depends on `data`).

Reward = fraction of the completion's non-whitespace characters in the class named by the row's
`solution` (`digits` 0-9, `upper` A-Z, `lower` a-z; ASCII only). Empty or blank -> 0.0. Dense: a
random policy over a byte-level vocabulary already scores ~0.04-0.1.
"""

from __future__ import annotations

import logging
from typing import Any

from rewards.text import completion_text

log = logging.getLogger(__name__)

CHAR_CLASSES: dict[str, frozenset[str]] = {
    "digits": frozenset("0123456789"),
    "upper": frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ"),
    "lower": frozenset("abcdefghijklmnopqrstuvwxyz"),
}


def char_class_fraction(text: str, allowed: frozenset[str]) -> float:
    """Fraction of non-whitespace characters of `text` in `allowed`; 0.0 when there are none."""
    chars = "".join(text.split())
    if not chars:
        return 0.0
    return sum(ch in allowed for ch in chars) / len(chars)


def char_class(
    prompts: list, completions: list, solution: list | None = None, **_: Any
) -> list[float | None]:
    """Fraction of the completion in the requested character class (column `solution`)."""
    if solution is None:
        raise ValueError(
            "char_class needs the dataset column `solution` (one of digits/upper/lower)"
        )
    out: list[float | None] = []
    bad: list[int] = []
    for i, (completion, cls) in enumerate(zip(completions, solution, strict=True)):
        allowed = CHAR_CLASSES.get(str(cls).strip())
        if allowed is None:
            bad.append(i)
            out.append(None)
            continue
        out.append(char_class_fraction(completion_text(completion), allowed))
    if bad:
        log.warning(
            "char_class: %d of %d rows have a `solution` that is not one of %s (first: index %d, %r); they "
            "score None. char_class is the reward of the charclass task (data.source: charclass).",
            len(bad),
            len(out),
            sorted(CHAR_CLASSES),
            bad[0],
            str(solution[bad[0]])[:80],
        )
    return out
