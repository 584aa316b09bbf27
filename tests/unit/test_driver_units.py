"""trainer.driver's pure parts, on real files: the model's context length, which prompts are
kept at data load, and which checkpoint a resume takes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trainer.config import ConfigError
from trainer.config_loading import parse_config
from trainer.preparation import model_context_length, prepare_prompts


def test_model_context_length_is_the_smallest_length_key(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"max_position_embeddings": 4096}))
    assert model_context_length(tmp_path) == 4096
    nested = {"text_config": {"max_position_embeddings": 2048, "seq_length": 1024}}
    (tmp_path / "config.json").write_text(json.dumps(nested))
    assert model_context_length(tmp_path) == 1024
    (tmp_path / "config.json").write_text("{}")
    assert model_context_length(tmp_path) is None


def _cfg(tmp_path: Path, **trainer: object):
    return parse_config(
        {
            "data": {"source": "charclass", "num_train_examples": 8, "max_eval_examples": 4},
            "sampler": {"max_model_len": 64},
            "trainer": {"output_dir": str(tmp_path / "out"), "eval_steps": 1, **trainer},
        }
    )


def test_prompts_over_the_samplers_context_are_dropped_at_load(tmp_path, tiny_model_dir, caplog):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    everything = _cfg(tmp_path, max_prompt_length=None, max_completion_length=8)
    full = prepare_prompts(everything, tok, str(tiny_model_dir)).train
    budget = sorted(len(p.token_ids) for p in full)[4]  # about half fit next to the completion
    cfg = _cfg(tmp_path, max_prompt_length=None, max_completion_length=64 - budget)
    got = prepare_prompts(cfg, tok, str(tiny_model_dir))
    train, evals = got.train, got.evals
    assert all(len(p.token_ids) <= budget for p in train + evals)
    assert 0 < got.dropped["train"] == 8 - len(train)
    assert got.dropped["eval"] == 4 - len(evals)
    assert "train prompts are longer than" in caplog.text


def test_a_split_with_no_prompt_that_fits_fails_at_load(tmp_path, tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    cfg = _cfg(tmp_path, max_prompt_length=None, max_completion_length=60)
    with pytest.raises(ConfigError, match=r"trainer.max_prompt_length.*sampler.max_model_len"):
        prepare_prompts(cfg, tok, str(tiny_model_dir))
