"""The weight probe's logic (trainer/weight_probe.py): tolerance by dtype, the comparison and its
errors, and the reference logprobs against a direct log-softmax. A fake client stands in for the
replicas here; tests/integration/test_sampler_engine_modes.py probes real vLLM replicas."""

from __future__ import annotations

import asyncio
import http.server
import json
import logging
import math
import socket
import threading

import httpx
import pytest

from trainer.weight_probe import (
    TOLERANCE,
    WeightProbeError,
    check_replicas,
    compare,
    probe_token_ids,
    reference_logprobs,
    tolerance,
)

REF = [-1.0, -2.0, -3.0, -0.5]


def _reply(lps, version=3, dtype="float32"):
    return {"logprobs": lps, "policy_version": version, "dtype": dtype}


def test_tolerance_is_the_coarser_dtypes():
    assert tolerance("float32", "float32") == TOLERANCE["float32"]
    assert tolerance("float32", "bfloat16") == TOLERANCE["bfloat16"]
    assert tolerance("torch.float16", "float32") == TOLERANCE["float16"]
    assert TOLERANCE["float32"] < TOLERANCE["float16"] < TOLERANCE["bfloat16"]
    with pytest.raises(ValueError, match="int8"):
        tolerance("int8")


def test_compare_accepts_rounding_and_reports_the_gap():
    got = [x + 1e-4 for x in REF]
    res = compare("http://r0", _reply(got), REF, 3, "float32")
    assert res.gap == pytest.approx(1e-4)
    assert res.max_gap == pytest.approx(1e-4)
    assert res.tolerance == TOLERANCE["float32"]


def test_compare_names_replica_version_and_gap_of_wrong_weights():
    got = [x + 0.3 for x in REF]
    with pytest.raises(WeightProbeError) as e:
        compare("http://10.0.0.5:8000", _reply(got), REF, 3, "float32")
    msg = str(e.value)
    assert "http://10.0.0.5:8000" in msg and "policy version 3" in msg
    assert "0.3" in msg and "tolerance 0.005" in msg


def test_compare_uses_the_sampler_dtype_and_an_explicit_limit():
    got = [x + 0.03 for x in REF]  # beyond float32, within bfloat16
    with pytest.raises(WeightProbeError):
        compare("u", _reply(got), REF, 3, "float32")
    assert compare("u", _reply(got, dtype="bfloat16"), REF, 3, "float32").gap == pytest.approx(0.03)
    with pytest.raises(WeightProbeError, match="tolerance 0.01"):
        compare("u", _reply(got, dtype="bfloat16"), REF, 3, "float32", limit=0.01)


def test_compare_fails_on_nan_on_another_version_and_on_a_short_answer():
    with pytest.raises(WeightProbeError, match="gap nan"):
        compare("u", _reply([math.nan, *REF[1:]]), REF, 3, "float32")
    with pytest.raises(WeightProbeError, match="serves policy version 2, expected 3"):
        compare("u", _reply(REF, version=2), REF, 3, "float32")
    with pytest.raises(WeightProbeError, match="scored 3 tokens, expected 4"):
        compare("u", _reply(REF[:3]), REF, 3, "float32")


class _FakeClient:
    def __init__(self, replies):
        self.replies = replies
        self.asked: list[tuple[str, list[int]]] = []

    async def logprobs(self, url, token_ids):
        self.asked.append((url, token_ids))
        return self.replies[url]


def test_check_replicas_asks_each_and_names_the_bad_one():
    good, bad = _reply([x + 1e-4 for x in REF]), _reply([x + 1.0 for x in REF])
    client = _FakeClient({"http://a": good, "http://b": good})
    m = asyncio.run(
        check_replicas(client, ["http://a", "http://b"], [1, 2, 3, 4, 5], REF, 3, "float32")
    )
    assert [u for u, _ in client.asked] == ["http://a", "http://b"]
    assert m["weight_sync/probe_replicas"] == 2
    assert m["weight_sync/probe_gap"] == pytest.approx(1e-4)
    client = _FakeClient({"http://a": good, "http://b": bad})
    with pytest.raises(WeightProbeError, match="replica http://b "):
        asyncio.run(
            check_replicas(client, ["http://a", "http://b"], [1, 2, 3, 4, 5], REF, 3, "float32")
        )


