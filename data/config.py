"""Configuration of the prompt data (the `data:` section of a run YAML)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# What to do when the data folder is unset or missing (README "Your own data", docs/data.md).
DATA_PATH_HINT = (
    "pass --set data.path=DIR, a folder holding train.jsonl and validation.jsonl with one "
    '{"id", "problem", "solution"} object per line (README "Your own data", docs/data.md); '
    "MedMCQA in that format: python -m data.prep_medmcqa local_data/medmcqa (needs the hub; "
    "--from-jsonl DIR converts local public-format files)"
)


class DataConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source: Literal["charclass", "jsonl"] = Field(
        "charclass",
        description="'charclass': the offline synthetic task (data.synthetic), generated in memory; "
        "'jsonl': a folder of <split>.jsonl files in the reference recipe's {id, problem, solution} format.",
    )
    path: str | None = Field(
        None,
        description="Folder holding train.jsonl / validation.jsonl (/ test.jsonl); source 'jsonl' only.",
    )
    train_split: str = Field("train", description="Split trained on.")
    eval_split: str | None = Field(
        "validation", description="Split for periodic eval; null disables eval."
    )
    answer_choices: list[str] | None = Field(
        None,
        description="If set, every row's `solution` must be one of these (e.g. [A, B, C, D] for MedMCQA); "
        "a row that is not fails loading with its file and line.",
    )
    system_prompt: str | None = Field(
        None,
        description="Optional system message. The reference recipe puts its instructions in `problem` itself.",
    )
    num_train_examples: int | None = Field(
        None, ge=1, description="Use only the first N training rows (charclass: rows generated)."
    )
    max_eval_examples: int | None = Field(64, ge=1, description="Cap on eval rows per eval round.")
    shuffle: bool = Field(
        True, description="Shuffle training rows each epoch (seeded by trainer.seed)."
    )
    seed: int = Field(0, description="Seed of the charclass generator.")
    classes: list[str] | None = Field(
        None,
        description="charclass only: which character classes prompts ask for (digits, upper, lower); "
        "default all three. One class is the quickest to learn visibly for a tiny random model.",
    )

    @model_validator(mode="after")
    def _path_needed(self) -> DataConfig:
        if self.source == "jsonl" and not self.path:
            raise ValueError(f"data.path is required when data.source is 'jsonl': {DATA_PATH_HINT}")
        return self
