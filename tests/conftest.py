"""Shared test set-up: environment defaults for CPU runs, paths, and the tiny model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Defaults measured on the CPU dev machine (see ../shared/DESIGN.md); a caller's own values win.
for _k, _v in {
    "TORCH_COMPILE_DISABLE": "1",
    "RAY_AUTH_MODE": "disabled",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "TOKENIZERS_PARALLELISM": "false",
    "RAY_USAGE_STATS_ENABLED": "0",
    "TORCH_EXTENSIONS_DIR": str(Path.home() / ".cache" / "grpo-service" / "torch_extensions"),
}.items():
    os.environ.setdefault(_k, _v)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
MEDMCQA = SHARED_DATA / "med_mcqa"


@pytest.fixture(scope="session")
def medmcqa_dir() -> Path:
    if not (MEDMCQA / "small" / "train.jsonl").is_file():
        pytest.fail(
            f"MedMCQA sample files not found under {MEDMCQA} (../shared/data beside the repo)"
        )
    return MEDMCQA


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny random Qwen2 chat model (data.tiny_model), built once per test session."""
    from data.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny_model") / "model", seed=0)
