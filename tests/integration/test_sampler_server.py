"""A real `python -m sampler` replica (vLLM on CPU, tiny float32 model A): OpenAI client,
grouped route, weight updates over both transports, labels during updates, security, fuzzing."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time

import httpx
import pytest

pytestmark = pytest.mark.slow

API_KEY = "test-api-key"
ADMIN_KEY = "test-admin-key"
PROMPTS = [[5, 6, 7], [8, 9, 10, 11], [12, 13], [20, 21, 22, 23, 24]]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from data.tiny_model import build_tiny_model

    root = tmp_path_factory.mktemp("sampler_models")
    return build_tiny_model(root / "A", seed=0), build_tiny_model(root / "B", seed=1)


def start_test_sampler(model, tmp_path_factory, name: str, sampler_yaml: str, **kw):
    """A replica of `model` with the test keys and a run YAML whose `sampler:` section is
    `sampler_yaml` (indented lines; this also exercises --config)."""
    from sampler.launch import start_sampler

    logs = tmp_path_factory.mktemp(f"logs-{name}")
    cfg = logs / "run.yaml"
    cfg.write_text("sampler:\n  dtype: float32\n" + sampler_yaml)
    return start_sampler(
        model,
        log_dir=logs,
        api_key=API_KEY,
        admin_key=ADMIN_KEY,
        extra_args=["--config", str(cfg)],
        **kw,
    )


def _start(models, tmp_path_factory, layout: str):
    limits = "  limits:\n    max_body_bytes: 1048576\n    max_public_inflight: 2\n"
    return start_test_sampler(
        models[0],
        tmp_path_factory,
        layout,
        # its update tests are drain's (inflight's: test_inflight_updates.py)
        f"{limits}  public_drain_timeout_s: 0.2\n  update_mode: drain\n"
        f"  cpu_weight_layout: {layout}\n",
    )


@pytest.fixture(scope="module")
def server(models, tmp_path_factory):
    """The plain CPU weight layout: updates land directly in the parameters."""
    sp = _start(models, tmp_path_factory, "plain")
    yield sp
    sp.stop()


@pytest.fixture(scope="module")
def packed_server(models, tmp_path_factory):
    """vLLM's prepacked CPU weights: updates go through `reload_weights` + the tied-head re-pack."""
    sp = _start(models, tmp_path_factory, "packed")
    yield sp
    sp.stop()


@pytest.fixture(scope="module")
def hf_reference(models):
    """Greedy continuation + per-token logprobs from transformers, float32 (the ground truth)."""
    import torch
    from transformers import AutoModelForCausalLM

    cache = {}

    def ref(which: int, prompt: list[int], steps: int):
        key = (which, tuple(prompt), steps)
        if key not in cache:
            m = cache.setdefault(("m", which), None) or AutoModelForCausalLM.from_pretrained(
                models[which], dtype=torch.float32
            )
            cache[("m", which)] = m
            ids = list(prompt)
            lps = []
            with torch.no_grad():
                for _ in range(steps):
                    logits = m(torch.tensor([ids])).logits[0, -1].double()
                    lp = torch.log_softmax(logits, -1)
                    tok = int(lp.argmax())
                    ids.append(tok)
                    lps.append(float(lp[tok]))
            cache[key] = (ids[len(prompt) :], lps)
        return cache[key]

    return ref


def _client(server, **kw):
    from sampler.client import SamplerClient

    return SamplerClient([server.url], api_key=API_KEY, admin_key=ADMIN_KEY, **kw)


def _hf_state(path):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).state_dict()


def _assert_matches(results, ref, which, steps):
    for g in results:
        toks, lps = ref(which, g.prompt_token_ids, steps)
        c = g.completions[0]
        assert c.token_ids == toks, (g.prompt_token_ids, c.token_ids, toks)
        assert c.logprobs == pytest.approx(lps, abs=1e-4)


async def _push_and_check(client, pusher, models, which, version, ref, steps=8) -> dict:
    """Push model `which` as `version`; the replica then serves it exactly (greedy, logprobs)."""

    stats = await pusher.push(iter(_hf_state(models[which]).items()), version=version)
    await _serves(client, version, which, ref, steps)
    return stats


