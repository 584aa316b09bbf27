"""A pipeline run with in-flight weight updates (`sampler.update_mode=inflight`, max_staleness 1)
trains, and its outputs say which weights made which tokens: completions long enough to be in
flight when the next push lands are split between two versions, the audit log carries every
completion's spans, and `policy/mixed_version_fraction` is logged each step."""

from __future__ import annotations

from itertools import pairwise

import pytest
from test_pipeline import _jsonl, _run

pytestmark = pytest.mark.slow

STEPS = 5


def test_an_inflight_run_trains_and_records_each_completions_versions(tmp_path):
    out = tmp_path / "run"
    # 192-token completions take the tiny model longer than a training step, so each push
    # lands while the next step's completions are being generated.
    _run(
        out,
        "sampler.update_mode=inflight",
        "pipeline.max_staleness=1",
        f"trainer.max_steps={STEPS}",
        "trainer.max_completion_length=192",
        "trainer.eval_steps=null",
        "trainer.save_steps=100",
    )
    metrics = _jsonl(out / "metrics.jsonl")
    assert [m["policy/version"] for m in metrics] == list(range(1, STEPS + 1))
    assert all("policy/mixed_version_fraction" in m for m in metrics)
    trained = _jsonl(out / "trained_prompts.jsonl")
    mixed = 0
    for row in trained:
        assert len(row["sample_versions"]) == len(row["prompt_ids"])
        for oldest, group in zip(row["versions"], row["sample_versions"], strict=True):
            assert len(group) == 8
            # a group's version is its oldest token's; spans start at 0 and go forward in
            # versions and positions; staleness is bounded by the oldest
            assert oldest == min(spans[0][0] for spans in group)
            assert row["step"] - oldest <= 1
            for spans in group:
                assert spans[0][1] == 0
                assert all(a[0] < b[0] and a[1] < b[1] for a, b in pairwise(spans))
                mixed += len(spans) > 1
    logged = sum(m["policy/mixed_version_fraction"] * 32 for m in metrics)
    assert mixed > 0 and round(logged) == mixed, (mixed, logged)
