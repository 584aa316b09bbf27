"""Reading the run configuration: a YAML file (nested sections, or a flat recipe-style TRL file),
`--set dotted.key=value` overrides, and one clear error per problem (the key, the value with
secrets hidden, a did-you-mean, the fix).

Owns: `load_config`, `parse_config`, `parse_overrides`. Does not know: what the settings mean
(trainer.config, trainer.grpo_settings).
"""

from __future__ import annotations

import difflib
import logging
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from sampler.config import SECRET_FIELDS
from trainer.config import ConfigError, RunConfig
from trainer.grpo_settings import IGNORED_TRL_KEYS, MODEL_KEYS_IN_TRAINER, GRPOSettings

log = logging.getLogger("trainer.config")

SECTIONS = tuple(RunConfig.model_fields)
# Keys a flat recipe-style YAML may hold at top level (read as the trainer section).
FLAT_TRAINER_KEYS = frozenset(
    {*GRPOSettings.model_fields, *MODEL_KEYS_IN_TRAINER, *IGNORED_TRL_KEYS}
    | {"model_name_or_path", "vllm_importance_sampling_cap"}
)
_DOTTED_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


def _unknown_section(key: str, value: Any) -> str | None:
    """The problem with a top-level key that is no section, or None for a flat trainer key (a
    recipe-style file; a misspelt one then fails in the trainer section with its own hint)."""
    if key in SECTIONS or key in FLAT_TRAINER_KEYS:
        return None
    near_section = difflib.get_close_matches(key, SECTIONS, n=1)
    near_key = difflib.get_close_matches(key, FLAT_TRAINER_KEYS, n=1)
    if near_section and (isinstance(value, dict) or not near_key):
        return f"unknown section {key!r} (did you mean {near_section[0]!r}?)"
    if isinstance(value, dict) and not near_key:
        return f"unknown section {key!r}; the sections are: {', '.join(SECTIONS)}"
    return None


def _check_sections(raw: dict[str, Any], source: str) -> None:
    for key, value in raw.items():
        problem = _unknown_section(str(key), value)
        if problem:
            raise ConfigError(f"invalid configuration in {source}: {problem}")


