"""Two real sampler replicas behind `SamplerClient`: killing one mid-batch loses no request, and
the next weight push reaches the survivor (and reports the dead one)."""

from __future__ import annotations

import asyncio
import time

import pytest

pytestmark = pytest.mark.slow

ADMIN_KEY = "replica-admin"


@pytest.fixture(scope="module")
def replicas(tmp_path_factory):
    from data.tiny_model import build_tiny_model
    from sampler.launch import start_sampler

    root = tmp_path_factory.mktemp("replicas")
    model = build_tiny_model(root / "A", seed=0)
    other = build_tiny_model(root / "B", seed=1)
    cfg = root / "run.yaml"  # short drain: updates preempt long requests, which are re-run
    cfg.write_text(
        "sampler:\n  dtype: float32\n  update_mode: drain\n  update_drain_timeout_s: 0.3\n"
    )
    procs = [
        start_sampler(
            model, log_dir=root, admin_key=ADMIN_KEY, extra_args=["--config", str(cfg)], wait=False
        )
        for _ in range(2)
    ]
    try:
        for p in procs:
            p.wait_healthy(300)
    except BaseException:
        for p in procs:
            p.kill()
        raise
    yield model, other, procs
    for p in procs:
        p.stop()


def test_update_preempts_a_long_request_which_is_rerun_and_labelled_new(replicas):
    import httpx
    import torch
    from transformers import AutoModelForCausalLM

    from sampler.client import SamplerClient, SamplingSpec
    from sampler.weights.sender import make_weight_pusher

    _, other, (_, rep) = replicas
    prompts = [[30, 31, 32]]
    greedy = SamplingSpec(max_tokens=1000, temperature=0)

    async def run():
        c = SamplerClient([rep.url], admin_key=ADMIN_KEY)
        v = (await c.versions())[rep.url]
        before = (await c.generate(prompts, 1, greedy))[0]
        assert before.policy_version == v
        long = asyncio.create_task(c.generate(prompts, 1, greedy))
        deadline = time.monotonic() + 30
        while c._outstanding.get(rep.url, 0) == 0:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        state = AutoModelForCausalLM.from_pretrained(other, dtype=torch.float32).state_dict()
        pusher = make_weight_pusher("gloo", c, bucket_bytes=1 << 20, timeout_s=30)
        await pusher.push(iter(state.items()), version=v + 1)
        rerun = (await long)[0]
        after = (await c.generate(prompts, 1, greedy))[0]
        # The preempted request was re-run on B: same label and same tokens as a fresh B request.
        assert rerun.policy_version == after.policy_version == v + 1
        assert rerun.completions[0].token_ids == after.completions[0].token_ids
        assert after.completions[0].token_ids != before.completions[0].token_ids
        metrics = httpx.get(rep.url + "/metrics").text
        assert "sampler_preempted_reruns_total 1.0" in metrics
        # Back to model A for the next test.
        await pusher.push(
            iter(
                AutoModelForCausalLM.from_pretrained(replicas[0], dtype=torch.float32)
                .state_dict()
                .items()
            ),
            version=v + 2,
        )
        await c.aclose()

    asyncio.run(run())


def test_kill_one_replica_mid_batch_loses_nothing_and_push_reaches_survivor(replicas, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from sampler.client import SamplerClient, SamplingSpec
    from sampler.launch import start_sampler
    from sampler.weights.sender import make_weight_pusher

    model, _, (victim, survivor) = replicas
    prompts = [[5 + i, 6 + i, 7 + i] for i in range(16)]
    state = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).state_dict()

    async def run():
        c = SamplerClient([victim.url, survivor.url], admin_key=ADMIN_KEY, max_retries=2)
        await c.wait_healthy(30)
        pusher = make_weight_pusher("gloo", c, bucket_bytes=1 << 20, timeout_s=10)
        v = max((await c.versions()).values()) + 1
        await pusher.push(iter(state.items()), version=v)  # both replicas now share groups
        assert await c.versions() == {victim.url: v, survivor.url: v}

        spec = SamplingSpec(max_tokens=256, temperature=1.0, seed=0)
        batch = asyncio.create_task(c.generate(prompts, 2, spec))
        # Kill the victim once it is working on its share of the batch.
        deadline = time.monotonic() + 60
        while c._outstanding.get(victim.url, 0) == 0 and not batch.done():
            assert time.monotonic() < deadline, "the victim never received work"
            await asyncio.sleep(0.01)
        victim.kill()
        results = await batch
        assert [g.prompt_token_ids for g in results] == prompts
        assert all(len(g.completions) == 2 for g in results)
        assert {g.replica for g in results} == {survivor.url}  # the victim's share was re-run

        stats = await pusher.push(iter(state.items()), version=v + 1)
        assert stats["replicas_ok"] == 1 and stats["replicas_failed"] == 1
        assert list(pusher.last_failed) == [victim.url]
        assert await c.versions() == {survivor.url: v + 1}

        # The replica comes back on the same URL (new process, version 0): resync only it; its
        # old group is stale, so the pusher must notice the restart and build a new one.
        port = int(victim.url.rsplit(":", 1)[1])
        back = await asyncio.to_thread(
            start_sampler,
            model,
            log_dir=tmp_path,
            port=port,
            admin_key=ADMIN_KEY,
            extra_args=["--dtype", "float32"],
        )
        try:
            assert (await c.versions())[victim.url] == 0
            await pusher.push(iter(state.items()), version=v + 1, urls=[victim.url])
            assert await c.versions() == {victim.url: v + 1, survivor.url: v + 1}
            again = await c.generate(prompts[:4], 1, SamplingSpec(max_tokens=4, temperature=0))
            assert {g.policy_version for g in again} == {v + 1}
        finally:
            back.stop()
        await c.aclose()

    asyncio.run(run())
