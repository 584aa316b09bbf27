"""Reward lookup: built-in names and `package.module:function` plugins.

Owns: `check_reward_name` (a name or import path is well formed, nothing imported),
`resolve_reward` (name or import path -> callable) and `reward_name` (the metric-safe name used in
`rewards/<name>/mean`). Does not know: how rewards are executed (rewards.factory and below).

Every reward follows TRL's calling convention: `fn(prompts, completions, **columns)` ->
`list[float | None]`, where columns hold `completion_ids` and every dataset column, each a list
aligned with `completions`. None means "not applicable to this item" (TRL turns it into NaN).
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Sequence
from typing import Any

RewardFn = Callable[..., list[float | None]]

BUILTIN_REWARDS: dict[str, str] = {
    "accuracy": "multiple-choice accuracy against the `solution` column (A-D unless answer_choices)",
    "format": "strict reference-recipe format <think>\\n...\\n</think>\\n<answer>\\n...\\n</answer>",
    "format_lenient": "think/answer structure with relaxed whitespace/case, <think> optional",
    "format_partial": "partial credit toward `format`: 1.0 if strict, else 0.2 per tag in order",
    "char_class": "fraction of characters in the class named by `solution` (charclass task)",
    "overlong": "DAPO soft overlong penalty in [-1, 0]; needs max_completion_length",
    "repetition": "repeated word 3-gram penalty in [-1, 0]",
}
# What each built-in reads besides `completions`, so the pool ships only those inputs to its
# actors ("prompts" = the prompts argument). A plugin may declare the same as a function
# attribute `reward_columns = ("solution", ...)`; undeclared plugins get every column.
BUILTIN_INPUTS: dict[str, frozenset[str]] = {
    "accuracy": frozenset({"prompts", "solution"}),
    "format": frozenset(),
    "format_lenient": frozenset(),
    "format_partial": frozenset(),
    "char_class": frozenset({"solution"}),
    "overlong": frozenset({"completion_ids"}),
    "repetition": frozenset(),
}
_IMPORT_PATH = re.compile(r"^[A-Za-z_][\w]*(?:\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")


def _unknown(name_or_path: str, why: str) -> ValueError:
    return ValueError(
        f"unknown reward {name_or_path!r}: {why}. Use a built-in name ({', '.join(sorted(BUILTIN_REWARDS))}) "
        "or an import path 'package.module:function' to a function fn(prompts, completions, **columns) "
        "importable on every reward worker."
    )


def check_reward_name(name_or_path: str) -> str:
    """The stripped name if it is a built-in or a well-formed import path (nothing imported),
    else ValueError naming the reward and the fix."""
    if not isinstance(name_or_path, str) or not name_or_path.strip():
        raise _unknown(str(name_or_path), "a reward must be a non-empty string")
    name = name_or_path.strip()
    if name in BUILTIN_REWARDS:
        return name
    if ":" not in name:
        raise _unknown(name, "not a built-in name and not an import path (no ':')")
    if not _IMPORT_PATH.match(name):
        raise _unknown(name, "malformed import path")
    return name


def resolve_reward(
    name_or_path: str,
    *,
    max_completion_length: int | None = None,
    answer_choices: Sequence[str] | None = None,
    overlong_buffer: int | None = None,
) -> RewardFn:
    """The reward callable for a registry name or a `package.module:function` import path.

    `max_completion_length` is required by `overlong`; `answer_choices` (default A-D) configures
    `accuracy`; `overlong_buffer` is DAPO's L_cache in tokens (default max_completion_length // 4).
    Raises ValueError naming the reward, the known names and the fix.
    """
    name = check_reward_name(name_or_path)
    if name == "accuracy":
        from rewards.accuracy import DEFAULT_CHOICES, make_accuracy

        return make_accuracy(answer_choices or DEFAULT_CHOICES)
    if name == "format":
        from rewards.format import format_reward

        return format_reward
    if name == "format_lenient":
        from rewards.format import format_lenient

        return format_lenient
    if name == "format_partial":
        from rewards.format import format_partial

        return format_partial
    if name == "char_class":
        from rewards.charclass import char_class

        return char_class
    if name == "repetition":
        from rewards.shaping import make_repetition

        return make_repetition()
    if name == "overlong":
        if max_completion_length is None:
            raise ValueError(
                "reward 'overlong' needs max_completion_length (pass trainer.max_completion_length to "
                "resolve_reward/make_scorer)"
            )
        from rewards.shaping import make_overlong

        return make_overlong(max_completion_length, overlong_buffer)
    module_name, func_name = name.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise _unknown(name, f"module {module_name!r} cannot be imported ({e})") from None
    fn: Any = getattr(module, func_name, None)
    if fn is None:
        raise _unknown(name, f"module {module_name!r} has no attribute {func_name!r}")
    if not callable(fn):
        raise _unknown(name, f"{func_name!r} is a {type(fn).__name__}, not a function")
    return fn


def reward_name(name_or_path: str) -> str:
    """Metric-safe name: the registry name, or a plugin's function name (TRL uses `__name__`).

    >>> reward_name("my_pkg.rewards:length_bonus")
    'length_bonus'
    """
    base = name_or_path.strip().rsplit(":", 1)[-1]
    return re.sub(r"[^A-Za-z0-9_.-]", "_", base) or "reward"


def reward_inputs(name_or_path: str, fn: Any = None) -> frozenset[str] | None:
    """Inputs a reward reads besides completions ("prompts" and column names); None: unknown."""
    name = name_or_path.strip()
    if name in BUILTIN_INPUTS:
        return BUILTIN_INPUTS[name]
    declared = getattr(fn, "reward_columns", None)
    if declared is None or isinstance(declared, str):
        return None
    return frozenset(str(c) for c in declared)
