"""Multiple-choice accuracy (MedMCQA): which option a completion chose, and whether it is right.

Owns: `extract_choice` (the chosen option of one completion, or None / AMBIGUOUS),
`parse_options` (option texts listed in a prompt) and the `accuracy` reward.
Does not know: datasets on disk, the pool, weights.

Keeps the reference recipe's intent (`Final Answer: X` on the last line, `<answer>X</answer>`, `X.`) and fixes
its bugs; every rule is documented with examples in docs/rewards.md. In short:
- an answer is *stated* by a marker (`Final Answer:`, `Answer:`, `the answer is`), an
  `<answer>` block or `\\boxed{X}`; the last stated answer that names an option wins;
- one statement naming several options (`Final Answer: B or C`) is AMBIGUOUS and scores 0;
- with no statement, the last non-empty line counts if it is a bare option (`C`, `(C)`, `C.`);
- case, markdown (`**`, backticks, `#`), LaTeX wrappers and spacing do not matter; an option's
  text (`Final Answer: Piperacillin`) counts when the prompt lists it.
All regexes here run in linear time on any input (no nested quantifiers over the whole text).
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from rewards.text import completion_text, prompt_text

log = logging.getLogger(__name__)

DEFAULT_CHOICES: tuple[str, ...] = ("A", "B", "C", "D")
AMBIGUOUS = "<ambiguous>"  # an answer statement that names more than one option

# `Final Answer:`, `Answer:`, `answer is`, `Answer =`; not the word inside `<answer>`/`answered`.
_MARKER = re.compile(
    r"(?<![<\w/])(?:final[ \t]+)?answer(?:\(s\))?[ \t]*(?:is\b[ \t]*:?|[:：=])", re.I
)
_MARKER_LOWER = re.compile(r"answer(?:\(s\))?[ \t]*(?:is\b[ \t]*:?|[:：=])")  # literal prefix: fast
_ANSWER_OPEN = re.compile(r"<answer>", re.I)
_ANSWER_CLOSE = re.compile(r"</answer>", re.I)
_BOXED = re.compile(r"\\boxed\{([^{}\n]{0,200})\}")
_TAG = re.compile(r"</?(?:answer|think)>", re.I)
_MARKDOWN = str.maketrans("", "", "*`#")
# Wrappers around a span: LaTeX text/bold/boxed commands and `$`.
_LATEX_WRAP = re.compile(r"\\(?:boxed|text|textbf|mathrm|mathbf)\{([^{}]*)\}")
_STRIP = " \t\r\n\"'“”‘’$.:;,!?{}[]"
_MAX_SPAN = 300  # characters of a statement examined (answers are short)
_MAX_WORDS_FOR_SCAN = 8  # spans longer than this are prose, not a list of letters


@lru_cache(maxsize=32)
def _patterns(choices: tuple[str, ...]) -> tuple[re.Pattern[str], re.Pattern[str], re.Pattern[str]]:
    alt = "|".join(re.escape(c) for c in sorted(choices, key=len, reverse=True))
    opt = r"(?:(?:option|choice)[ \t]*)?"
    bare = re.compile(rf"^[(\[]?[ \t]*{opt}({alt})[ \t]*[)\]]?[ \t]*[.:;,!]?$", re.I)
    # `C. Piperacillin`, `(C) Piperacillin`, `C: ...`, `C - ...` (not `A, C`: a list)
    lead = re.compile(
        rf"^[(\[]?[ \t]*{opt}({alt})(?:[ \t]*[)\]]|[.:)][ \t]|[ \t]+[-–—][ \t])", re.I
    )
    # Standalone option tokens, case-sensitive; the article `A` before a lowercase word (other
    # than and/or/nor) is not one: `A drug like C` names C, `A and B` names two options.
    token = re.compile(rf"(?<![\w])(?!A[ \t]+(?!(?:and|or|nor)\b)[a-z])({alt})(?![\w])")
    return bare, lead, token


def _norm_text(s: str) -> str:
    return " ".join(s.casefold().split()).strip(_STRIP)


def parse_options(prompt: Any, choices: Sequence[str] = DEFAULT_CHOICES) -> dict[str, str]:
    """Option texts listed in a prompt as lines `A. text` / `A) text`: {letter: text}."""
    return dict(_parse_options(prompt_text(prompt), tuple(choices)))


@lru_cache(maxsize=4096)  # the G completions of a group share one prompt
def _parse_options(text: str, choices: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    out: dict[str, str] = {}
    wanted = set(choices)
    for m in re.finditer(r"(?m)^[ \t]*([A-Za-z0-9]{1,3})[.)][ \t]+(\S[^\n]*)$", text):
        if m.group(1) in wanted:
            out[m.group(1)] = m.group(2).strip()  # a later list (the question's) overrides examples
    return tuple(out.items())


def _clean_span(span: str) -> str:
    span = unicodedata.normalize("NFKC", span[:_MAX_SPAN]).translate(_MARKDOWN)
    for _ in range(3):  # nested wrappers: $\boxed{\text{C}}$
        new = _LATEX_WRAP.sub(r"\1", span)
        if new == span:
            break
        span = new
    return span.strip(_STRIP + "*_")


def parse_choice(
    span: str,
    choices: Sequence[str] = DEFAULT_CHOICES,
    options: dict[str, str] | None = None,
    *,
    scan_tokens: bool = True,
) -> str | None:
    """The option a short answer statement names: a choice, AMBIGUOUS, or None (names none)."""
    choices_t = tuple(choices)
    by_fold = {c.casefold(): c for c in choices_t}
    bare, lead, token = _patterns(choices_t)
    first = next((ln for ln in _clean_span(span).split("\n") if ln.strip(_STRIP)), "")
    first = first.strip(_STRIP + "*_")
    if not first:
        return None
    m = bare.match(first) or lead.match(first)
    if m:
        return by_fold.get(m.group(1).casefold())
    if options:
        wanted = _norm_text(first)
        hits = {c for c, t in options.items() if _norm_text(t) == wanted}
        if len(hits) == 1:
            return hits.pop()
    if scan_tokens and len(first.split()) <= _MAX_WORDS_FOR_SCAN:
        found = {t.group(1) for t in token.finditer(first)} & set(choices_t)
        if len(found) == 1:
            return found.pop()
        if len(found) > 1:
            return AMBIGUOUS
    return None


def _marker_span(text: str, end: int) -> str:
    """Text after a marker: the rest of its line, or the next non-empty line if that is empty."""
    rest = text[end : end + _MAX_SPAN + 2]
    line, _, after = rest.partition("\n")
    line = _TAG.split(line, maxsplit=1)[0]  # `Final Answer: C</answer>`
    if line.strip(_STRIP + "*_"):
        return line
    nxt = after.lstrip(" \t\r\n").partition("\n")[0]
    return _TAG.split(nxt, maxsplit=1)[0]


def _markers(text: str) -> list[tuple[int, int]]:
    """(start, end) of each answer marker. Fast path: a literal search on the lowercased text
    (same positions when lowercasing keeps the length, as it does for all but a few letters)."""
    lower = text.lower()
    if len(lower) != len(text):
        return [(m.start(), m.end()) for m in _MARKER.finditer(text)]
    out = []
    for m in _MARKER_LOWER.finditer(lower):
        before = lower[m.start() - 1] if m.start() else " "
        if before != "<" and before != "/" and not (before.isalnum() or before == "_"):
            out.append((m.start(), m.end()))
    return out


def _last_answer_block(text: str) -> tuple[int, str] | None:
    """(position, content) of the last `<answer>` block (to `</answer>` or the end)."""
    lower = text.lower()
    if len(lower) != len(text):
        opens = list(_ANSWER_OPEN.finditer(text))
        if not opens:
            return None
        close = _ANSWER_CLOSE.search(text, opens[-1].end())
        return opens[-1].start(), text[opens[-1].end() : close.start() if close else len(text)]
    start = lower.rfind("<answer>")
    if start < 0:
        return None
    close = lower.find("</answer>", start)
    return start, text[start + 8 : close if close >= 0 else len(text)]


def extract_choice(
    completion: Any, choices: Sequence[str] = DEFAULT_CHOICES, options: dict[str, str] | None = None
) -> str | None:
    """The option a completion chose: a choice, AMBIGUOUS, or None (no answer found).

    >>> extract_choice("<think>\\nB?\\n</think>\\n<answer>\\nC\\n</answer>")
    'C'
    >>> extract_choice("**Final Answer:** b.")
    'B'
    >>> extract_choice("Final Answer: B or C")
    '<ambiguous>'
    """
    text = completion_text(completion)
    if not text.strip():
        return None
    candidates: list[tuple[int, str, bool]] = []  # (position, span, scan tokens?)
    for start, end in _markers(text):
        candidates.append((start, _marker_span(text, end), True))
    block = _last_answer_block(text)
    if block is not None:
        # Only a block that is itself a short answer counts; prose inside it is not scanned.
        candidates.append((block[0], block[1].strip()[:_MAX_SPAN], False))
    if "\\boxed{" in text:
        for m in _BOXED.finditer(text):
            candidates.append((m.start(), m.group(1), True))
    candidates.sort(key=lambda c: c[0])
    for _, span, scan in reversed(candidates):
        choice = parse_choice(span, choices, options, scan_tokens=scan)
        if choice is not None:
            return choice
    # The reference recipe's fallback: a last line that is a bare option (`C`, `C.`, `(C)`).
    tail = _TAG.sub("\n", text[-(_MAX_SPAN * 4) :]).rstrip()
    last = tail.rpartition("\n")[2]
    bare = _patterns(tuple(choices))[0]
    m = bare.match(_clean_span(last))
    return {c.casefold(): c for c in choices}.get(m.group(1).casefold()) if m else None


def normalize_reference(solution: Any, choices: Sequence[str] = DEFAULT_CHOICES) -> str | None:
    """The reference option of a row (`C`, ` c `, `C.`, `(C)`), or None if it names no choice."""
    if solution is None:
        return None
    return _normalize_reference(str(solution), tuple(choices))


@lru_cache(maxsize=1024)  # references take a handful of distinct values
def _normalize_reference(solution: str, choices: tuple[str, ...]) -> str | None:
    choice = parse_choice(solution, choices, scan_tokens=False)
    return None if choice == AMBIGUOUS else choice


def make_accuracy(choices: Sequence[str] = DEFAULT_CHOICES):
    """An `accuracy` reward for the option set `choices` (default A-D)."""
    choices_t = tuple(str(c).strip() for c in choices)
    if (
        not choices_t
        or any(not c or "\n" in c for c in choices_t)
        or len(set(choices_t)) != len(choices_t)
    ):
        raise ValueError(
            f"answer_choices must be distinct non-empty single-line strings (e.g. ['A','B','C','D']), got {list(choices)!r}"
        )

    def accuracy(
        prompts: list, completions: list, solution: list | None = None, **_: Any
    ) -> list[float | None]:
        """1.0 if the completion's chosen option equals the row's `solution`, else 0.0."""
        if solution is None:
            raise ValueError(
                "accuracy needs the dataset column `solution` (the reference option, e.g. 'C'); "
                "pass it as a keyword column aligned with completions"
            )
        out: list[float | None] = []
        bad: list[int] = []
        prompts = list(prompts) if prompts is not None else [None] * len(completions)
        for i, (completion, ref) in enumerate(zip(completions, solution, strict=True)):
            reference = normalize_reference(ref, choices_t)
            if reference is None:
                bad.append(i)
                out.append(None)  # no reference: not scorable (TRL's None), never a silent 0
                continue
            options = (
                dict(_parse_options(prompt_text(prompts[i]), choices_t))
                if i < len(prompts)
                else None
            )
            out.append(1.0 if extract_choice(completion, choices_t, options) == reference else 0.0)
        if bad:
            log.warning(
                "accuracy: %d of %d rows have a `solution` that is not one of %s (first: index %d, %r); "
                "they score None. Fix the data or set rewards.answer_choices.",
                len(bad),
                len(out),
                list(choices_t),
                bad[0],
                str(solution[bad[0]])[:80],
            )
        return out

    return accuracy


accuracy = make_accuracy(DEFAULT_CHOICES)