async def _serves(client, version, which, ref, steps=8) -> None:
    """The replica serves model `which` as `version`: greedy tokens and logprobs as transformers'."""
    from sampler.client import SamplingSpec

    res = await client.generate(PROMPTS, 1, SamplingSpec(max_tokens=steps, temperature=0))
    assert {g.policy_version for g in res} == {version}
    _assert_matches(res, ref, which, steps)


# ---------------------------------------------------------------------------- OpenAI client
def test_openai_client_completions_chat_and_streams(server):
    import openai

    oa = openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY)
    model = oa.models.list().data[0].id
    raw = oa.completions.with_raw_response.create(
        model=model, prompt="hello", max_tokens=6, n=2, temperature=1.0, logprobs=1, seed=1
    )
    assert raw.headers["X-Policy-Version"].isdigit()
    r = raw.parse()
    assert len(r.choices) == 2 and r.usage.completion_tokens == sum(
        len(c.logprobs.tokens) for c in r.choices
    )
    assert r.model_extra["policy_version"] == int(raw.headers["X-Policy-Version"])
    assert all(lp <= 0 for c in r.choices for lp in c.logprobs.token_logprobs)

    chat = oa.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=5,
        temperature=0,
        logprobs=True,
        top_logprobs=2,
    )
    assert chat.choices[0].message.role == "assistant"
    assert len(chat.choices[0].logprobs.content) == chat.usage.completion_tokens == 5

    # Streams: the concatenated deltas equal the non-streamed greedy text.
    pieces = [
        ch.choices[0].delta.content or ""
        for ch in oa.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=5,
            temperature=0,
            stream=True,
        )
        if ch.choices
    ]
    assert "".join(pieces) == chat.choices[0].message.content
    full = oa.completions.create(model=model, prompt="abc", max_tokens=7, temperature=0)
    streamed = oa.completions.create(
        model=model,
        prompt="abc",
        max_tokens=7,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(streamed)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == full.choices[0].text
    assert chunks[-1].usage.completion_tokens == 7


# ---------------------------------------------------------------------------- security / validation
@pytest.mark.parametrize(
    ("path", "body", "headers", "status", "needle"),
    [
        ("/generate", {"prompts": [[5]], "max_tokens": 2}, {}, 401, "API key"),
        (
            "/generate",
            {"prompts": [[5]], "max_tokens": 2},
            {"Authorization": "Bearer nope"},
            401,
            "API key",
        ),
        (
            "/admin/weights/path",
            {"path": "/tmp"},
            {"Authorization": f"Bearer {API_KEY}"},
            401,
            "admin key",
        ),
        ("/generate", "{not json", None, 422, "JSON"),
        ("/generate", {"prompts": [[5]], "max_tokens": 2, "n": 0}, None, 422, "n"),
        (
            "/generate",
            {"prompts": [[5]], "max_tokens": 2, "temperature": -1},
            None,
            422,
            "temperature",
        ),
        ("/generate", {"prompts": [["x"]], "max_tokens": 2}, None, 422, "prompts"),
        (
            "/generate",
            {"prompts": [[5]], "max_tokens": 2, "n": 65, "temperature": 1},
            None,
            400,
            "max_n",
        ),
        ("/generate", {"prompts": [[5] * 4090], "max_tokens": 10}, None, 400, "context length"),
        ("/generate", {"prompts": [[5] * 5000], "max_tokens": 1}, None, 400, "5000 tokens"),
        ("/generate", {"prompts": [[1 << 40]], "max_tokens": 2}, None, 400, "vocabulary"),
        ("/generate", {"prompts": [[5]], "max_tokens": 9000}, None, 400, "max_tokens"),
        ("/generate", {"prompts": [[5]], "max_tokens": 2, "bogus": 1}, None, 422, "bogus"),
        ("/v1/completions", {"prompt": "x", "model": "other"}, None, 404, "not served"),
        ("/v1/chat/completions", {"messages": []}, None, 422, "messages"),
        (
            "/admin/weights/path",
            {"path": "/nonexistent/dir"},
            {"Authorization": f"Bearer {ADMIN_KEY}"},
            400,
            "path",
        ),
    ],
)
def test_bad_requests_get_clear_4xx(server, path, body, headers, status, needle):
    h = {"Authorization": f"Bearer {API_KEY}"} if headers is None else headers
    kw = (
        {"content": body, "headers": {**h, "content-type": "application/json"}}
        if isinstance(body, str)
        else {"json": body, "headers": h}
    )
    r = httpx.post(server.url + path, timeout=30, **kw)
    assert r.status_code == status, r.text
    assert needle.lower() in r.json()["error"]["message"].lower()
    assert httpx.get(server.url + "/health").status_code == 200


def test_body_size_limit(server):
    big = json.dumps({"prompts": [[5] * 400_000], "max_tokens": 1})
    r = httpx.post(
        server.url + "/generate",
        content=big,
        timeout=30,
        headers={"Authorization": f"Bearer {API_KEY}", "content-type": "application/json"},
    )
    assert r.status_code == 413 and "max_body_bytes" in r.text


def test_refuses_public_bind_without_api_key(models):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "sampler",
            "--model",
            str(models[0]),
            "--host",
            "0.0.0.0",
            "--port",
            "9",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode != 0 and "--api-key" in r.stderr


async def _probe_catches_a_corrupt_tensor(client, url, pusher, models, version) -> None:
    """The trainer's weight probe passes on the pushed weights and names this replica, the version
    and the gap once one (TP-sharded) tensor arrives negated; the replica is left on model 1."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainer.weight_probe import (
        TOLERANCE,
        WeightProbeError,
        check_replicas,
        probe_token_ids,
        reference_logprobs,
    )

    ids = probe_token_ids(AutoTokenizer.from_pretrained(models[1]))
    ref = reference_logprobs(
        AutoModelForCausalLM.from_pretrained(models[1], dtype=torch.float32), ids
    )
    state = _hf_state(models[1])
    await pusher.push(iter(state.items()), version=version)
    m = await check_replicas(client, [url], ids, ref, version, "float32")
    assert m["weight_sync/probe_gap"] < TOLERANCE["float32"] / 100, m

    bad = dict(state)
    bad["model.layers.0.mlp.down_proj.weight"] = -state["model.layers.0.mlp.down_proj.weight"]
    await pusher.push(iter(bad.items()), version=version + 1)
    with pytest.raises(WeightProbeError) as e:
        await check_replicas(client, [url], ids, ref, version + 1, "float32")
    assert url in str(e.value) and f"policy version {version + 1}:" in str(e.value)
    gap = float(str(e.value).split("mean logprob gap ")[1].split()[0])
    assert gap > TOLERANCE["float32"], str(e.value)
    await pusher.push(iter(state.items()), version=version + 2)
    await check_replicas(client, [url], ids, ref, version + 2, "float32")


# ---------------------------------------------------------------------------- weight updates
@pytest.mark.parametrize("layout", ["plain", "packed"])
def test_weight_updates_both_transports_match_transformers(
    layout, request, models, hf_reference, tmp_path
):
    from sampler.client import SamplingSpec
    from sampler.weights.sender import make_weight_pusher

    server = request.getfixturevalue("server" if layout == "plain" else "packed_server")

    async def run():
        c = _client(server)
        spec = SamplingSpec(max_tokens=8, temperature=0)
        v0 = (await c.versions())[server.url]
        _assert_matches(await c.generate(PROMPTS, 1, spec), hf_reference, 0, 8)

        gloo = make_weight_pusher("gloo", c, bucket_bytes=256 << 10, timeout_s=60)
        stats = await _push_and_check(c, gloo, models, 1, v0 + 1, hf_reference)
        assert stats["replicas_ok"] == 1 and stats["buckets"] > 1

        fs = make_weight_pusher(
            "filesystem", c, bucket_bytes=256 << 10, timeout_s=60, shared_dir=str(tmp_path)
        )
        await _push_and_check(c, fs, models, 0, v0 + 2, hf_reference)

        metrics = httpx.get(
            server.url + "/metrics", headers={"Authorization": f"Bearer {API_KEY}"}
        ).text
        assert f"sampler_policy_version {float(v0 + 2)}" in metrics
        assert 'sampler_weight_updates_total{outcome="ok",transport="gloo"}' in metrics
        await c.aclose()

    asyncio.run(run())


@pytest.mark.parametrize("layout", ["plain", "packed"])
def test_weight_probe_catches_one_corrupt_tensor(layout, request, models):
    from sampler.weights.sender import make_weight_pusher

    server = request.getfixturevalue("server" if layout == "plain" else "packed_server")

    async def run():
        c = _client(server)
        v0 = (await c.versions())[server.url]
        gloo = make_weight_pusher("gloo", c, bucket_bytes=256 << 10, timeout_s=60)
        await _probe_catches_a_corrupt_tensor(c, server.url, gloo, models, v0 + 1)
        await gloo.aclose()
        await c.aclose()

    asyncio.run(run())


def test_a_new_trainer_session_takes_over_a_replica_that_serves_a_newer_version(
    server, models, hf_reference
):
    """A trainer resumed from a checkpoint (version 3) meets an external replica that served
    version 9 of the session that died: a plain push gets 409, the session's first push with
    `reset` takes over, and the replica then serves the resumed weights as version 3."""
    from sampler.weights.sender import WeightPushError, make_weight_pusher

    state = _hf_state(models[1])

    async def run():
        c = _client(server)
        v = (await c.versions())[server.url]
        pusher = make_weight_pusher("gloo", c, bucket_bytes=1 << 20, timeout_s=60)
        await pusher.push(iter(state.items()), version=v + 9)
        resumed = v + 3
        with pytest.raises(WeightPushError, match="409"):
            await pusher.push(iter(state.items()), version=resumed)
        await pusher.push(iter(state.items()), version=resumed, reset=True)
        await _serves(c, resumed, 1, hf_reference)
        await pusher.aclose()
        await c.aclose()

    asyncio.run(run())


def test_partial_update_is_refused_and_a_full_push_recovers(server, models, hf_reference):
    """A state dict missing a tensor would leave a mix of old and new weights: the replica must
    say so (naming the gap), refuse to serve, and recover on the next full push."""
    from sampler.client import SamplingSpec
    from sampler.weights.sender import WeightPushError, make_weight_pusher

    full = _hf_state(models[1])
    partial = {k: v for k, v in full.items() if k != "model.layers.0.mlp.down_proj.weight"}

    async def run():
        c = _client(server)
        v = (await c.versions())[server.url]
        pusher = make_weight_pusher("gloo", c, bucket_bytes=1 << 20, timeout_s=60)
        with pytest.raises(WeightPushError, match="old values"):
            await pusher.push(iter(partial.items()), version=v + 1)
        health = httpx.get(server.url + "/health")
        assert health.status_code == 503 and "push weights again" in health.text
        await pusher.push(iter(full.items()), version=v + 2)
        res = await c.generate(PROMPTS, 1, SamplingSpec(max_tokens=8, temperature=0))
        assert {g.policy_version for g in res} == {v + 2}
        _assert_matches(res, hf_reference, 1, 8)
        await c.aclose()

    asyncio.run(run())


def test_generation_during_updates_is_labelled_with_the_producing_version(
    server, models, hf_reference
):
    """Greedy requests race with pushes A->B->A...; each result must equal transformers' output
    of the model that its label names (A and B give different greedy tokens)."""
    from sampler.client import SamplingSpec
    from sampler.weights.sender import make_weight_pusher

    states = [_hf_state(models[0]), _hf_state(models[1])]

    async def run():
        c = _client(server)
        spec = SamplingSpec(max_tokens=24, temperature=0)
        v = (await c.versions())[server.url]
        which = {v: None}  # version -> model index; the served model is checked by the first batch
        pusher = make_weight_pusher("gloo", c, bucket_bytes=1 << 20, timeout_s=60)
        await pusher.push(iter(states[0].items()), version=v + 1)
        which = {v + 1: 0}
        results = []

        async def load():
            for _ in range(6):
                results.extend(await c.generate(PROMPTS, 1, spec))

        async def updates():
            for k in range(2, 6):
                await pusher.push(iter(states[k % 2].items()), version=v + k)
                which[v + k] = k % 2
                await asyncio.sleep(0)

        await asyncio.gather(load(), updates())
        seen = {g.policy_version for g in results}
        assert len(results) == 6 * len(PROMPTS)
        for g in results:
            _assert_matches([g], hf_reference, which[g.policy_version], 24)
        await c.aclose()
        return seen

    seen = asyncio.run(run())
    assert len(seen) >= 2, f"updates did not interleave with generation: {seen}"


def test_public_requests_are_bounded_and_never_hold_a_weight_update(server, models):
    """Two long public completions fill the public bound (max_public_inflight: 2): a third gets
    429 at once. A weight push meanwhile does not wait for them: they are aborted after the
    short public grace and re-run on the new weights, so both answers carry the new version.
    The trainer's route is not bounded by them."""
    from sampler.client import SamplingSpec
    from sampler.weights.sender import make_weight_pusher

    auth = {"Authorization": f"Bearer {API_KEY}"}
    long = {"prompt": [5, 6, 7], "max_tokens": 1500, "ignore_eos": True, "temperature": 0}

    def queue_depth() -> float:
        text = httpx.get(server.url + "/metrics", headers=auth).text
        [line] = [x for x in text.splitlines() if x.startswith("sampler_queue_depth ")]
        return float(line.split()[1])

    async def run():
        c = _client(server)
        v = (await c.versions())[server.url]
        pusher = make_weight_pusher("gloo", c, bucket_bytes=1 << 20, timeout_s=60)
        async with httpx.AsyncClient(timeout=120) as h:
            calls = [
                asyncio.create_task(h.post(server.url + "/v1/completions", json=long, headers=auth))
                for _ in range(2)
            ]
            while queue_depth() < 2:  # both admitted and generating (bounded by the 120 s calls)
                await asyncio.sleep(0.05)
            third = await h.post(server.url + "/v1/completions", json=long, headers=auth)
            assert third.status_code == 429, third.text
            assert "max_public_inflight=2" in third.json()["error"]["message"]
            # the trainer's route still works while the public bound is full
            res = await c.generate(PROMPTS[:1], 1, SamplingSpec(max_tokens=4, temperature=0))
            assert res[0].policy_version == v
            await pusher.push(iter(_hf_state(models[1]).items()), version=v + 1)
            answers = await asyncio.gather(*calls)
        for r in answers:
            assert r.status_code == 200, r.text
            assert r.json()["policy_version"] == v + 1  # re-run on the new weights, labelled
            assert len(r.json()["choices"][0]["text"]) > 0
        await pusher.aclose()
        await c.aclose()

    asyncio.run(run())


def test_a_client_that_leaves_stops_its_request(server):
    """A non-streamed request whose client disconnects is aborted in the engine instead of
    generating 3000 tokens nobody reads (counted in sampler_client_disconnects)."""
    auth = {"Authorization": f"Bearer {API_KEY}"}
    long = {"prompt": [5, 6, 7], "max_tokens": 3000, "ignore_eos": True, "temperature": 0}

    def metric(name: str) -> float:
        text = httpx.get(server.url + "/metrics", headers=auth).text
        [line] = [x for x in text.splitlines() if x.startswith(name + " ")]
        return float(line.split()[1])

    def wait_until(cond, what: str) -> None:
        deadline = time.monotonic() + 120
        while not cond():
            assert time.monotonic() < deadline, what
            time.sleep(0.05)  # polling the server's metrics; bounded by the deadline

    tokens = metric("sampler_generated_tokens_total")
    left = metric("sampler_client_disconnects_total")

    async def leave() -> None:
        async with httpx.AsyncClient(timeout=120) as h:
            call = asyncio.create_task(
                h.post(server.url + "/v1/completions", json=long, headers=auth)
            )
            while metric("sampler_queue_depth") < 1:  # generating now
                await asyncio.sleep(0.05)
            call.cancel()  # the client goes away: httpx closes the connection
            with pytest.raises(asyncio.CancelledError):
                await call

    asyncio.run(leave())
    wait_until(lambda: metric("sampler_client_disconnects_total") > left, "no disconnect seen")
    wait_until(lambda: metric("sampler_queue_depth") == 0, "the engine kept the request")
    assert metric("sampler_generated_tokens_total") == tokens  # it never ran to the end


# ---------------------------------------------------------------------------- fuzzing
def test_schemathesis_finds_no_server_errors(server, tmp_path):
    started = time.monotonic()
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "schemathesis.cli",
            "run",
            f"{server.url}/openapi.json",
            "--checks",
            "not_a_server_error",
            "--max-examples",
            "12",
            "--max-time",
            "25",
            "--request-timeout",
            "20",
            "-H",
            f"Authorization: Bearer {API_KEY}",
            "--generation-deterministic",
            "--exclude-path-regex",
            "^/admin",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert time.monotonic() - started < 120
    assert httpx.get(server.url + "/health").status_code == 200
