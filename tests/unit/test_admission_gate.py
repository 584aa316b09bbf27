"""The sampler's weight updates (sampler/serving.py, sampler/updates.py) with a fake engine: the
rules that make version labels exact, in both update modes. Every token the fake engine produces
is the id of the weights it was produced with, and the fake labels tokens as vLLM does (with the
engine's weight-version label at the step that made them), so the tests check the rules
themselves, whatever the interleaving:
  * no token is produced while weights are being loaded;
  * every token is reported with the version whose weights produced it, and each group with the
    oldest version of its tokens;
  * drain: one version per completion; a request the drain timeout aborts is re-run on the new
    weights and labelled with them;
  * inflight: requests are frozen, not aborted, and continue on the new weights;
  * no request is lost: each one gets its answer.
The real engine: tests/integration/test_sampler_*.py, test_inflight_updates.py."""

from __future__ import annotations

import asyncio
import random
from types import SimpleNamespace

import pytest

from sampler.config import SamplerConfig
from sampler.protocol import GlooUpdateRequest, GroupedRequest
from sampler.serving import SamplerService

SESSION = "s" * 32


class FakeEngine:
    """AsyncLLM's surface that SamplerService uses. Token i of a completion is the id of the
    weights that produced it; a prompt whose first id is in `hold` blocks (once) until aborted."""

    def __init__(self, seed: int = 0, hold: set[int] | None = None) -> None:
        self.weights = 0  # which weights are loaded
        self.label = "default"  # vLLM's weight-version label, stamped on every token
        self.running = asyncio.Event()  # cleared while paused with mode="keep"
        self.running.set()
        self.pauses: list[str] = []
        self.tokens_made = 0
        self.tokens_at_pause: list[int] = []
        self.loading = False
        self.violations: list[str] = []
        self.rng = random.Random(seed)
        self.hold = set(hold or ())
        self._aborted: set[str] = set()
        self._abort_events: dict[str, asyncio.Event] = {}
        self.loads = 0
        self.model_config = SimpleNamespace(
            max_model_len=256, get_vocab_size=lambda: 1000, dtype="torch.float32"
        )
        self.vllm_config = SimpleNamespace(parallel_config=SimpleNamespace(world_size=1))

    def get_tokenizer(self):
        return None

    async def generate(self, prompt, params, rid, priority=0):
        ids, lps, labels = [], [], []
        held = prompt["prompt_token_ids"][0] in self.hold
        self.hold.discard(prompt["prompt_token_ids"][0])
        for _ in range(params.max_tokens):
            if held:  # a long generation: runs until an update aborts it
                await self._abort_event(rid).wait()
            if rid in self._aborted:
                yield _output(ids, lps, labels, "abort")
                return
            for _ in range(self.rng.randint(0, 3)):  # other requests and updates interleave
                await asyncio.sleep(0)
            while not self.running.is_set():  # a frozen request makes no step (woken, it
                await self.running.wait()  # re-checks: a later pause may have come first)
            if rid in self._aborted:
                continue
            if self.loading:
                self.violations.append(f"request {rid} produced a token during a weight load")
            ids.append(self.weights)
            lps.append({self.weights: SimpleNamespace(logprob=-1.0)})
            labels.append(self.label)
            self.tokens_made += 1
        yield _output(ids, lps, labels, "length")

    def _abort_event(self, rid: str) -> asyncio.Event:
        return self._abort_events.setdefault(rid, asyncio.Event())

    async def abort(self, ids):
        self._aborted.update(ids)
        for rid in ids:
            self._abort_event(rid).set()

    async def pause_generation(self, mode="abort", clear_cache=True):
        self.pauses.append(mode)
        self.tokens_at_pause.append(self.tokens_made)
        if mode == "keep":
            self.running.clear()

    async def resume_generation(self):
        self.running.set()

    async def update_weight_version(self, version: str) -> None:
        self.label = version

    async def reset_prefix_cache(self):
        return True

    async def check_health(self):
        return None

    def get_num_unfinished_requests(self):
        return 0

    async def collective_rpc(self, method, kwargs=None):
        self.loading = True
        for _ in range(self.rng.randint(1, 5)):  # receiving takes a while
            await asyncio.sleep(0)
        self.weights += 1
        self.loads += 1
        self.loading = False
        return [{}]


