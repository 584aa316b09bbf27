"""Run configuration: every shipped YAML loads; recipe-style configs carry over; bad keys fail clearly."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from trainer.config import ConfigError
from trainer.config_loading import load_config, parse_config

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))


def test_configs_exist():
    assert {p.name for p in CONFIGS} >= {
        "local.yaml",
        "medmcqa_tiny.yaml",
        "medmcqa_recipe_style.yaml",
    }


def _data_from_fixture(path: Path, medmcqa_dir: Path) -> dict | None:
    """The data folder a shipped jsonl config leaves to the command line: the shared sample."""
    data = (yaml.safe_load(path.read_text()) or {}).get("data") or {}
    if data.get("source") == "jsonl" and not data.get("path"):
        return {"data.path": str(medmcqa_dir / "small")}
    return None


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads(path, medmcqa_dir):
    cfg = load_config(path, _data_from_fixture(path, medmcqa_dir))
    assert cfg.completions_per_step % cfg.trainer.num_generations == 0
    assert cfg.trainer.reward_funcs


def test_recipe_style_flat_keys_carry_over(medmcqa_dir):
    path = Path(__file__).resolve().parents[2] / "configs" / "medmcqa_recipe_style.yaml"
    cfg = load_config(path, _data_from_fixture(path, medmcqa_dir))
    t = cfg.trainer
    assert (t.learning_rate, t.num_generations, t.max_completion_length) == (3e-6, 2, 5000)
    assert t.reward_funcs == ["accuracy", "format"] and t.reward_weights == [0.8, 0.2]
    assert t.lr_scheduler_type == "cosine" and t.warmup_ratio == 0.1 and t.bf16
    assert cfg.model.torch_dtype == "bfloat16"  # moved from the flat trainer keys


def test_trl_names_and_defaults():
    t = parse_config({}).trainer
    assert t.loss_type == "dapo" and t.scale_rewards == "group" and t.beta == 0.0
    assert t.epsilon_upper == t.epsilon == 0.2
    assert parse_config({"trainer": {"scale_rewards": False}}).trainer.scale_rewards == "none"
    t = parse_config({"trainer": {"vllm_importance_sampling_cap": 2.5}}).trainer
    assert t.vllm_importance_sampling_clip_max == 2.5


def test_trainer_seed_seeds_each_sampler_replica(tmp_path):
    """trainer.seed reaches the samplers' engines (TRL's `seed` seeds generation too), one
    stream per replica; an explicit sampler.seed wins. Before, every run sampled with engine
    seed 0 whatever trainer.seed was, so "different seeds" shared their sampling noise."""
    from sampler.__main__ import parse_args
    from trainer.roles import _sampler_args

    assert parse_config({}).sampler.seed == 42
    assert parse_config({"trainer": {"seed": 7}}).sampler.seed == 7
    assert parse_config({"trainer": {"seed": 7}, "sampler": {"seed": 3}}).sampler.seed == 3
    c = tmp_path / "c.yaml"
    c.write_text(yaml.safe_dump({"trainer": {"seed": 5}}))
    cfg = load_config(c, {"trainer.seed": 11})
    assert cfg.sampler.seed == 11
    # what a replica actually runs with: the resolved config plus the driver's per-replica args
    resolved = tmp_path / "resolved.yaml"
    resolved.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    (tmp_path / "config.json").write_text("{}")
    seeds = [
        parse_args(["--model", str(tmp_path), *_sampler_args(resolved, "float32", cfg.sampler.seed + i)])[1].seed
        for i in range(2)
    ]  # fmt: skip
    assert seeds == [11, 12]


def test_unknown_key_names_key_and_suggests_fix():
    with pytest.raises(ConfigError) as e:
        parse_config({"trainer": {"learning_rat": 1e-5}}, "x.yaml")
    msg = str(e.value)
    assert "x.yaml" in msg and "trainer.learning_rat" in msg and "learning_rate" in msg


def test_unknown_section_key():
    with pytest.raises(ConfigError, match=r"sampler\.replica"):
        parse_config({"sampler": {"replica": 2}})


def test_num_generations_must_divide_batch():
    with pytest.raises(ConfigError, match="num_generations=3 must divide"):
        parse_config({"trainer": {"num_generations": 3, "per_device_train_batch_size": 8}})


def test_unknown_loss_type_names_setting():
    with pytest.raises(ConfigError, match=r"trainer\.loss_type"):
        parse_config({"trainer": {"loss_type": "ppo"}})


def test_reward_weights_length_mismatch():
    with pytest.raises(ConfigError, match="one weight per reward"):
        parse_config({"trainer": {"reward_funcs": ["accuracy", "format"], "reward_weights": [1.0]}})


def test_colocate_mode_is_refused_with_fix():
    with pytest.raises(ConfigError, match="Remove the key"):
        parse_config({"vllm_mode": "colocate", "learning_rate": 1e-6})


def test_jsonl_source_needs_path():
    with pytest.raises(ConfigError, match="data.path is required"):
        parse_config({"data": {"source": "jsonl"}})


def test_overrides_and_bad_yaml(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump({"trainer": {"max_steps": 3}}))
    assert (
        load_config(p, {"trainer.max_steps": 7, "pipeline.max_staleness": 0}).trainer.max_steps == 7
    )
    p.write_text("trainer: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(p)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_configuration_reference_is_current():
    from trainer.config_docs import render

    committed = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text()
    assert committed == render(), (
        "docs/configuration.md is stale: run python -m trainer.config_docs > docs/configuration.md"
    )


def test_every_field_is_documented():
    from pydantic import BaseModel

    from trainer.config import RunConfig

    missing = []

    def walk(model, prefix):
        for key, f in model.model_fields.items():
            ann = f.annotation
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                walk(ann, f"{prefix}{key}.")
            elif not f.description:
                missing.append(prefix + key)

    walk(RunConfig, "")
    assert not missing, f"config fields without a description=: {missing}"


@pytest.mark.parametrize(
    "sections, names",
    [
        (
            {"trainer": {"max_completion_length": 100000}},
            ["trainer.max_completion_length=100000", "sampler.limits.max_tokens=8192"],
        ),
        (
            {"trainer": {"num_generations": 128, "per_device_train_batch_size": 128}},
            ["trainer.num_generations=128", "sampler.limits.max_n=64"],
        ),
        (
            {
                "trainer": {"max_prompt_length": 600},
                "sampler": {"limits": {"max_prompt_tokens": 500}},
            },
            ["trainer.max_prompt_length=600", "sampler.limits.max_prompt_tokens=500"],
        ),
        (
            {
                "trainer": {"max_prompt_length": 400, "max_completion_length": 200},
                "sampler": {"max_model_len": 512},
            },
            [
                "trainer.max_prompt_length=400",
                "trainer.max_completion_length=200",
                "sampler.max_model_len=512",
            ],
        ),
        (
            {
                "trainer": {"max_prompt_length": None, "max_completion_length": 512},
                "sampler": {"max_model_len": 512},
            },
            ["trainer.max_completion_length=512", "sampler.max_model_len=512"],
        ),
        (
            {"trainer": {"eval_steps": 5}, "data": {"max_eval_examples": 600}},
            ["data.max_eval_examples=600", "sampler.limits.max_prompts_per_request=512"],
        ),
    ],
)
def test_trainer_requests_must_fit_the_sampler_limits(sections, names):
    with pytest.raises(ConfigError) as err:
        parse_config(sections)
    msg = str(err.value)
    for name in names:
        assert name in msg, msg
    assert "lower" in msg or "raise" in msg  # says the fix


@pytest.mark.parametrize(
    "key, value, hint",
    [
        ("top_k", -5, "null or 0 disables top-k"),
        ("min_p", 3, "a fraction in [0, 1]"),
        ("repetition_penalty", 11, "1.0 disables it"),
        ("temperature", 101, "the sampler accepts at most 100"),
    ],
)
def test_sampling_settings_outside_the_samplers_bounds_fail_at_load(key, value, hint):
    with pytest.raises(ConfigError) as err:
        parse_config({"trainer": {key: value}})
    msg = str(err.value)
    assert f"trainer.{key}" in msg and hint in msg, msg


def test_sampling_settings_the_sampler_accepts_load():
    cfg = parse_config({"trainer": {"top_k": -1, "min_p": 0.05, "repetition_penalty": 1.1}})
    assert cfg.trainer.top_k == -1
    cfg = parse_config(
        {
            "trainer": {"max_prompt_length": 384, "max_completion_length": 128},
            "sampler": {"max_model_len": 512},
        }
    )
    assert cfg.prompt_token_budget(None) == 384


def test_config_errors_never_echo_a_key():
    """Config errors land in consoles and job logs: a key given with the wrong type, or inside a
    section whose whole value is echoed, is shown as <redacted>."""
    from trainer.config import ConfigError
    from trainer.config_loading import parse_config

    raw = {"sampler": {"api_key": 123456789, "admin_key": ["s3cret-admin-key"], "port": -1}}
    with pytest.raises(ConfigError) as e:
        parse_config(raw)
    msg = str(e.value)
    assert "sampler.api_key" in msg and "sampler.admin_key" in msg  # the field is named
    assert "123456789" not in msg and "s3cret-admin-key" not in msg, msg
    from trainer.config_loading import _shown

    # a section's whole value echoed (a model-level error): its keys are masked inside it
    assert _shown(("sampler",), {"api_key": "s3cret", "port": 1}) == {
        "api_key": "<redacted>",
        "port": 1,
    }


def test_the_resolved_config_file_holds_no_key():
    from trainer.config_loading import parse_config
    from trainer.preparation import redacted

    cfg = parse_config({"sampler": {"api_key": "s3cret-api", "admin_key": "s3cret-admin"}})
    data = redacted(cfg)
    assert data["sampler"]["api_key"] == "<redacted>" == data["sampler"]["admin_key"]
    assert "s3cret" not in repr(data)
