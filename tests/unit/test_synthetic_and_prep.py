"""The offline charclass task and the MedMCQA prep command (on local samples)."""

from __future__ import annotations

import json
import re

from data import prep_medmcqa, synthetic
from data.loader import load_dataset_dir, load_split


def test_charclass_is_deterministic_and_disjoint(tmp_path):
    a = synthetic.generate_rows("train", 60, seed=3)
    assert a == synthetic.generate_rows("train", 60, seed=3)
    assert a != synthetic.generate_rows("train", 60, seed=4)
    val = synthetic.generate_rows("validation", 60, seed=3)
    assert not {r["id"] for r in a} & {r["id"] for r in val}
    assert {r["solution"] for r in a} == set(synthetic.CLASSES)
    for r in a:  # the example in the prompt is of the requested class
        example = re.search(r"(?:like|such as|:) (\S+?)\.?$", r["problem"]).group(1)
        assert set(example) <= set(synthetic.CLASSES[r["solution"]]), r


def test_charclass_writes_loadable_splits(tmp_path):
    synthetic.main([str(tmp_path), "--train", "9", "--validation", "3", "--test", "3"])
    splits = load_dataset_dir(tmp_path, answer_choices=sorted(synthetic.CLASSES))
    assert [len(splits[s]) for s in ("train", "validation", "test")] == [9, 3, 3]


def _public_row_from_seed(row):
    """Rebuild a public-format MedMCQA row from a seed row (question + 4 options + letter)."""
    body = row["problem"].split("\n\n", 1)[1]
    question, opts = body.split("\nOptions:\n")
    options = [line[3:] for line in opts.rstrip("\n").split("\n")]
    return {
        "id": row["id"],
        "question": question,
        "opa": options[0],
        "opb": options[1],
        "opc": options[2],
        "opd": options[3],
        "cop": "ABCD".index(row["solution"]),
        "choice_type": "single",
    }


def test_prep_reproduces_seed_rows_exactly(tmp_path, medmcqa_dir):
    seed_rows = [
        json.loads(x) for x in (medmcqa_dir / "small" / "train.jsonl").read_text().splitlines()
    ]
    public = [_public_row_from_seed(r) for r in seed_rows]
    public.append({**public[0], "id": "multi", "choice_type": "multi"})
    public.append({**public[0], "id": "nolabel", "cop": -1})
    src = tmp_path / "public"
    src.mkdir()
    (src / "train.jsonl").write_text("\n".join(json.dumps(r) for r in public) + "\n")
    report = prep_medmcqa.prepare(tmp_path / "out", ["train"], from_jsonl=str(src))
    assert report["train"]["written"] == len(seed_rows)
    assert report["train"]["skipped"] == {
        "multi-answer question": 1,
        "no answer label (cop outside 0-3)": 1,
    }
    converted = [json.loads(x) for x in (tmp_path / "out" / "train.jsonl").read_text().splitlines()]
    assert converted == seed_rows
    assert len(load_split(tmp_path / "out" / "train.jsonl", answer_choices=list("ABCD"))) == len(
        seed_rows
    )