def _output(ids, lps, labels, finish):
    """A finished RequestOutput; spans of equal labels as vLLM's `weight_versions`."""
    spans = []
    for i, label in enumerate(labels):
        if not spans or spans[-1].version != label:
            spans.append(SimpleNamespace(version=label, start=i, end=i + 1))
        spans[-1].end = i + 1
    comp = SimpleNamespace(index=0, token_ids=list(ids), logprobs=list(lps), finish_reason=finish)
    comp.text = ""
    comp.weight_versions = spans
    return SimpleNamespace(outputs=[comp], prompt_logprobs=None)


def _service(engine: FakeEngine, drain_s: float = 60, mode: str = "drain") -> SamplerService:
    cfg = SamplerConfig(update_drain_timeout_s=drain_s, update_mode=mode)
    return SamplerService(engine, cfg, "fake")


def _request(first: int, max_tokens: int = 6) -> GroupedRequest:
    return GroupedRequest(prompts=[[first, 1, 2]], n=1, max_tokens=max_tokens, temperature=1.0)


def _update() -> GlooUpdateRequest:
    return GlooUpdateRequest(master_addr="127.0.0.1", master_port=1, session=SESSION)


def _check_labels(responses, *, single_version: bool = True) -> None:
    """Each token's reported version is the weights that made it (the token's value); a group's
    version is the oldest of its tokens; with `single_version`, one version per completion."""
    for r in responses:
        for g in r.groups:
            for c in g.completions:
                ends = [s.start for s in c.versions[1:]] + [len(c.token_ids)]
                reported = [
                    s.version
                    for s, e in zip(c.versions, ends, strict=True)
                    for _ in range(s.start, e)
                ]
                assert reported == c.token_ids, (
                    f"tokens made by weights {c.token_ids} reported as {reported}"
                )
                if single_version:
                    assert len(c.versions) == 1, f"one completion spans {c.versions}"
            assert g.policy_version == min(c.versions[0].version for c in g.completions)


@pytest.mark.timeout(60)  # a broken gate can leave the held request waiting forever
@pytest.mark.parametrize("mode", ["drain", "inflight"])
@pytest.mark.parametrize("seed", range(8))
def test_labels_are_exact_and_no_token_is_made_during_a_load(seed, mode):
    engine = FakeEngine(seed)
    rng = random.Random(seed)

    async def go():
        svc = _service(engine, mode=mode)
        jobs = [svc.generate_grouped(_request(k)) for k in range(12)]
        jobs += [svc.update_gloo(_update()) for _ in range(3)]
        rng.shuffle(jobs)
        tasks = []
        for job in jobs:  # arrivals spread over the run
            tasks.append(asyncio.ensure_future(job))
            for _ in range(rng.randint(0, 4)):
                await asyncio.sleep(0)
        return await asyncio.gather(*tasks)

    results = asyncio.run(go())
    responses = [r for r in results if hasattr(r, "groups")]
    assert len(responses) == 12  # none lost
    assert engine.violations == []
    assert engine.loads == 3
    _check_labels(responses, single_version=mode == "drain")
    assert sorted(r.policy_version for r in results if not hasattr(r, "groups")) == [1, 2, 3]
    if mode == "inflight":  # requests were frozen, never aborted or re-run
        assert engine.pauses == ["keep"] * 3 and not engine._aborted


@pytest.mark.timeout(60)
def test_a_request_still_running_after_the_drain_timeout_is_re_run_and_labelled_new():
    engine = FakeEngine(hold={7})

    async def go():
        svc = _service(engine, drain_s=0.05)
        long = asyncio.ensure_future(svc.generate_grouped(_request(7)))
        while not svc._engine_ids:  # the long request reached the engine
            await asyncio.sleep(0)
        update = await svc.update_gloo(_update())
        return svc, update, await long

    svc, update, long = asyncio.run(go())
    assert update.policy_version == 1
    assert long.policy_version == 1 and long.groups[0].completions[0].token_ids == [1] * 6
    assert svc.metrics.reruns._value.get() == 1
    assert engine.violations == []


