"""Data cursor (exact resume order) and prompt tokenization."""

from __future__ import annotations

import pytest

from data.config import DataConfig
from trainer.prompts import DataCursor, drop_overlong, load_examples, tokenize_prompts


def test_cursor_resume_continues_the_same_sequence():
    full = DataCursor(10, seed=3)
    seq = [i for _ in range(7) for _, i in full.take(4)]  # 28 prompts: crosses two epoch boundaries
    first = DataCursor(10, seed=3)
    part = [i for _ in range(3) for _, i in first.take(4)]
    resumed = DataCursor(10, seed=3)
    resumed.load_state_dict(first.state_dict())
    rest = [i for _ in range(4) for _, i in resumed.take(4)]
    assert part + rest == seq


def test_each_epoch_is_a_permutation_and_epochs_differ():
    c = DataCursor(12, seed=0)
    e0 = [i for _, i in c.take(12)]
    e1 = [i for _, i in c.take(12)]
    assert sorted(e0) == sorted(e1) == list(range(12))
    assert e0 != e1
    assert [i for _, i in DataCursor(5, seed=0, shuffle=False).take(7)] == [0, 1, 2, 3, 4, 0, 1]


def test_cursor_rejects_other_data_on_resume():
    c = DataCursor(10, seed=1)
    with pytest.raises(ValueError, match="same data and trainer.seed"):
        c.load_state_dict({"position": 4, "num_prompts": 11, "seed": 1, "shuffle": 1})
    with pytest.raises(ValueError, match="no prompts"):
        DataCursor(0, seed=1)


def test_tokenize_prompts_left_truncates(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    cfg = DataConfig(source="charclass", num_train_examples=6)
    examples = load_examples(cfg, "train")
    assert len(examples) == 6
    full = tokenize_prompts(examples, tok, cfg, None)
    short = tokenize_prompts(examples, tok, cfg, 8)
    for f, s in zip(full, short, strict=True):
        assert s.token_ids == f.token_ids[-8:] and len(f.token_ids) > 8
        assert f.columns["solution"] == s.columns["solution"] and f.id == s.id
    assert tok.decode(full[0].token_ids).endswith("<|im_start|>assistant\n")


def test_jsonl_examples(medmcqa_dir):
    cfg = DataConfig(
        source="jsonl",
        path=str(medmcqa_dir / "small"),
        answer_choices=list("ABCD"),
        num_train_examples=5,
    )
    assert len(load_examples(cfg, "train")) == 5
    assert len(load_examples(cfg, "validation")) == 50


def test_prompts_the_sampler_would_refuse_are_dropped_at_load(tiny_model_dir, caplog):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    cfg = DataConfig(source="charclass", num_train_examples=6)
    examples = load_examples(cfg, "train")
    full = tokenize_prompts(examples, tok, cfg, None)
    budget = sorted(len(p.token_ids) for p in full)[2]
    kept, dropped = drop_overlong(full, budget, "train")
    fits = [p for p in full if len(p.token_ids) <= budget]
    assert [p.id for p in kept] == [p.id for p in fits] and 0 < dropped == 6 - len(fits)
    assert f"{dropped} of 6 train prompts" in caplog.text and f"{budget} tokens" in caplog.text
    # left-truncation to max_prompt_length comes first, so with it nothing needs dropping
    short = tokenize_prompts(examples, tok, cfg, budget)
    assert drop_overlong(short, budget, "train") == (short, 0)
    assert drop_overlong(full, None, "train") == (full, 0)
