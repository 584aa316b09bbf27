"""Defaults that depend on another setting are resolved in one place: the IS mode from
pipeline.max_staleness, the dispatch window from max_staleness."""

from __future__ import annotations

import pytest

from sampler.client import SamplingSpec
from trainer.config import GRPOSettings, default_is_mode
from trainer.config_loading import parse_config
from trainer.orchestrator import RolloutSettings


@pytest.mark.parametrize("staleness,mode", [(0, "sequence_mask"), (1, "token_truncate")])
def test_the_is_mode_default_follows_staleness(staleness: int, mode: str) -> None:
    cfg = parse_config({"pipeline": {"max_staleness": staleness}})
    assert default_is_mode(staleness) == mode
    assert cfg.trainer.vllm_importance_sampling_mode == mode
    assert cfg.trainer.importance_sampling_mode == mode


def test_settings_without_a_run_config_use_the_on_policy_rule() -> None:
    assert GRPOSettings().importance_sampling_mode == default_is_mode(0)
    chosen = GRPOSettings(vllm_importance_sampling_mode="token_mask")
    assert chosen.importance_sampling_mode == "token_mask"


def _rollout(**kw: object) -> RolloutSettings:
    return RolloutSettings(2, 1, 2, "group", SamplingSpec(max_tokens=4), **kw)


def test_the_dispatch_window_defaults_to_max_staleness_once() -> None:
    assert _rollout().dispatch_ahead == 2
    assert _rollout(dispatch_ahead=5).dispatch_ahead == 5
