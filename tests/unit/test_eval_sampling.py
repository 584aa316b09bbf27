"""Eval samples with the rollout's sampling settings: `Run.evaluate` sends the sampler the same
SamplingSpec the orchestrator uses for training (one completion per prompt), through fakes of the
sampler client and the reward scorer."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

from rewards.batch import RewardBatch
from sampler.client import CompletionResult, GroupResult, SamplingSpec
from trainer.config_loading import parse_config
from trainer.driver import Run
from trainer.prompts import Prompt

SAMPLING = {
    "max_completion_length": 48,
    "temperature": 0.7,
    "top_p": 0.9,
    "top_k": 5,
    "min_p": 0.1,
    "repetition_penalty": 1.3,
}


class _RecordingClient:
    """Answers every prompt with one fixed completion and records each call's arguments."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[list[int]], int, SamplingSpec]] = []

    async def generate(self, prompts: list[list[int]], n: int, spec: SamplingSpec) -> list:
        self.calls.append((prompts, n, spec))
        done = CompletionResult([7, 8], [-0.5, -0.5], "stop", "B")
        return [GroupResult(p, [done] * n, 0, "fake") for p in prompts]


class _ConstantScorer:
    async def ascore(self, prompts: list, completions: list, columns: dict[str, list]) -> Any:
        return RewardBatch([1.0] * len(completions), {"accuracy": [1.0] * len(completions)}, {})


def _run(tmp_path: Path) -> Run:
    cfg = parse_config({"trainer": {"output_dir": str(tmp_path / "out"), **SAMPLING}})
    run = Run(cfg)
    run.client, run.scorer = _RecordingClient(), _ConstantScorer()
    return run


def test_eval_samples_with_every_rollout_setting(tmp_path: Path) -> None:
    run = _run(tmp_path)
    evals = [Prompt("a", [1, 2], [{"role": "user", "content": "q"}], {"solution": "B"})]
    metrics = asyncio.run(run.evaluate(evals))
    [(prompts, n, spec)] = run.client.calls
    assert prompts == [[1, 2]] and n == 1
    assert spec == SamplingSpec(
        max_tokens=48, temperature=0.7, top_p=0.9, top_k=5, min_p=0.1, repetition_penalty=1.3
    )
    assert metrics == {"eval_reward": 1.0, "eval_rewards/accuracy/mean": 1.0}


def test_the_rollout_spec_carries_every_sampling_setting(tmp_path: Path) -> None:
    from trainer.sampling import rollout_sampling

    t = _run(tmp_path).cfg.trainer
    spec = rollout_sampling(t)
    assert spec.max_tokens == t.max_completion_length and spec.seed is None
    shared = {f.name for f in dataclasses.fields(SamplingSpec)} - {
        "max_tokens",
        "seed",
        "stop_token_ids",  # under generation_kwargs, as in TRL
    }
    assert {name: getattr(spec, name) for name in shared} == {
        name: getattr(t, name) for name in shared
    }
    assert spec.stop_token_ids is None


def test_generation_kwargs_stop_tokens_reach_rollouts_and_eval(tmp_path: Path) -> None:
    from trainer.sampling import eval_sampling, rollout_sampling

    cfg = parse_config(
        {
            "trainer": {
                "output_dir": str(tmp_path / "out"),
                "generation_kwargs": {"stop_token_ids": [5, 9]},
            }
        }
    )
    assert rollout_sampling(cfg.trainer).stop_token_ids == [5, 9]
    assert eval_sampling(cfg.trainer)[0].stop_token_ids == [5, 9]


def test_generation_kwargs_takes_trls_null_and_refuses_what_the_sampler_cannot_do(
    tmp_path: Path,
) -> None:
    import pytest

    out = str(tmp_path / "out")
    cfg = parse_config({"trainer": {"output_dir": out, "generation_kwargs": None}})
    assert cfg.trainer.generation_kwargs.stop_token_ids is None
    with pytest.raises(ValueError, match="generation_kwargs.top_n_sigma"):
        parse_config({"trainer": {"output_dir": out, "generation_kwargs": {"top_n_sigma": 1}}})
    with pytest.raises(ValueError, match="stop_token_ids"):
        parse_config(
            {"trainer": {"output_dir": out, "generation_kwargs": {"stop_token_ids": [-1]}}}
        )
