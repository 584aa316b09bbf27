"""Convert the public MedMCQA dataset into the reference recipe's jsonl format.

Public rows look like `{id, question, opa, opb, opc, opd, cop, choice_type, ...}` with `cop` the
0-based correct option (-1 where the split has no labels). Only single-answer questions with a
label are kept, as the reference recipe did; each skipped row is counted and reported, never dropped silently.
Output rows: `{id, problem, solution}` with the reference recipe's instruction text.

Owns: the conversion and the command line. Does not know: training or rewards.

    python -m data.prep_medmcqa OUT_DIR                      # from the hub (needs network)
    python -m data.prep_medmcqa OUT_DIR --from-jsonl DIR     # local public-format <split>.jsonl files
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

SEED_INSTRUCTIONS = (
    "Instructions:\nThink step-by-step and answer the following multiple-choice question. The "
    "reasoning process and answer should be enclosed within <think> </think> and <answer> </answer> "
    "tags, respectively, in the answer i.e., <think> reasoning process here </think> <answer> detailed "
    "answer with logical, concise explanation </answer>.The final answer should be on a new line "
    "starting with the phrase 'Final Answer: '. It should be one of 'A', 'B', 'C', 'D'. No other "
    "outputs are allowed. Now, try to solve the following question through the above guidelines:"
)
LETTERS = "ABCD"
OPTION_KEYS = ("opa", "opb", "opc", "opd")
HUB_DATASET = "openlifescienceai/medmcqa"


def format_problem(question: str, options: list[str]) -> str:
    """The reference recipe's prompt text: instructions, a blank line, the question, then lettered options."""
    lines = [f"{LETTERS[i]}. {opt}" for i, opt in enumerate(options)]
    return f"{SEED_INSTRUCTIONS}\n\n{question}\nOptions:\n" + "\n".join(lines) + "\n"


def convert_row(row: dict[str, Any]) -> tuple[dict[str, str] | None, str | None]:
    """One public row -> (reference-recipe row, None) or (None, reason it was skipped)."""
    if str(row.get("choice_type", "single")).lower() != "single":
        return None, "multi-answer question"
    try:
        cop = int(row.get("cop", -1))
    except (TypeError, ValueError):
        return None, "cop is not an integer"
    if cop not in range(4):
        return None, "no answer label (cop outside 0-3)"
    options = [row.get(k) for k in OPTION_KEYS]
    if (
        any(o is None or str(o).strip() == "" for o in options)
        or not str(row.get("question", "")).strip()
    ):
        return None, "missing question or option text"
    problem = format_problem(str(row["question"]).strip(), [str(o).strip() for o in options])
    return {"id": str(row["id"]), "problem": problem, "solution": LETTERS[cop]}, None


def convert_rows(rows: Iterable[dict[str, Any]]) -> tuple[list[dict[str, str]], Counter]:
    kept, skipped = [], Counter()
    for row in rows:
        out, why = convert_row(row)
        if out is None:
            skipped[why] += 1
        else:
            kept.append(out)
    return kept, skipped


def _read_local(src: Path, split: str) -> list[dict[str, Any]]:
    path = src / f"{split}.jsonl"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: not found (expected public-format <split>.jsonl files in {src})"
        )
    return [
        json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()
    ]


def _read_hub(split: str) -> list[dict[str, Any]]:
    from datasets import load_dataset  # only when converting from the hub

    return list(load_dataset(HUB_DATASET, split=split))


def prepare(
    out_dir: str | Path, splits: list[str], from_jsonl: str | None = None
) -> dict[str, dict]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = {}
    for split in splits:
        rows = _read_local(Path(from_jsonl), split) if from_jsonl else _read_hub(split)
        kept, skipped = convert_rows(rows)
        with open(out / f"{split}.jsonl", "w", encoding="utf-8") as f:
            for r in kept:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        report[split] = {"read": len(rows), "written": len(kept), "skipped": dict(skipped)}
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m data.prep_medmcqa", description=__doc__.split("\n")[0]
    )
    p.add_argument("out_dir")
    p.add_argument("--splits", default="train,validation", help="comma-separated splits to convert")
    p.add_argument("--from-jsonl", help="folder of public-format <split>.jsonl instead of the hub")
    a = p.parse_args(argv)
    report = prepare(a.out_dir, [s for s in a.splits.split(",") if s], a.from_jsonl)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