def _split_recipe_style(raw: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """A flat recipe-style YAML (TRL keys at top level) becomes {trainer: ..., model: ...}."""
    sections = set(SECTIONS)
    if not raw or set(raw) <= sections:
        return raw, []
    flat = {k: v for k, v in raw.items() if k not in sections}
    nested = {k: v for k, v in raw.items() if k in sections}
    trainer = dict(nested.get("trainer") or {})
    trainer.update(flat)
    nested["trainer"] = trainer
    return nested, [
        f"{len(flat)} top-level keys read as the trainer section (reference-recipe/TRL style)"
    ]


def _move_model_and_ignored(data: dict[str, Any]) -> list[str]:
    notes = []
    trainer = data.get("trainer")
    if not isinstance(trainer, dict):
        return notes
    model = dict(data.get("model") or {})
    for key in MODEL_KEYS_IN_TRAINER:
        if key in trainer:
            model[key] = trainer.pop(key)
            notes.append(f"trainer.{key} moved to model.{key}")
    if "model_name_or_path" in trainer:
        model["name_or_path"] = trainer.pop("model_name_or_path")
    if model:
        data["model"] = model
    for key in list(trainer):
        if key in IGNORED_TRL_KEYS:
            trainer.pop(key)
            notes.append(f"trainer.{key} ignored: {IGNORED_TRL_KEYS[key]}")
    return notes


def _format_error(err: ValidationError, source: str, overridden: frozenset[str]) -> str:
    """One line for one problem; a list for several. `overridden`: dotted keys set by --set."""
    problems = [_problem(e, overridden) for e in err.errors()]
    if len(problems) == 1:
        return f"invalid configuration in {source}: {problems[0]}"
    return "\n  ".join([f"invalid configuration in {source}:", *problems])


def _problem(e: Any, overridden: frozenset[str]) -> str:
    path = ".".join(str(p) for p in e["loc"])
    where = f"{path} (--set)" if path in overridden else path
    if e["type"] == "extra_forbidden":
        return f"{where}: unknown key{_key_hint(e['loc'])}"
    msg = e["msg"].removeprefix("Value error, ")
    if isinstance(e.get("input"), dict):  # a whole section's check: the message names the keys
        return f"{where}: {msg}" if where else msg
    return f"{where or '(top level)'}: {msg} (got {_shown(e['loc'], e.get('input'))!r:.80})"


def _key_hint(loc: tuple[Any, ...]) -> str:
    """Did-you-mean for an unknown key; else where its section's keys are listed."""
    parent = _model_at(loc[:-1])
    known = list(parent.model_fields) if parent else []
    close = difflib.get_close_matches(str(loc[-1]), known, n=1)
    if close:
        return f" (did you mean {close[0]!r}?)"
    if len(known) <= 12:
        return f"; known keys: {', '.join(known)}"
    section = ".".join(str(p) for p in loc[:-1])
    return f"; the keys of {section} are listed in docs/configuration.md"


def _shown(loc: tuple[Any, ...], value: Any) -> Any:
    """What an error may echo of a value: never a key (the error lands in logs and consoles)."""
    if loc and str(loc[-1]) in SECRET_FIELDS:
        return "<redacted>"
    if isinstance(value, dict):
        return {k: (_shown((k,), v)) for k, v in value.items()}
    return value


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    model: type[BaseModel] = RunConfig
    for part in loc:
        field = model.model_fields.get(str(part))
        ann = getattr(field, "annotation", None)
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return None
        model = ann
    return model


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`--set dotted.key=value` items into {dotted.key: value}; values are read as YAML (10,
    2.0e-6, [A, B], null), as the driver reads them. Shared by the driver and deploy/submit.py."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not _DOTTED_KEY.match(key):
            raise ConfigError(
                f"--set {item!r}: expected dotted.key=value (e.g. --set trainer.max_steps=10)"
            )
        try:
            out[key] = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {item!r}: the value is not valid YAML ({e})") from None
    return out


def _apply_overrides(raw: dict[str, Any], overrides: dict[str, Any]) -> None:
    for dotted, value in overrides.items():
        *parents, leaf = dotted.split(".")
        problem = _unknown_section(parents[0], {}) if parents else None
        if problem:
            raise ConfigError(f"--set {dotted}: {problem}")
        cur = raw
        for i, part in enumerate(parents):
            if cur.get(part) is None:  # absent, or a YAML section left empty
                cur[part] = {}
            if not isinstance(cur[part], dict):
                where = ".".join(parents[: i + 1])
                raise ConfigError(f"--set {dotted}: {where} is {cur[part]!r:.40}, not a section")
            cur = cur[part]
        cur[leaf] = value


def parse_config(
    raw: dict[str, Any] | None, source: str = "<dict>", overridden: frozenset[str] = frozenset()
) -> RunConfig:
    """Validate a mapping (nested sections, or flat recipe-style TRL keys) into a RunConfig.
    `overridden` names the dotted keys that came from --set (errors on them say so)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of sections, got {type(raw).__name__}")
    _check_sections(raw, source)
    data, notes = _split_recipe_style(dict(raw))
    notes += _move_model_and_ignored(data)
    for n in notes:
        log.info("config %s: %s", source, n)
    try:
        return RunConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_error(e, source, overridden)) from None


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Load a run YAML. `overrides` are dotted keys (`trainer.max_steps`) applied on top, and
    validated exactly as the YAML is (see `parse_overrides`)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from None
    overridden: frozenset[str] = frozenset()
    if overrides and isinstance(raw, dict):
        _check_sections(raw, str(p))
        raw, _ = _split_recipe_style(raw)
        _apply_overrides(raw, overrides)
        flat = {f"trainer.{k}" for k in overrides if "." not in k}
        overridden = frozenset(overrides) | flat
    return parse_config(raw, str(p), overridden)
