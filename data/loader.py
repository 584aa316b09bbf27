"""Load prompt datasets in the reference recipe's jsonl format and turn rows into chat prompts.

Owns: reading `{id, problem, solution}` jsonl splits (train/validation/test), validating every
row (errors name file, line and field), and building chat messages. Does not know: tokenizers,
rewards, models.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SPLITS = ("train", "validation", "test")
REQUIRED_FIELDS = ("id", "problem", "solution")


class DataError(ValueError):
    """A dataset file is unusable; the message names the file, line and field."""

    def __init__(self, path: Path | str, line: int | None, field_name: str | None, problem: str):
        where = f"{path}" + (f", line {line}" if line is not None else "")
        what = f" field {field_name!r}:" if field_name else ":"
        super().__init__(f"{where}{what} {problem}")
        self.path, self.line, self.field = str(path), line, field_name


@dataclass(frozen=True)
class Example:
    """One prompt row. `columns` holds every extra field; all of them reach reward functions."""

    id: str
    problem: str
    solution: str
    columns: dict[str, Any] = field(default_factory=dict)

    def reward_columns(self) -> dict[str, Any]:
        return {"id": self.id, "solution": self.solution, **self.columns}


def parse_rows(
    rows: list[tuple[int, str]], path: Path | str, answer_choices: list[str] | None
) -> list[Example]:
    """Validate `(line_number, raw_json)` pairs into Examples."""
    out: list[Example] = []
    seen: dict[str, int] = {}
    for lineno, raw in rows:
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as e:
            raise DataError(
                path, lineno, None, f"not valid JSON ({e.msg} at column {e.colno})"
            ) from None
        if not isinstance(obj, dict):
            raise DataError(path, lineno, None, f"expected a JSON object, got {type(obj).__name__}")
        for name in REQUIRED_FIELDS:
            if name not in obj:
                raise DataError(
                    path, lineno, name, f"missing; every row needs {list(REQUIRED_FIELDS)}"
                )
            value = obj[name]
            if (
                not isinstance(value, (str, int))
                or isinstance(value, bool)
                or str(value).strip() == ""
            ):
                raise DataError(
                    path, lineno, name, f"must be a non-empty string, got {value!r:.80}"
                )
        sid, solution = str(obj["id"]), str(obj["solution"]).strip()
        if answer_choices is not None and solution not in answer_choices:
            raise DataError(
                path,
                lineno,
                "solution",
                f"{solution!r:.40} is not one of {answer_choices} (set data.answer_choices to change the allowed set)",
            )
        if sid in seen:
            raise DataError(path, lineno, "id", f"duplicate id {sid!r} (first on line {seen[sid]})")
        seen[sid] = lineno
        extra = {k: v for k, v in obj.items() if k not in REQUIRED_FIELDS}
        out.append(Example(sid, str(obj["problem"]), solution, extra))
    if not out:
        raise DataError(path, None, None, "the split is empty; it needs at least one row")
    return out


def load_split(path: str | Path, answer_choices: list[str] | None = None) -> list[Example]:
    """Read one jsonl split. Blank lines are skipped; anything else must be a valid row."""
    p = Path(path)
    if not p.is_file():
        raise DataError(p, None, None, "file not found")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(p, None, None, f"not UTF-8 text (byte {e.start})") from None
    rows = [(i, line) for i, line in enumerate(text.splitlines(), start=1) if line.strip()]
    return parse_rows(rows, p, answer_choices)


def load_dataset_dir(
    directory: str | Path, splits: tuple[str, ...] = SPLITS, answer_choices: list[str] | None = None
) -> dict[str, list[Example]]:
    """Read `<directory>/<split>.jsonl` for each requested split."""
    d = Path(directory)
    if not d.is_dir():
        raise DataError(d, None, None, "dataset folder not found")
    return {s: load_split(d / f"{s}.jsonl", answer_choices) for s in splits}


def to_chat(example: Example, system_prompt: str | None = None) -> list[dict[str, str]]:
    """Chat messages for one row. The reference recipe puts its instructions inside `problem` itself (reason in
    <think>, answer in <answer>, last line `Final Answer: X`); a system prompt is optional."""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages.append({"role": "user", "content": example.problem})
    return messages
