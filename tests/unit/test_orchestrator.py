"""trainer.orchestrator with a fake sampler and the real in-process reward scorer: completions no
reward could score are left out of training and their group's baseline, groups left with fewer
than two scored completions are dropped, and a run whose rewards keep failing stops."""

from __future__ import annotations

import asyncio
import math

import pytest

from rewards import make_scorer
from rewards.config import RewardPoolConfig
from sampler.client import CompletionResult, GroupResult, SamplingSpec
from trainer.orchestrator import Orchestrator, RolloutSettings
from trainer.prompts import DataCursor, Prompt

G = 4


def _length_unless_dead(prompts: list, completions: list, **_: object) -> list[float]:
    """A reward that raises on any completion containing 'dead' (the pool then retries item by
    item, so exactly those items get None, counted as failures)."""
    texts = [c[0]["content"] for c in completions]
    if any("dead" in t for t in texts):
        raise RuntimeError("reward backend unreachable")
    return [float(len(t)) for t in texts]


class FakeSampler:
    """Answers `generate` as SamplerClient does, from weights `version`; prompt k (its first token
    id) gets texts[k]."""

    def __init__(self, texts: dict[int, list[str]]) -> None:
        self.texts = texts
        self.version = 0

    async def generate(self, prompts: list[list[int]], n: int, spec: SamplingSpec) -> list:
        out = []
        for ids in prompts:
            comps = [CompletionResult([7, 8], [-0.1, -0.2], "stop", t) for t in self.texts[ids[0]]]
            out.append(GroupResult(list(ids), comps[:n], self.version, "fake://replica"))
        return out


def _orchestrator(
    texts: dict[int, list[str]], prompts_per_step: int, **settings: object
) -> Orchestrator:
    prompts = [Prompt(f"p{k}", [k, 1, 2], [{"role": "user", "content": "q"}]) for k in texts]
    scorer = make_scorer([f"{__name__}:_length_unless_dead"], None, RewardPoolConfig(use_ray=False))
    rollout = RolloutSettings(
        num_generations=G,
        prompts_per_step=prompts_per_step,
        max_staleness=0,
        scale_rewards="group",
        sampling=SamplingSpec(max_tokens=4),
        reward_names=["_length_unless_dead"],
        **settings,
    )
    cursor = DataCursor(len(prompts), 0, shuffle=False)
    return Orchestrator(prompts, cursor, FakeSampler(texts), scorer, rollout)


def _run_steps(orch: Orchestrator, steps: int) -> list:
    """Take `steps` batches in order as the driver does (each step's push makes the next live)."""

    async def run() -> list:
        orch.start()
        batches = []
        try:
            for step in range(steps):
                batches.append(await orch.get_step(step))
                orch.client.version = step + 1  # the push of this step's weights
                orch.set_version(step + 1)
        finally:
            await orch.aclose()
        return batches

    return asyncio.run(run())


def test_unscored_completions_do_not_train_and_leave_their_groups_baseline():
    texts = {0: ["a", "bb", "dead", "ccc"], 1: ["dead", "dead", "x", "dead"]}
    [batch] = _run_steps(_orchestrator(texts, 2, max_failed_reward_fraction=1.0), 1)
    first, second = batch.groups
    dead = first.samples[2]
    assert math.isnan(dead.reward) and not dead.trainable and dead.advantage == 0.0
    # the baseline is the mean of the three scored completions (1, 2, 3): not diluted by a 0.0
    scored = [s for s in first.samples if s.trainable]
    assert [s.reward for s in scored] == [1.0, 2.0, 3.0]
    assert scored[1].advantage == pytest.approx(0.0, abs=1e-6)
    assert scored[0].advantage == pytest.approx(-scored[2].advantage) and scored[0].advantage < 0
    # one scored completion left: nothing to compare it with, so the whole group is dropped
    assert not any(s.trainable for s in second.samples)
    assert batch.metrics["rewards/failed_items"] == 4.0
    assert batch.metrics["rewards/failed_fraction"] == 0.5
    assert batch.metrics["rollout/unscored_groups_dropped"] == 1.0


def test_the_run_stops_when_too_many_completions_stay_unscored_over_the_window():
    # 25% unscored at steps 0 and 1, then every completion: (0.25 + 1.0) / 2 > 0.5 over 2 steps
    quarter = ["a", "b", "c", "dead"]
    texts = {0: quarter, 1: quarter, 2: ["dead"] * G}
    orch = _orchestrator(texts, 1, max_failed_reward_fraction=0.5, failed_reward_window=2)
    with pytest.raises(RuntimeError) as err:
        _run_steps(orch, 3)
    msg = str(err.value)
    assert "pipeline.max_failed_reward_fraction=0.5" in msg and "steps 2-3" in msg
    assert "62%" in msg and "_length_unless_dead: 6" in msg


def test_a_longer_window_averages_one_bad_step_away():
    quarter = ["a", "b", "c", "dead"]
    texts = {0: quarter, 1: quarter, 2: ["dead", "dead", "dead", "y"]}
    orch = _orchestrator(texts, 1, max_failed_reward_fraction=0.5, failed_reward_window=5)
    *_, batch = _run_steps(orch, 3)  # (1 + 1 + 3) / 12 unscored: under the bound
    assert batch.metrics["rewards/failed_items"] == 3.0
