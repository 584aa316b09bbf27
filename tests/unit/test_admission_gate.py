"""The sampler's admission gate (sampler/serving.py) with a fake engine: the rule that makes
version labels exact. Every token the fake engine produces records the weights it was produced
with, so the tests check the rule itself, whatever the interleaving:
  * no token is produced while weights are being loaded;
  * every grouped response is labelled with the version whose weights produced all its tokens;
  * a request the drain timeout aborts is re-run on the new weights and labelled with them;
  * no request is lost: each one gets its answer.
The real engine: tests/integration/test_sampler_*.py."""

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
        ids, lps = [], []
        held = prompt["prompt_token_ids"][0] in self.hold
        self.hold.discard(prompt["prompt_token_ids"][0])
        for _ in range(params.max_tokens):
            if held:  # a long generation: runs until an update aborts it
                await self._abort_event(rid).wait()
            if rid in self._aborted:
                yield _output(ids, lps, "abort")
                return
            for _ in range(self.rng.randint(0, 3)):  # other requests and updates interleave
                await asyncio.sleep(0)
            if self.loading:
                self.violations.append(f"request {rid} produced a token during a weight load")
            ids.append(self.weights)
            lps.append({self.weights: SimpleNamespace(logprob=-1.0)})
        yield _output(ids, lps, "length")

    def _abort_event(self, rid: str) -> asyncio.Event:
        return self._abort_events.setdefault(rid, asyncio.Event())

    async def abort(self, ids):
        self._aborted.update(ids)
        for rid in ids:
            self._abort_event(rid).set()

    async def pause_generation(self, mode="abort", clear_cache=True):
        return None

    async def resume_generation(self):
        return None

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


def _output(ids, lps, finish):
    comp = SimpleNamespace(index=0, token_ids=list(ids), logprobs=list(lps), finish_reason=finish)
    comp.text = ""
    return SimpleNamespace(outputs=[comp], prompt_logprobs=None)


def _service(engine: FakeEngine, drain_s: float = 60) -> SamplerService:
    cfg = SamplerConfig(update_drain_timeout_s=drain_s)
    return SamplerService(engine, cfg, "fake")


def _request(first: int, max_tokens: int = 6) -> GroupedRequest:
    return GroupedRequest(prompts=[[first, 1, 2]], n=1, max_tokens=max_tokens, temperature=1.0)


def _update() -> GlooUpdateRequest:
    return GlooUpdateRequest(master_addr="127.0.0.1", master_port=1, session=SESSION)


def _check_labels(responses) -> None:
    for r in responses:
        for g in r.groups:
            for c in g.completions:
                assert set(c.token_ids) == {g.policy_version}, (
                    f"labelled version {g.policy_version} but produced by weights "
                    f"{sorted(set(c.token_ids))}"
                )


@pytest.mark.timeout(60)  # a broken gate can leave the held request waiting forever
@pytest.mark.parametrize("seed", range(8))
def test_labels_are_exact_and_no_token_is_made_during_a_load(seed):
    engine = FakeEngine(seed)
    rng = random.Random(seed)

    async def go():
        svc = _service(engine)
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
    _check_labels(responses)
    assert sorted(r.policy_version for r in results if not hasattr(r, "groups")) == [1, 2, 3]


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
