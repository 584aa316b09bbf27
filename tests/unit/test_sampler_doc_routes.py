"""The route table in docs/sampler.md is the app's: every route, its auth scope and the top-level
fields of its JSON response, read from `build_app`'s FastAPI app (built with a `start` that is
never awaited, so no engine is needed)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fastapi.routing import APIRoute
from pydantic import BaseModel

from sampler.api import ROUTE_SCOPES, build_app

DOC = Path(__file__).resolve().parents[2] / "docs" / "sampler.md"
# How the auth column names each scope of sampler.api.ROUTE_SCOPES (its first words).
SCOPES = {"none": "public", "API key": "api", "trainer key": "trainer", "admin key": "admin"}


def _doc_rows() -> dict[tuple[str, str], tuple[str, str]]:
    """{(method, path): (auth cell, what cell)} of the table under '## Routes'."""
    section = DOC.read_text().split("## Routes", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        m = re.match(r"\| `(GET|POST|PUT|DELETE) (/\S*)` \| ([^|]+) \| (.+) \|$", line)
        if m:
            rows[(m[1], m[2])] = (m[3].strip(), m[4].strip())
    return rows


def _app_routes() -> dict[tuple[str, str], APIRoute]:
    async def never_started():  # noqa: ANN202
        raise AssertionError("the route table needs no engine")

    app = build_app(start=never_started)
    return {
        (method, r.path): r for r in app.routes if isinstance(r, APIRoute) for method in r.methods
    }


def _scope(auth: str) -> str:
    return next(scope for words, scope in SCOPES.items() if auth.startswith(words))


def _top_level_keys(shape: str) -> set[str]:
    """Keys of a documented `{a, b: [...], c?}` shape, nested brackets skipped."""
    keys, depth, token = [], 0, ""
    for ch in shape.strip()[1:-1] + ",":
        depth += ch in "[{"
        depth -= ch in "]}"
        if ch == "," and depth == 0:
            keys.append(token.split(":")[0].strip().rstrip("?"))
            token = ""
        else:
            token += ch
    return {k for k in keys if k}


def _documented_response(what: str) -> str | None:
    """The response shape a row documents: after '→', or a '200' status."""
    m = re.search(r"(?:→|^200) `(\{.*?\})`(?:[:;, ]|$)", what)
    return m[1] if m else None


def test_every_route_is_documented_and_every_documented_route_exists() -> None:
    assert sorted(_doc_rows()) == sorted(_app_routes())


def test_documented_auth_is_the_routes_scope() -> None:
    documented = {path: _scope(auth) for (_, path), (auth, _) in _doc_rows().items()}
    assert documented == ROUTE_SCOPES


def _modelled() -> list[tuple[str, str]]:
    """Routes whose response is one of our pydantic models (the OpenAI ones are OpenAI's)."""
    models = {k: r.response_model for k, r in _app_routes().items()}
    return sorted(k for k, m in models.items() if isinstance(m, type) and issubclass(m, BaseModel))


@pytest.mark.parametrize("key", _modelled(), ids=lambda k: f"{k[0]} {k[1]}")
def test_documented_response_fields_are_the_models(key: tuple[str, str]) -> None:
    """Every route with a response model documents its shape, with the model's fields."""
    shape = _documented_response(_doc_rows()[key][1])
    assert shape is not None, f"docs/sampler.md documents no response shape for {key}"
    assert _top_level_keys(shape) == set(_app_routes()[key].response_model.model_fields)


def test_the_shape_reader() -> None:
    assert _top_level_keys("{groups: [{a, b: [c]}], policy_version, x?}") == {
        "groups",
        "policy_version",
        "x",
    }
    assert _documented_response("200 `{status, model}` only when") == "{status, model}"
    assert _documented_response("`{token_ids}` → `{logprobs, dtype}`: raw") == "{logprobs, dtype}"
