"""The sampler's auth scopes and the header-first key check, on a real HTTP server (uvicorn on
127.0.0.1) in front of the real app (`sampler.api.build_app`) with a stub service: these tests
are about the HTTP layer, which never reaches the engine for a refused request.
tests/integration/test_sampler_server.py repeats the body check against a vLLM replica."""

from __future__ import annotations

import asyncio
import socket
import threading

import httpx
import pytest

from sampler.api import build_app
from sampler.metrics import SamplerMetrics
from sampler.protocol import Group, GroupedCompletion, GroupedResponse, VersionSpan

API, TRAINER, ADMIN = "public-key", "trainer-key", "admin-key"


class _StubService:
    """What the routes need of SamplerService for these tests; counts what reached it."""

    def __init__(self) -> None:
        self.metrics = SamplerMetrics()
        self.version = 7
        self.generated = 0
        self.broken: str | None = None
        self.model_name, self.updating, self.instance_id, self.workers = "m", False, "i", 1

    async def check_engine(self) -> None:
        return None

    async def generate_grouped(self, req):  # noqa: ANN001
        self.generated += 1
        comp = GroupedCompletion(
            token_ids=[1],
            logprobs=[-0.5],
            finish_reason="length",
            text="x",
            versions=[VersionSpan(version=7, start=0)],
        )
        group = Group(prompt_token_ids=req.prompts[0], completions=[comp], policy_version=7)
        return GroupedResponse(groups=[group], policy_version=7)


@pytest.fixture(scope="module")
def server():
    import uvicorn

    svc = _StubService()
    app = build_app(svc, api_key=API, trainer_key=TRAINER, admin_key=ADMIN, max_body_bytes=16 << 20)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    th = threading.Thread(target=lambda: asyncio.run(srv.serve(sockets=[sock])), daemon=True)
    th.start()
    url = f"http://127.0.0.1:{port}"
    while not srv.started:  # uvicorn sets it once it accepts connections
        th.join(0.05)
    yield url, svc
    srv.should_exit = True
    th.join(10)


def _bearer(key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key else {}


def _body_bytes(svc: _StubService, route: str) -> float:
    return svc.metrics.body_bytes.labels(route)._value.get()


def test_a_keyless_15mb_body_is_refused_without_being_read(server):
    url, svc = server
    before = _body_bytes(svc, "/generate")
    big = b'{"prompts": [[' + b"5, " * 5_000_000 + b'5]], "max_tokens": 1}'
    assert len(big) > 15_000_000
    r = httpx.post(f"{url}/generate", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 401 and "trainer key" in r.json()["error"]["message"]
    assert _body_bytes(svc, "/generate") == before  # not one byte of it was read
    assert svc.generated == 0
    # the same body with the key is read (and refused for its size only if over the limit)
    ok = httpx.post(
        f"{url}/generate", json={"prompts": [[5, 6]], "max_tokens": 1}, headers=_bearer(TRAINER)
    )
    assert ok.status_code == 200 and svc.generated == 1
    assert _body_bytes(svc, "/generate") > before


@pytest.mark.parametrize(
    ("method", "path", "key", "status"),
    [
        ("post", "/generate", API, 401),  # the public key cannot drive the trainer's route
        ("post", "/logprobs", API, 401),
        ("post", "/admin/weights/path", TRAINER, 401),
        ("post", "/admin/weights/path", API, 401),
        ("get", "/metrics", TRAINER, 401),  # nor the trainer's key the public ones
        ("post", "/v1/completions", None, 401),
        ("get", "/docs", None, 401),  # no public API docs on a keyed server
        ("get", "/openapi.json", None, 401),
        ("get", "/openapi.json", API, 200),
        ("get", "/no-such-route", None, 401),
    ],
)
def test_each_scope_takes_its_own_key_only(server, method, path, key, status):
    url, svc = server
    r = getattr(httpx, method)(
        f"{url}{path}", headers=_bearer(key), **({"json": {}} if method == "post" else {})
    )
    assert r.status_code == status, r.text
    assert svc.generated <= 1


def test_health_is_public_and_says_nothing_internal(server):
    url, svc = server
    svc.broken = "weight update to version 3 failed (RuntimeError: /secret/path/shard-7 corrupt)"
    try:
        r = httpx.get(f"{url}/health")
    finally:
        svc.broken = None
    assert r.status_code in (200, 503)
    assert "/secret/path" not in r.text
