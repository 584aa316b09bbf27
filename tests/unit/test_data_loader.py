"""The jsonl loader (the reference recipe's format) on the real MedMCQA sample files and on malformed inputs."""

from __future__ import annotations

import json

import pytest

from data.loader import DataError, load_dataset_dir, load_split, to_chat

ABCD = ["A", "B", "C", "D"]


def test_small_splits_load(medmcqa_dir):
    splits = load_dataset_dir(medmcqa_dir / "small", answer_choices=ABCD)
    assert {k: len(v) for k, v in splits.items()} == {"train": 50, "validation": 50, "test": 50}
    ex = splits["train"][0]
    assert ex.solution in ABCD and "Final Answer" in ex.problem and "Options:\nA." in ex.problem


def test_full_splits_load_with_answer_distribution(medmcqa_dir):
    test = load_split(medmcqa_dir / "full" / "test.jsonl", answer_choices=ABCD)
    assert len(test) == 2816
    counts = {c: sum(e.solution == c for e in test) for c in ABCD}
    assert counts == {"A": 950, "B": 735, "C": 617, "D": 514}
    assert len(load_split(medmcqa_dir / "full" / "validation.jsonl", answer_choices=ABCD)) == 1989


def test_to_chat_keeps_seed_instructions(medmcqa_dir):
    ex = load_split(medmcqa_dir / "small" / "validation.jsonl")[0]
    assert to_chat(ex) == [{"role": "user", "content": ex.problem}]
    msgs = to_chat(ex, system_prompt="Be brief.")
    assert (
        msgs[0] == {"role": "system", "content": "Be brief."} and msgs[1]["content"] == ex.problem
    )
    assert ex.reward_columns()["solution"] == ex.solution


def _write(tmp_path, lines):
    p = tmp_path / "train.jsonl"
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return p


GOOD = json.dumps({"id": "a", "problem": "Q?", "solution": "B"})


@pytest.mark.parametrize(
    "bad,line,field,text",
    [
        (json.dumps({"id": "b", "problem": "Q?"}), 2, "solution", "missing"),
        (json.dumps({"id": "b", "problem": "", "solution": "A"}), 2, "problem", "non-empty"),
        (json.dumps({"id": "b", "problem": "Q", "solution": "E"}), 2, "solution", "not one of"),
        (json.dumps({"id": "a", "problem": "Q", "solution": "A"}), 2, "id", "duplicate"),
        ('{"id": "b", "problem": ', 2, None, "not valid JSON"),
        ("[1, 2]", 2, None, "JSON object"),
    ],
)
def test_malformed_rows_name_file_line_field(tmp_path, bad, line, field, text):
    p = _write(tmp_path, [GOOD, bad])
    with pytest.raises(DataError) as e:
        load_split(p, answer_choices=ABCD)
    msg = str(e.value)
    assert str(p) in msg and f"line {line}" in msg and text in msg
    assert e.value.line == line and e.value.field == field
    if field:
        assert repr(field) in msg


def test_empty_split_and_missing_file(tmp_path):
    p = _write(tmp_path, ["", "   "])
    with pytest.raises(DataError, match="empty"):
        load_split(p)
    with pytest.raises(DataError, match="not found"):
        load_split(tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match="dataset folder not found"):
        load_dataset_dir(tmp_path / "nofolder")


def test_non_utf8_file(tmp_path):
    p = tmp_path / "train.jsonl"
    p.write_bytes(b'{"id": "a", "problem": "\xff\xfe", "solution": "A"}\n')
    with pytest.raises(DataError, match="not UTF-8"):
        load_split(p)


def test_extra_columns_reach_rewards(tmp_path):
    p = _write(tmp_path, [json.dumps({"id": 7, "problem": "Q", "solution": "x", "topic": "t"})])
    ex = load_split(p)[0]
    assert ex.id == "7" and ex.reward_columns() == {"id": "7", "solution": "x", "topic": "t"}
