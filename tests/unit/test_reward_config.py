"""A run's rewards are validated once, when the run config loads: every bad reward setting fails
there with an error naming the field, including the built-in rewards' options."""

from __future__ import annotations

import pytest

from trainer.config import ConfigError
from trainer.config_loading import parse_config


def _load(reward_funcs: list[str], rewards: dict | None = None, **trainer: object) -> object:
    return parse_config(
        {"trainer": {"reward_funcs": reward_funcs, **trainer}, "rewards": rewards or {}}
    )


def test_an_overlong_buffer_past_the_completion_length_fails_at_load() -> None:
    with pytest.raises(
        ConfigError, match=r"rewards\.overlong_buffer_tokens.*max_completion_length"
    ):
        _load(["overlong"], {"overlong_buffer_tokens": 100}, max_completion_length=64)


def test_answer_choices_the_accuracy_reward_refuses_fail_at_load() -> None:
    with pytest.raises(ConfigError, match=r"rewards\.answer_choices"):
        _load(["accuracy"], {"answer_choices": ["A", "B\nC"]})


@pytest.mark.parametrize(
    "funcs,needle",
    [
        (["format", "nope"], r"trainer\.reward_funcs.*'nope'"),
        (["format", "pkg.mod:"], r"trainer\.reward_funcs.*malformed import path"),
        (["format", "format"], r"trainer\.reward_funcs.*duplicate metric names"),
    ],
)
def test_bad_reward_names_fail_at_load_naming_the_field(funcs: list[str], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        _load(funcs)


def test_non_finite_reward_weight_fails_at_load() -> None:
    with pytest.raises(ConfigError, match=r"trainer\.reward_weights.*finite"):
        _load(["format"], reward_weights=[float("nan")])


def test_a_plugin_is_not_imported_at_load() -> None:
    """Plugins import where they run (the driver's scorer, each reward actor): loading a config
    on a machine without the plugin (e.g. `deploy/submit.py` on a laptop) still works."""
    cfg = _load(["format", "not_installed_pkg.rewards:bonus"])
    assert cfg.trainer.reward_funcs == ["format", "not_installed_pkg.rewards:bonus"]


def test_the_validated_spec_is_what_the_scorer_is_built_from() -> None:
    from rewards.spec import RewardSpec

    cfg = _load(["accuracy", "format"], {"use_ray": False}, reward_weights=[0.8, 0.2])
    spec = cfg.reward_spec
    assert isinstance(spec, RewardSpec)
    assert spec.names == ("accuracy", "format") and spec.weights == {"accuracy": 0.8, "format": 0.2}