def test_reference_logprobs_equal_a_direct_log_softmax(tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    ids = probe_token_ids(AutoTokenizer.from_pretrained(tiny_model_dir))
    assert len(ids) >= 16
    got = reference_logprobs(model, ids)
    with torch.no_grad():
        lp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)
    want = [float(lp[i - 1, ids[i]]) for i in range(1, len(ids))]
    assert got == pytest.approx(want, abs=1e-5)


def test_probe_token_ids_respect_the_context_and_refuse_a_degenerate_tokenizer():
    class Tok:
        def __init__(self, n):
            self.n = n

        def encode(self, text, add_special_tokens=False):
            return list(range(self.n))

    assert probe_token_ids(Tok(100)) == list(range(48))
    assert probe_token_ids(Tok(100), max_len=10) == list(range(10))
    with pytest.raises(ValueError, match=">= 2 tokens"):
        probe_token_ids(Tok(1))


class _ProbeReplicas(http.server.BaseHTTPRequestHandler):
    """Two replicas on one loopback server: /good answers the probe, /gone hangs up without a
    reply (a process SIGKILLed while the probe was in flight)."""

    good = _reply([x + 1e-4 for x in REF])

    def do_POST(self):  # noqa: N802 (http.server's name)
        self.rfile.read(int(self.headers["Content-Length"]))
        if self.path.startswith("/gone"):
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        body = json.dumps(self.good).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        return None


def test_a_replica_that_dies_during_the_probe_is_skipped_not_a_weight_error(caplog):
    """A replica killed between the push and its probe (CI, test_sampler_replica_killed_mid_run)
    is not evidence of wrong weights: it is logged and counted, the live ones are still checked;
    the driver's monitor restarts it and the rejoin probe checks it again."""
    from sampler.client import SamplerClient

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ProbeReplicas)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    with socket.socket() as s:  # a port nobody listens on: a replica whose process is gone
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    base = f"http://127.0.0.1:{server.server_address[1]}"
    urls = [f"{base}/good", f"{base}/gone", closed]

    async def probe():
        client = SamplerClient(urls, max_retries=0)
        try:
            return await check_replicas(client, urls, [1, 2, 3, 4, 5], REF, 3, "float32")
        finally:
            await client.aclose()

    try:
        with caplog.at_level(logging.WARNING, logger="trainer.weight_probe"):
            m = asyncio.run(probe())
    finally:
        server.shutdown()
        server.server_close()
    assert m["weight_sync/probe_replicas"] == 1
    assert m["weight_sync/probe_unreachable"] == 2
    assert m["weight_sync/probe_gap"] == pytest.approx(1e-4)
    text = caplog.text
    assert f"{base}/gone" in text and closed in text and "not checked" in text


def test_a_live_replica_with_wrong_weights_fails_even_when_another_is_unreachable():
    class Client(_FakeClient):
        async def logprobs(self, url, token_ids):
            if url == "http://gone":
                raise httpx.ConnectError("connection refused")
            return await super().logprobs(url, token_ids)

    client = Client({"http://a": _reply([x + 1.0 for x in REF])})
    with pytest.raises(WeightProbeError, match="replica http://a "):
        asyncio.run(check_replicas(client, ["http://gone", "http://a"], [1, 2], REF, 3, "float32"))


def test_a_replica_that_rejects_the_probe_request_is_an_error_not_skipped():
    """A 4xx (a wrong key, a probe longer than the replica's context) is a configuration fault
    the run must not hide."""
    from sampler.client import SamplerRequestError

    class Client(_FakeClient):
        async def logprobs(self, url, token_ids):
            raise SamplerRequestError(f"{url}/logprobs: HTTP 401: bad key")

    with pytest.raises(SamplerRequestError, match="401"):
        asyncio.run(check_replicas(Client({}), ["http://a"], [1, 2], REF, 3, "float32"))
