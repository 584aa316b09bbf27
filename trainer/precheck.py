"""What a run reads, checked before anything slow starts (the tiny model, Ray, vLLM, DeepSpeed).

Owns: reading every data split the run will use (a bad file fails in about a second with its
file, line and field, not after the services started) and the model folder check.
Does not know: tokenizers, prompts, or anything the driver starts.
"""

from __future__ import annotations

from pathlib import Path

from data.config import DataConfig
from trainer.config import ConfigError, RunConfig
from trainer.prompts import load_examples


def splits_used(data: DataConfig, eval_steps: int | None) -> list[str]:
    """The splits a run reads: the train split, and the eval split when it evaluates."""
    return [data.train_split] + ([data.eval_split] if data.eval_split and eval_steps else [])


def check_data(cfg: RunConfig) -> None:
    """Read and validate every split the run uses; raises data.loader.DataError."""
    if cfg.data.source != "jsonl":  # the synthetic task is generated, nothing to read
        return
    for split in splits_used(cfg.data, cfg.trainer.eval_steps):
        load_examples(cfg.data, split)


def check_model(cfg: RunConfig) -> None:
    """A model other than 'tiny' must be a local Hugging Face folder."""
    name = cfg.model.name_or_path
    if name != "tiny" and not (Path(name) / "config.json").is_file():
        raise ConfigError(
            f"model.name_or_path: {name} is not a model folder (no config.json); "
            "give a local Hugging Face model folder or 'tiny'"
        )


def check_inputs(cfg: RunConfig) -> None:
    """Everything a run reads before it starts a service: the model folder and the data."""
    check_model(cfg)
    check_data(cfg)
