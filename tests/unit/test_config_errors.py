"""Config errors a user meets first: misspelled sections and keys get a did-you-mean, `--set`
overrides are parsed and validated exactly like the YAML, and one problem is one line."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from trainer.config import ConfigError
from trainer.config_loading import load_config, parse_config, parse_overrides


def _yaml(tmp_path: Path, data: dict) -> Path:
    p = tmp_path / "run.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def test_a_misspelled_section_is_named_with_a_did_you_mean():
    with pytest.raises(ConfigError) as e:
        parse_config({"samplr": {"replicas": 2}, "trainer": {"max_steps": 3}}, "x.yaml")
    msg = str(e.value)
    assert "unknown section 'samplr' (did you mean 'sampler'?)" in msg
    assert "x.yaml" in msg and "\n" not in msg
    assert "learning_rate" not in msg  # not the list of every trainer key


def test_an_unknown_mapping_at_top_level_is_an_unknown_section_listing_the_sections():
    with pytest.raises(ConfigError) as e:
        parse_config({"trainer": {"max_steps": 3}, "wandb": {"project": "p"}})
    msg = str(e.value)
    assert "unknown section 'wandb'" in msg and "model, data, sampler" in msg
    assert "learning_rate" not in msg


def test_seed_style_flat_keys_still_read_as_the_trainer_section():
    cfg = parse_config({"learning_rate": 2e-6, "deepspeed": {"zero_optimization": {"stage": 2}}})
    assert cfg.trainer.learning_rate == 2e-6 and cfg.trainer.deepspeed is not None


def test_a_misspelled_key_in_a_section_has_a_did_you_mean_on_one_line():
    with pytest.raises(ConfigError) as e:
        parse_config({"sampler": {"replicaz": 2}}, "x.yaml")
    msg = str(e.value)
    assert msg == (
        "invalid configuration in x.yaml: sampler.replicaz: unknown key (did you mean 'replicas'?)"
    )


def test_an_unknown_key_with_no_close_match_points_to_the_reference_not_a_key_list():
    with pytest.raises(ConfigError) as e:
        parse_config({"trainer": {"zzqqxx": 1}})
    msg = str(e.value)
    assert "trainer.zzqqxx: unknown key" in msg and "docs/configuration.md" in msg
    assert "learning_rate" not in msg


def test_parse_overrides_reads_values_as_yaml_and_refuses_malformed_items():
    assert parse_overrides(["trainer.max_steps=10", "data.answer_choices=[A, B]"]) == {
        "trainer.max_steps": 10,
        "data.answer_choices": ["A", "B"],
    }
    for bad in ("trainer.max_steps", "=3", "trainer..x=1", "trainer.max steps=1"):
        with pytest.raises(ConfigError, match="expected dotted.key=value"):
            parse_overrides([bad])


def test_an_unknown_key_in_a_set_override_names_the_override_and_the_fix(tmp_path):
    p = _yaml(tmp_path, {"trainer": {"max_steps": 3}})
    with pytest.raises(ConfigError) as e:
        load_config(p, parse_overrides(["trainer.learnin_rate=1"]))
    msg = str(e.value)
    assert "\n" not in msg
    assert "trainer.learnin_rate (--set): unknown key (did you mean 'learning_rate'?)" in msg


def test_a_misspelled_section_in_a_set_override_is_an_unknown_section(tmp_path):
    p = _yaml(tmp_path, {"trainer": {"max_steps": 3}})
    with pytest.raises(ConfigError) as e:
        load_config(p, parse_overrides(["samplr.replicas=2"]))
    msg = str(e.value)
    assert "--set samplr.replicas: unknown section 'samplr' (did you mean 'sampler'?)" in msg
    assert "\n" not in msg


def test_a_set_override_below_a_plain_value_is_refused(tmp_path):
    p = _yaml(tmp_path, {"trainer": {"max_steps": 3}})
    with pytest.raises(ConfigError, match=r"--set trainer\.max_steps\.x: trainer\.max_steps is 3"):
        load_config(p, parse_overrides(["trainer.max_steps.x=1"]))


def test_set_overrides_get_the_cross_field_checks(tmp_path):
    p = _yaml(tmp_path, {"trainer": {"per_device_train_batch_size": 8, "num_generations": 8}})
    with pytest.raises(ConfigError, match="num_generations=3 must divide"):
        load_config(p, parse_overrides(["trainer.num_generations=3"]))
