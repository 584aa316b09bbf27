"""Running reward functions on one batch with failure isolation (shared by every scorer).

Owns: `run_rewards` (call each reward on a batch; an error in one reward never touches the
others; a failed batch call is retried item by item so only the items that fail get None),
output validation, and the failure summary that the pool logs. Does not know: Ray, timeouts,
weights. Runs inside Ray actors and in-process alike, so it imports nothing heavy.
"""

from __future__ import annotations

import asyncio
import inspect
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from rewards.text import completion_text


@dataclass
class FuncResult:
    """One reward's scores for a batch. `failed` items are None because of an error."""

    values: list[float | None]
    failed_idx: list[int] = field(default_factory=list)  # items that are None through an error
    error: str | None = None  # first failure: error and a sample of the failing input

    @property
    def failed(self) -> int:
        return len(self.failed_idx)


def describe_item(completions: Sequence[Any], columns: Mapping[str, Sequence[Any]], i: int) -> str:
    """A short, log-safe description of item `i` (its id and the start of its completion)."""
    ident = columns.get("id")
    ident_s = f"id={ident[i]!r:.60} " if ident is not None and i < len(ident) else ""
    text = completion_text(completions[i]) if i < len(completions) else ""
    return f"item {i} {ident_s}completion={text[:200]!r}" + ("..." if len(text) > 200 else "")


def _to_score(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, (bool, int, float)) or hasattr(value, "__float__"):
        f = float(value)
        return None if math.isnan(f) else f  # TRL: None and NaN mean the same (not applicable)
    raise TypeError(
        f"returned {value!r:.60} ({type(value).__name__}); rewards must return float or None"
    )


def call_reward(
    fn: Any,
    prompts: Sequence[Any],
    completions: Sequence[Any],
    columns: Mapping[str, Sequence[Any]],
) -> list[float | None]:
    """Call one reward (sync or async) and validate its output: one float/None per completion."""
    result = fn(
        prompts=list(prompts),
        completions=list(completions),
        **{k: list(v) for k, v in columns.items()},
    )
    if inspect.isawaitable(result):  # TRL allows async reward functions
        result = asyncio.run(_await(result))
    if isinstance(result, (str, bytes)) or not hasattr(result, "__len__"):
        raise TypeError(
            f"returned a {type(result).__name__}; rewards must return a list with one value per completion"
        )
    if len(result) != len(completions):
        raise ValueError(f"returned {len(result)} values for {len(completions)} completions")
    return [_to_score(v) for v in result]


async def _await(awaitable: Any) -> Any:
    return await awaitable


def run_reward(
    name: str,
    fn: Any,
    prompts: Sequence[Any],
    completions: Sequence[Any],
    columns: Mapping[str, Sequence[Any]],
) -> FuncResult:
    """Score a batch with one reward; if the batch call fails, score item by item.

    The per-item retry keeps one poisonous item from wiping out a whole batch; items that still
    fail get None, are counted, and the first one is described in `error`.
    """
    n = len(completions)
    try:
        return FuncResult(call_reward(fn, prompts, completions, columns))
    except Exception as batch_error:  # a reward's bug must not stop the run
        if n == 1:
            summary = f"reward {name!r} raised {type(batch_error).__name__}: {batch_error!s:.300}"
            return FuncResult([None], [0], f"{summary}; {describe_item(completions, columns, 0)}")
    values: list[float | None] = []
    failed: list[int] = []
    first = None
    for i in range(n):
        try:
            values.extend(
                call_reward(
                    fn,
                    prompts[i : i + 1],
                    completions[i : i + 1],
                    {k: v[i : i + 1] for k, v in columns.items()},
                )
            )
        except Exception as e:
            values.append(None)
            failed.append(i)
            if first is None:
                first = f"reward {name!r} raised {type(e).__name__}: {e!s:.300}; {describe_item(completions, columns, i)}"
    return FuncResult(values, failed, first)


def run_rewards(
    fns: Mapping[str, Any],
    names: Sequence[str],
    prompts: Sequence[Any],
    completions: Sequence[Any],
    columns: Mapping[str, Sequence[Any]],
) -> dict[str, FuncResult]:
    """Score a batch with each reward in `names` separately (see `run_reward`)."""
    return {name: run_reward(name, fns[name], prompts, completions, columns) for name in names}


def check_batch(
    prompts: Sequence[Any], completions: Sequence[Any], columns: Mapping[str, Sequence[Any]]
) -> None:
    """Raise ValueError (naming the field) unless prompts and every column align with completions."""
    if not isinstance(completions, Sequence) or isinstance(completions, (str, bytes)):
        raise ValueError(
            f"completions must be a list (one per item), got {type(completions).__name__}"
        )
    n = len(completions)
    if not isinstance(prompts, Sequence) or isinstance(prompts, (str, bytes)) or len(prompts) != n:
        raise ValueError(
            f"prompts must be a list aligned with completions ({n} items), got "
            f"{type(prompts).__name__} of length {len(prompts) if hasattr(prompts, '__len__') else '?'}"
        )
    if not isinstance(columns, Mapping):
        raise ValueError(
            f"columns must be a dict of column name -> list, got {type(columns).__name__}"
        )
    for key, col in columns.items():
        if key in ("prompts", "completions"):
            raise ValueError(
                f"column {key!r} clashes with a reward argument; rename the dataset column"
            )
        if not isinstance(col, Sequence) or isinstance(col, (str, bytes)) or len(col) != n:
            raise ValueError(
                f"column {key!r} must be a list with one value per completion ({n}), got "
                f"{type(col).__name__} of length {len(col) if hasattr(col, '__len__') else '?'}"
            )
