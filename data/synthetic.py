"""An offline task a tiny random-init model can visibly learn with GRPO in minutes on CPU.

Task "charclass": each prompt asks for a reply made only of one character class (digits,
capital letters or lowercase letters). The reward (`rewards` registry name `char_class`) is the
fraction of non-space characters of the completion in the requested class, so it is dense: a
random policy already scores 0.04-0.1 and every step of improvement is visible.
Rows use the reference recipe's jsonl shape `{id, problem, solution}`; `solution` is the class name.

Owns: generating rows deterministically. Does not know: rewards, models, training.

    python -m data.synthetic OUT_DIR [--train 512 --validation 64 --test 64 --seed 0]
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

CLASSES: dict[str, str] = {
    "digits": "0123456789",
    "upper": "ABCDEFGHIJKLMNOPQRSTUVWXYZ",
    "lower": "abcdefghijklmnopqrstuvwxyz",
}
_TEMPLATES = {
    "digits": [
        "Reply with digits only, like {ex}.",
        "Write a number such as {ex}.",
        "Digits only: {ex}",
    ],
    "upper": [
        "Reply with capital letters only, like {ex}.",
        "Write in CAPS such as {ex}.",
        "Capitals only: {ex}",
    ],
    "lower": [
        "Reply with lowercase letters only, like {ex}.",
        "Write small letters such as {ex}.",
        "Lowercase only: {ex}",
    ],
}
SPLIT_SIZES = {"train": 512, "validation": 64, "test": 64}
# Distinct seeds per split so the splits do not share rows.
_SPLIT_SEED_OFFSET = {"train": 0, "validation": 1_000_003, "test": 2_000_003}


def generate_rows(
    split: str, n: int, seed: int = 0, classes: list[str] | None = None
) -> list[dict[str, str]]:
    """`n` rows of `split`, identical for the same (split, n, seed, classes); classes cycle in order."""
    if split not in _SPLIT_SEED_OFFSET:
        raise ValueError(f"split must be one of {sorted(_SPLIT_SEED_OFFSET)}, got {split!r}")
    unknown = sorted(set(classes or []) - set(CLASSES))
    if unknown:
        raise ValueError(f"unknown charclass classes {unknown}: choose from {sorted(CLASSES)}")
    rng = random.Random(seed + _SPLIT_SEED_OFFSET[split])
    names = sorted(classes or CLASSES)
    rows = []
    for i in range(n):
        cls = names[i % len(names)]
        example = "".join(rng.choice(CLASSES[cls]) for _ in range(rng.randint(3, 6)))
        problem = rng.choice(_TEMPLATES[cls]).format(ex=example)
        rows.append({"id": f"charclass-{split}-{i:05d}", "problem": problem, "solution": cls})
    return rows


def tokenizer_corpus() -> list[str]:
    """Text for the tiny tokenizer's merges (so task prompts tokenize compactly)."""
    out = []
    for cls, templates in _TEMPLATES.items():
        for t in templates:
            out.append(t.format(ex=CLASSES[cls][:5]))
    out += [CLASSES[c] for c in CLASSES]
    return out


def write_splits(out_dir: str | Path, sizes: dict[str, int] | None = None, seed: int = 0) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for split, n in (sizes or SPLIT_SIZES).items():
        with open(out / f"{split}.jsonl", "w", encoding="utf-8") as f:
            for row in generate_rows(split, n, seed):
                f.write(json.dumps(row) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m data.synthetic", description="Write the charclass task as jsonl splits."
    )
    p.add_argument("out_dir")
    p.add_argument("--seed", type=int, default=0)
    for split, n in SPLIT_SIZES.items():
        p.add_argument(f"--{split}", type=int, default=n, help=f"rows in {split}.jsonl")
    a = p.parse_args(argv)
    print(write_splits(a.out_dir, {s: getattr(a, s) for s in SPLIT_SIZES}, a.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
