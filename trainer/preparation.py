"""What a run prepares before any role starts: the model folder, the prompts the samplers will
accept, the number of steps, and the resolved config the samplers read.

Owns: the tiny model's build, the model's context length as vLLM derives it, dropping prompts
the samplers would refuse (counted per split), the step count, the redacted resolved config.
Does not know: Ray, the samplers' processes, training.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sampler.config import SECRET_FIELDS
from trainer.config import ConfigError, RunConfig
from trainer.prompts import Prompt, drop_overlong, load_examples, tokenize_prompts

# The config keys vLLM 0.32 derives a model's context length from (the smallest wins).
CONTEXT_KEYS = (
    "max_position_embeddings",
    "n_positions",
    "max_seq_len",
    "seq_length",
    "model_max_length",
    "max_target_positions",
    "max_sequence_length",
    "max_seq_length",
    "seq_len",
)


@dataclass
class Prompts:
    train: list[Prompt]
    evals: list[Prompt]
    # Prompts dropped at load because the samplers would refuse them (per split).
    dropped: dict[str, int] = field(default_factory=lambda: {"train": 0, "eval": 0})


def redacted(cfg: RunConfig) -> dict[str, Any]:
    """The run config as a plain dict with every key replaced by a marker (files, logs, MLflow).
    Launched replicas get their keys through the environment, not from this file."""
    data = cfg.model_dump(mode="json")
    for name in SECRET_FIELDS:
        if data["sampler"].get(name):
            data["sampler"][name] = "<redacted>"
    return data


def model_context_length(model_dir: str | Path) -> int | None:
    """The context length vLLM would serve the model folder with by default, as vLLM derives it
    (the smallest length key; rope scaling ignored, so it errs short); None if unknown."""
    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    cfg = cfg.get("text_config") or cfg
    lengths = [int(cfg[k]) for k in CONTEXT_KEYS if isinstance(cfg.get(k), int)]
    return min(lengths) if lengths else None


def total_steps(cfg: RunConfig, num_prompts: int) -> int:
    t = cfg.trainer
    if t.max_steps > 0:
        return t.max_steps
    return max(1, math.ceil(t.num_train_epochs * num_prompts / cfg.prompts_per_step))


def prepare_model(cfg: RunConfig, out: Path) -> str:
    """The model folder the run trains: 'tiny' is built once into the output folder."""
    m = cfg.model
    if m.name_or_path == "tiny":
        path = out / "base_model"
        if not (path / "config.json").is_file():
            from data.tiny_model import build_tiny_model

            build_tiny_model(path, seed=m.tiny_seed, warm_start_steps=m.tiny_warm_start_steps)
        return str(path)
    if not (Path(m.name_or_path) / "config.json").is_file():
        raise ConfigError(
            f"model.name_or_path: {m.name_or_path} is not a model folder (no config.json); "
            "give a local Hugging Face model folder or 'tiny'"
        )
    return str(Path(m.name_or_path).resolve())


def prepare_model_and_prompts(cfg: RunConfig, out: Path) -> tuple[str, Prompts]:
    """The model folder (built for the tiny model) and the prompts its tokenizer makes."""
    from transformers import AutoTokenizer

    model_path = prepare_model(cfg, out)
    return model_path, prepare_prompts(cfg, AutoTokenizer.from_pretrained(model_path), model_path)


def prepare_prompts(cfg: RunConfig, tokenizer: Any, model_path: str) -> Prompts:
    """Train and eval prompts, without those the samplers would refuse (dropped here and
    counted, so no request fails mid-run)."""
    d, t = cfg.data, cfg.trainer
    budget = cfg.prompt_token_budget(model_context_length(model_path))
    out = Prompts([], [])
    train = tokenize_prompts(load_examples(d, d.train_split), tokenizer, d, t.max_prompt_length)
    out.train, out.dropped["train"] = drop_overlong(train, budget, "train")
    if not out.train:
        raise ConfigError(
            f"no training prompt fits in {budget} tokens (the samplers' context, "
            f"sampler.max_model_len or the model's, minus trainer.max_completion_length="
            f"{t.max_completion_length}, or sampler.limits.max_prompt_tokens): set "
            "trainer.max_prompt_length to left-truncate prompts, lower "
            "trainer.max_completion_length or raise sampler.max_model_len"
        )
    if d.eval_split and t.eval_steps:
        ev = load_examples(d, d.eval_split)[: d.max_eval_examples]
        evals = tokenize_prompts(ev, tokenizer, d, t.max_prompt_length)
        out.evals, out.dropped["eval"] = drop_overlong(evals, budget, "eval")
    return out
