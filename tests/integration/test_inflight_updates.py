"""In-flight weight updates with real vLLM (`sampler.update_mode: inflight`).

Long greedy requests straddle three pushes (A -> B -> A -> B, two different random tiny models).
The sampler must report, per completion, which weights produced which tokens, and those reports
must be what it really did: transformers replays each completion step by step with the reported
weights per token over one KV cache (the KV of a token is computed by the step that consumes it,
so a frozen request keeps the old weights' KV for what it had already computed), and must give
the same greedy tokens and logprobs. A mislabelled boundary, a dropped frozen request or a
recomputed cache all break that replay. Also: no request is lost or re-run, a stream reports the
version it finished on, and a new request after an update does not reuse the prefix KV that a
frozen request still holds from the old weights. On TP 1 and TP 2 (two vLLM workers receive).
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import time

import httpx
import pytest
from test_sampler_server import (  # noqa: F401  (fixtures)
    ADMIN_KEY,
    API_KEY,
    _hf_state,
    hf_reference,
    models,
    start_test_sampler,
)

from sampler.launch import child_env
from sampler.step_gate import STEP_GATE_ENV, StepGateControl

pytestmark = pytest.mark.slow

LONG = 600  # tokens per long request: more than the pushes' steps
PUSHES = 3  # A -> B -> A -> B
STEPS_BETWEEN = 150  # engine steps after each push: boundaries mid-request, across KV blocks
# Longer than one KV block (vLLM CPU: up to 256 tokens), so prefix caching can share it.
SHARED = random.Random(7).choices(range(3, 500), k=300)
OTHER = random.Random(8).choices(range(3, 500), k=40)
WATCH = random.Random(9).choices(range(3, 500), k=30)


@pytest.fixture(scope="module", params=[1, 2], ids=["tp1", "tp2"])
def inflight_server(request, models, tmp_path_factory):  # noqa: F811
    """A replica in inflight mode; also with tensor parallelism 2 (the pause and the relabel are
    the engine's, the load runs in both workers while it is paused)."""
    tp = request.param
    gate = tmp_path_factory.mktemp(f"gate-tp{tp}")
    sp = start_test_sampler(
        models[0],
        tmp_path_factory,
        f"inflight-tp{tp}",
        f"  update_mode: inflight\n  cpu_weight_layout: plain\n  tensor_parallel_size: {tp}\n",
        timeout_s=600,
        env=child_env({STEP_GATE_ENV: str(gate)}),
    )
    yield sp, StepGateControl(gate)
    sp.stop()


def replay(weights_by_version: dict, prompt: list[int], tokens: list[int], spans: list[dict]):
    """Greedy tokens and logprobs transformers gives when token t is produced by the weights
    its span names, over one cache: the step producing token t consumes the prompt (t = 0) or
    token t-1 and computes that input's KV with the same weights."""
    import torch
    from transformers import DynamicCache

    starts = [s["start"] for s in spans]
    cache = DynamicCache()
    greedy, lps = [], []
    with torch.no_grad():
        for t, tok in enumerate(tokens):
            span = max(i for i, s in enumerate(starts) if s <= t)
            model = weights_by_version[spans[span]["version"]]
            step_input = prompt if t == 0 else [tokens[t - 1]]
            out = model(torch.tensor([step_input]), past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            lp = torch.log_softmax(out.logits[0, -1].double(), -1)
            greedy.append(int(lp.argmax()))
            lps.append(float(lp[tok]))
    return greedy, lps


async def _stream_chunks(http: httpx.AsyncClient, url: str, prompt: list[int]):
    """Yields the parsed chunks of a long greedy completion stream."""
    body = {"prompt": prompt, "max_tokens": LONG, "temperature": 0, "ignore_eos": True}
    async with http.stream("POST", f"{url}/v1/completions", json={**body, "stream": True}) as r:
        assert r.status_code == 200, await r.aread()
        async for line in r.aiter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                yield json.loads(line[6:])


async def _until_in_engine(http: httpx.AsyncClient, url: str, n: int) -> None:
    """Polls the replica's queue-depth gauge until its engine holds `n` unfinished requests."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        text = (await http.get(f"{url}/metrics")).text
        if float(re.search(r"^sampler_queue_depth (\S+)$", text, re.M).group(1)) >= n:
            return
        await asyncio.sleep(0.02)  # polling a condition, with a deadline
    raise AssertionError(f"the engine never held {n} requests")


def test_requests_straddling_updates_report_the_weights_that_made_each_token(
    inflight_server,
    models,  # noqa: F811
    hf_reference,  # noqa: F811
):
    import torch
    from transformers import AutoModelForCausalLM

    from sampler.client import SamplerClient
    from sampler.weights.sender import make_weight_pusher

    server, gate = inflight_server
    url = server.url
    states = [_hf_state(models[0]), _hf_state(models[1])]
    headers = {"Authorization": f"Bearer {API_KEY}"}

    async def run():
        # Pushes are placed between known engine steps (sampler/step_gate.py), not by timing:
        # the engine takes a step only when the test lets it. The long requests have a token
        # before the first push; a push freezes them; after each push the engine takes a step
        # (the running long requests each get a token) before the next push.
        c = SamplerClient([url], api_key=API_KEY, admin_key=ADMIN_KEY)
        pusher = make_weight_pusher("gloo", c, bucket_bytes=1 << 20, timeout_s=60)
        v = (await c.versions())[url] + 1
        await pusher.push(iter(states[0].items()), version=v)  # A, under a known label
        which = {v: 0}
        gate.close()
        try:
            async with httpx.AsyncClient(timeout=600, headers=headers) as http:
                body = {"prompts": [SHARED, OTHER], "n": 1, "max_tokens": LONG, "temperature": 0}
                grouped = asyncio.ensure_future(
                    http.post(f"{url}/generate", json={**body, "ignore_eos": True})
                )
                await _until_in_engine(http, url, 2)  # admitted before the stream
                chunks, started = [], asyncio.Event()

                async def watch():
                    async for chunk in _stream_chunks(http, url, WATCH):
                        chunks.append(chunk)
                        started.set()

                stream = asyncio.ensure_future(watch())
                await gate.drive(started.wait())  # WATCH has a token, the earlier ones too
                fresh = None
                for k in range(1, PUSHES + 1):
                    await gate.drive(pusher.push(iter(states[k % 2].items()), version=v + k))
                    which[v + k] = k % 2
                    for _ in range(STEPS_BETWEEN):  # each a token of each long request
                        await gate.step()
                    if k == 1:  # SHARED is frozen mid-way, holding A's prefix KV
                        r = await gate.drive(
                            http.post(
                                f"{url}/generate",
                                json={"prompts": [SHARED], "max_tokens": 8, "temperature": 0},
                            )
                        )
                        fresh = r.json()["groups"][0]
                gate.open()
                reply = await grouped
                await stream
                metrics = (await http.get(f"{url}/metrics")).text
        finally:
            gate.open()
        await c.aclose()
        return which, reply, chunks[-1], fresh, metrics

    which, reply, last, fresh, metrics = asyncio.run(run())
    assert reply.status_code == 200, reply.text
    groups = reply.json()["groups"]
    weights = {
        ver: AutoModelForCausalLM.from_pretrained(models[i], dtype=torch.float32)
        for ver, i in which.items()
    }
    assert len(groups) == 2  # none lost
    for g in groups:
        [comp] = g["completions"]  # none duplicated
        spans = comp["versions"]
        assert [s["version"] for s in spans] == sorted(which), f"pushes missed it: {spans}"
        assert len(comp["token_ids"]) == LONG
        greedy, lps = replay(weights, g["prompt_token_ids"], comp["token_ids"], spans)
        assert comp["token_ids"] == greedy, (
            f"tokens are not what the reported weights make ({spans})"
        )
        assert comp["logprobs"] == pytest.approx(lps, abs=1e-4)
        assert g["policy_version"] == spans[0]["version"]  # the oldest token's version
    assert last["choices"][0]["finish_reason"] == "length"
    assert last["policy_version"] == max(which)  # the version the stream finished on
    assert "sampler_preempted_reruns_total 0.0" in metrics  # frozen, never aborted and re-run

    # A new request after the first push: B's weights from its first token, on KV of its own.
    assert fresh["completions"][0]["versions"] == [{"version": min(which) + 1, "start": 0}]
    toks, lps = hf_reference(1, SHARED, 8)
    assert fresh["completions"][0]["token_ids"] == toks
    assert fresh["completions"][0]["logprobs"] == pytest.approx(lps, abs=1e-4)
