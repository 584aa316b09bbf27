"""Prompts for training and eval: rows -> tokenized chat prompts, and the resumable data cursor.

Owns: turning `data` rows into `Prompt`s (chat template, left-truncation to max_prompt_length),
dropping prompts the sampler would refuse (`drop_overlong`, at load, never mid-run) and
`DataCursor`, the deterministic, seeded order of training prompts whose state is part of every
checkpoint (so a resumed run trains exactly the prompts an uninterrupted run would have).
Does not know: sampling, rewards, training.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from typing import Any

from data.config import DATA_PATH_HINT, DataConfig
from data.loader import DataError, Example, load_split, to_chat

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prompt:
    id: str
    token_ids: list[int]
    messages: list[dict[str, str]]
    columns: dict[str, Any] = field(default_factory=dict)  # reach reward functions (solution, ...)


def load_examples(cfg: DataConfig, split: str) -> list[Example]:
    if cfg.source == "charclass":
        from data.synthetic import SPLIT_SIZES, generate_rows

        n = (
            cfg.num_train_examples
            if split == cfg.train_split and cfg.num_train_examples
            else SPLIT_SIZES.get(split, 64)
        )
        return [
            Example(r["id"], r["problem"], r["solution"])
            for r in generate_rows(split, n, cfg.seed, cfg.classes)
        ]
    from pathlib import Path

    if not Path(cfg.path).is_dir():
        raise DataError(
            cfg.path, None, None, f"data folder not found (data.path); {DATA_PATH_HINT}"
        )
    examples = load_split(Path(cfg.path) / f"{split}.jsonl", cfg.answer_choices)
    if split == cfg.train_split and cfg.num_train_examples:
        examples = examples[: cfg.num_train_examples]
    return examples


def tokenize_prompts(
    examples: list[Example], tokenizer: Any, cfg: DataConfig, max_prompt_length: int | None
) -> list[Prompt]:
    """Apply the chat template; prompts longer than max_prompt_length keep their last tokens (as TRL)."""
    out, truncated = [], 0
    for ex in examples:
        messages = to_chat(ex, cfg.system_prompt)
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if max_prompt_length and len(ids) > max_prompt_length:
            ids = ids[-max_prompt_length:]
            truncated += 1
        out.append(Prompt(ex.id, list(ids), messages, ex.reward_columns()))
    if truncated:
        log.warning(
            "%d of %d prompts were longer than max_prompt_length=%s and were left-truncated",
            truncated,
            len(examples),
            max_prompt_length,
        )
    return out


def drop_overlong(
    prompts: list[Prompt], max_tokens: int | None, split: str
) -> tuple[list[Prompt], int]:
    """(prompts of at most `max_tokens` tokens, how many were dropped); logged with the limit."""
    if max_tokens is None:
        return prompts, 0
    kept = [p for p in prompts if len(p.token_ids) <= max_tokens]
    dropped = len(prompts) - len(kept)
    if dropped:
        log.warning(
            "%d of %d %s prompts are longer than %d tokens, the largest prompt the sampler "
            "accepts with trainer.max_completion_length, and were dropped (set "
            "trainer.max_prompt_length to left-truncate them instead); first: %s",
            dropped,
            len(prompts),
            split,
            max_tokens,
            next(p.id for p in prompts if len(p.token_ids) > max_tokens),
        )
    return kept, dropped


class DataCursor:
    """Deterministic prompt order over epochs: epoch e is a shuffle seeded by (seed, e).

    `position` counts prompts handed out since the start of the run; the order is a pure function
    of (seed, number of prompts, shuffle), so saving `position` is enough to resume exactly.
    """

    def __init__(self, num_prompts: int, seed: int, shuffle: bool = True, position: int = 0):
        if num_prompts <= 0:
            raise ValueError("the training split has no prompts")
        self.n, self.seed, self.shuffle, self.position = num_prompts, seed, shuffle, position
        self._epoch_cache: dict[int, list[int]] = {}

    def _order(self, epoch: int) -> list[int]:
        if epoch not in self._epoch_cache:
            idx = list(range(self.n))
            if self.shuffle:
                random.Random(f"{self.seed}-{epoch}").shuffle(idx)
            self._epoch_cache = {epoch: idx}  # one epoch at a time is enough
        return self._epoch_cache[epoch]

    def index_at(self, position: int) -> int:
        epoch, offset = divmod(position, self.n)
        return self._order(epoch)[offset]

    def take(self, k: int) -> list[tuple[int, int]]:
        """Next k (position, prompt index) pairs."""
        out = [(p, self.index_at(p)) for p in range(self.position, self.position + k)]
        self.position += k
        return out

    def state_dict(self) -> dict[str, int]:
        return {
            "position": self.position,
            "num_prompts": self.n,
            "seed": self.seed,
            "shuffle": int(self.shuffle),
        }

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state["num_prompts"] != self.n or state["seed"] != self.seed:
            raise ValueError(
                f"checkpoint data cursor was for {state['num_prompts']} prompts with seed {state['seed']}, "
                f"this run has {self.n} prompts with seed {self.seed}: resume with the same data and trainer.seed"
            )
        self.position = state["position"]
