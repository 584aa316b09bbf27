"""Weight updates in the engine shapes GPUs run, on CPU: vLLM's multiprocess engine core and
tensor parallelism 2 (two vLLM workers per replica, each a receiver of the trainer's group).
After each push (gloo twice, then filesystem) the replica's greedy tokens and logprobs must equal
transformers' on the new weights, float32, and the trainer's weight probe must catch one
corrupted (TP-sharded) tensor.

`AsyncLLM` in vLLM 0.32 always runs its engine core in a process of its own (core_client refuses
asyncio without multiprocessing), so every sampler test runs that mode; these set
`VLLM_ENABLE_V1_MULTIPROCESSING=1` as a GPU node has it and add what the others lack: TP 2 on
both CPU layouts, and bounded receive memory.
"""

from __future__ import annotations

import asyncio

import pytest
from test_sampler_server import (  # noqa: F401  (fixtures)
    ADMIN_KEY,
    API_KEY,
    PROMPTS,
    _assert_matches,
    _hf_state,
    _probe_catches_a_corrupt_tensor,
    _push_and_check,
    _serves,
    hf_reference,
    models,
    start_test_sampler,
)

pytestmark = pytest.mark.slow

# (name, tensor_parallel_size, cpu layout): all on the multiprocess engine.
SHAPES = [("mp-tp1", 1, "packed"), ("mp-tp2", 2, "packed"), ("mp-tp2-plain", 2, "plain")]


@pytest.fixture(scope="module", params=SHAPES, ids=[s[0] for s in SHAPES])
def shaped_server(request, models, tmp_path_factory):  # noqa: F811
    from sampler.launch import child_env

    name, tp, layout = request.param
    sp = start_test_sampler(
        models[0],
        tmp_path_factory,
        name,
        f"  tensor_parallel_size: {tp}\n  cpu_weight_layout: {layout}\n"
        "  kv_cache_memory_bytes: 33554432\n",
        env=child_env({"VLLM_ENABLE_V1_MULTIPROCESSING": "1"}),
        timeout_s=600,
    )
    yield request.param, sp
    sp.stop()


def test_weight_updates_in_gpu_engine_shapes_match_transformers(
    shaped_server,
    models,  # noqa: F811
    hf_reference,  # noqa: F811
    tmp_path,
):
    from sampler.client import SamplerClient, SamplingSpec
    from sampler.weights.sender import make_weight_pusher

    (_, tp, layout), server = shaped_server

    async def run():
        c = SamplerClient([server.url], api_key=API_KEY, admin_key=ADMIN_KEY)
        health = await c.health(server.url)
        assert health["workers"] == tp  # every TP worker is a receiver
        spec = SamplingSpec(max_tokens=8, temperature=0)
        v0 = (await c.versions())[server.url]
        _assert_matches(await c.generate(PROMPTS, 1, spec), hf_reference, 0, 8)

        # Above the tiny model's layer (578 KB) and below its 1.75 MB: 3-4 buckets of whole layers.
        bucket = 600 << 10
        gloo = make_weight_pusher("gloo", c, bucket_bytes=bucket, timeout_s=60)
        for i, which in enumerate((1, 0)):  # a second push reuses the kept group
            state = _hf_state(models[which])
            stats = await gloo.push(iter(state.items()), version=v0 + 1 + i)
            assert stats["replicas_ok"] == 1, stats
            # Bounded receive memory: two buckets at most, however many buckets the model is.
            largest = max(t.numel() * t.element_size() for t in state.values())
            one_bucket = max(bucket, largest) + 64 * len(state)  # + alignment
            assert stats["buckets"] >= 3, stats
            # vLLM's reload (packed layout, TP 1) keeps the tied embedding's bucket until
            # lm_head's turn at the end: one extra buffer, measured; plain holds two at most.
            extra = 1 if layout == "packed" else 0
            peak = stats["replica_receive_buffer_peak_bytes"]
            assert 0 < peak <= (2 + extra) * one_bucket, stats
            assert stats["replica_receive_buffer_extra"] <= extra, stats
            res = await c.generate(PROMPTS, 1, spec)
            assert {g.policy_version for g in res} == {v0 + 1 + i}
            _assert_matches(res, hf_reference, which, 8)

        fs = make_weight_pusher(
            "filesystem", c, bucket_bytes=256 << 10, timeout_s=60, shared_dir=str(tmp_path)
        )
        await _push_and_check(c, fs, models, 1, v0 + 3, hf_reference)
        await _probe_catches_a_corrupt_tensor(c, server.url, gloo, models, v0 + 4)
        await gloo.aclose()
        await c.aclose()

    asyncio.run(run())


def test_a_refused_update_does_not_poison_the_next_one(shaped_server, models, hf_reference):  # noqa: F811
    """A partial update is refused on every layout (vLLM's in-place reload only warns and keeps
    old values) and fails on every worker. vLLM's multiprocess executor raises at the first
    worker's error and leaves the other workers' replies queued, so with TP 2 the next
    collective call would read a stale error: the replica must still recover on a full push."""
    import httpx

    from sampler.client import SamplerClient
    from sampler.weights.sender import WeightPushError, make_weight_pusher

    _, server = shaped_server
    full = _hf_state(models[1])
    # A whole parameter missing, and one shard of vLLM's fused qkv_proj missing (vLLM's own
    # reload only warns about either and serves old values).
    gaps = ("model.layers.0.mlp.down_proj.weight", "model.layers.1.self_attn.k_proj.weight")

    async def run():
        c = SamplerClient([server.url], api_key=API_KEY, admin_key=ADMIN_KEY)
        v = (await c.versions())[server.url]
        pusher = make_weight_pusher("gloo", c, bucket_bytes=1 << 20, timeout_s=60)
        for gap in gaps:
            partial = {k: t for k, t in full.items() if k != gap}
            with pytest.raises(WeightPushError, match="old values"):
                await pusher.push(iter(partial.items()), version=v + 1)
            assert httpx.get(server.url + "/health").status_code == 503
            for _ in range(2):  # twice: a stale reply would be consumed by the first at most
                v += 1
                stats = await pusher.push(iter(full.items()), version=v)
                assert stats["replicas_ok"] == 1, stats
                await _serves(c, v, 1, hf_reference)
        await pusher.aclose()
        await c.aclose()

    asyncio.run(run())