def test_a_dead_engine_is_a_503_naming_the_cause_not_an_internal_error():
    """The engine core exits (the replica shuts down, or it crashed) while a request runs: the
    client gets 503, retry elsewhere, not a 500 (seen under bench/bench_public_flood.py)."""
    from vllm.v1.engine.exceptions import EngineDeadError

    from sampler.serving import RequestError

    class DeadEngine(FakeEngine):
        async def generate(self, prompt, params, rid, priority=0):
            raise EngineDeadError()
            yield  # an async generator, as vLLM's

    async def go():
        return await _service(DeadEngine()).generate_grouped(_request(1))

    with pytest.raises(RequestError) as e:
        asyncio.run(go())
    assert e.value.status == 503 and "engine" in e.value.message


@pytest.mark.timeout(60)
def test_inflight_a_long_request_continues_across_updates_and_reports_each_span():
    """Three updates while one long request runs: it is not aborted or re-run, and its spans
    start exactly at the token counts the engine had made when each update froze it."""
    engine = FakeEngine(seed=3)

    async def go():
        svc = _service(engine, mode="inflight")
        long = asyncio.ensure_future(svc.generate_grouped(_request(5, max_tokens=40)))
        for after in (3, 10, 20):
            while engine.tokens_made < after:
                await asyncio.sleep(0)
            await svc.update_gloo(_update())
        return svc, await long

    svc, long = asyncio.run(go())
    [c] = long.groups[0].completions
    t1, t2, t3 = engine.tokens_at_pause
    assert [(s.version, s.start) for s in c.versions] == [(0, 0), (1, t1), (2, t2), (3, t3)]
    assert long.groups[0].policy_version == 0 and len(c.token_ids) == 40
    _check_labels([long], single_version=False)
    assert svc.metrics.reruns._value.get() == 0 and not engine._aborted
    assert engine.violations == []


@pytest.mark.timeout(60)
def test_inflight_a_failed_load_aborts_frozen_requests_and_the_replica_refuses_work():
    from sampler.serving import RequestError

    class FailingLoad(FakeEngine):
        async def collective_rpc(self, method, kwargs=None):
            raise RuntimeError("receiver lost its peer")

    engine = FailingLoad(hold={9})

    async def go():
        svc = _service(engine, mode="inflight")
        long = asyncio.ensure_future(svc.generate_grouped(_request(9)))
        while not svc._engine_ids:
            await asyncio.sleep(0)
        with pytest.raises(RequestError) as update:
            await svc.update_gloo(_update())
        with pytest.raises(RequestError) as request:
            await long
        return update.value, request.value

    update, request = asyncio.run(go())
    assert update.status == 500 and "receiver lost its peer" in update.message
    assert request.status == 503 and "unhealthy" in request.message
    assert engine._aborted and engine.violations == []


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", ["drain", "inflight"])
def test_an_update_reports_the_requests_it_met_and_its_wait_for_a_quiet_engine(mode):
    """bench/bench_inflight.py reads these: how many requests an update met in flight and how
    long it waited for the engine to be quiet (drain: them finishing; inflight: the pause)."""
    engine = FakeEngine(seed=1)

    async def go():
        svc = _service(engine, mode=mode)
        idle = await svc.update_gloo(_update())
        long = asyncio.ensure_future(svc.generate_grouped(_request(5, max_tokens=40)))
        while engine.tokens_made < 3:
            await asyncio.sleep(0)
        busy = await svc.update_gloo(_update())
        made = engine.tokens_made
        await long
        return idle, busy, made

    idle, busy, made = asyncio.run(go())
    assert idle.stats["requests_in_flight"] == 0 and busy.stats["requests_in_flight"] == 1
    for r in (idle, busy):
        assert 0 <= r.stats["quiesce_seconds"] <= r.seconds
    # drain waited for the long request's last token; inflight froze it half-way
    assert (made == 40) == (mode == "drain")
