"""The Ray reward pool with real Ray actors: parity with in-process scoring, isolation of
rewards that raise, hang or kill their worker, actor replacement, and request coalescing.

The faulty rewards below are plugins (`<this module>:<function>`); the actors import this module
through `runtime_env={"env_vars": {"PYTHONPATH": <this folder>}}`, as a user's plugin would be.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from rewards import make_scorer
from rewards.config import RewardPoolConfig

pytestmark = pytest.mark.slow
HERE = str(Path(__file__).resolve().parent)
PLUGIN = __name__


# ---- plugin rewards (run inside the actors) -------------------------------------------------
def raise_on_poison(prompts: list, completions: list, **_: object) -> list[float]:
    if any("poison" in c for c in completions):
        raise RuntimeError("poisoned completion")
    return [float(len(c)) for c in completions]


def raises_on_fault(prompts: list, completions: list, **_: object) -> list[float]:
    if any("FAULT" in c for c in completions):
        raise RuntimeError("this reward is broken")
    return [1.0] * len(completions)


def hangs_on_fault(prompts: list, completions: list, **_: object) -> list[float]:
    if any("FAULT" in c for c in completions):
        time.sleep(600)  # killed by the pool's timeout
    return [1.0] * len(completions)


def exits_on_fault(prompts: list, completions: list, **_: object) -> list[float]:
    if any("FAULT" in c for c in completions):
        os._exit(3)
    return [1.0] * len(completions)


def hangs(prompts: list, completions: list, **_: object) -> list[float]:
    time.sleep(600)
    return [0.0] * len(completions)


def exits_on_kill(prompts: list, completions: list, **_: object) -> list[float]:
    if any("KILL" in c for c in completions):
        os._exit(4)
    return [1.0] * len(completions)


def worker_pid(prompts: list, completions: list, **_: object) -> list[float]:
    return [float(os.getpid())] * len(completions)


def declared_inputs(prompts: list, completions: list, **columns: object) -> list[float]:
    """Declares it reads only `solution`: the pool ships neither prompts nor completion_ids."""
    shipped = sorted(columns) == ["id", "solution"] and all(p is None for p in prompts)
    return [1.0 if shipped else 0.0] * len(completions)


declared_inputs.reward_columns = ("solution",)


# ---- fixtures ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ray_cluster():
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    owned = not ray.is_initialized()
    if owned:
        ray.init(num_cpus=2, include_dashboard=False)
    yield ray
    if owned:
        ray.shutdown()


def _config(**kw: object) -> RewardPoolConfig:
    base = {
        "num_workers": 2,
        "timeout_s": 3.0,
        "max_retries": 0,
        "runtime_env": {"env_vars": {"PYTHONPATH": HERE}},
        "inline_builtins": False,  # every reward through the actors (the inline path is tested below)
    }
    return RewardPoolConfig(**{**base, **kw})


def _items(n: int) -> tuple[list, list, dict]:
    letters = "ABCD"
    prompts = [f"Q{i}\nOptions:\nA. one\nB. two\nC. three\nD. four\n" for i in range(n)]
    completions = []
    for i in range(n):
        body = f"<think>\nstep {i}\n</think>\n<answer>\nFinal Answer: {letters[i % 4]}\n</answer>"
        completions.append(body if i % 7 else "poison " + body)
    columns = {
        "solution": [letters[(i // 2) % 4] for i in range(n)],
        "id": [f"row-{i}" for i in range(n)],
        "completion_ids": [[1] * (i % 50) for i in range(n)],
    }
    return prompts, completions, columns


# ---- tests ------------------------------------------------------------------------------------
def test_pool_matches_in_process_scoring(ray_cluster) -> None:
    funcs = ["accuracy", "format", "overlong", f"{PLUGIN}:raise_on_poison"]
    weights = [1.0, 0.5, 1.0, 0.01]
    prompts, completions, columns = _items(300)
    local = make_scorer(funcs, weights, _config(use_ray=False), max_completion_length=40)
    expected = local.score(prompts, completions, columns)
    with make_scorer(funcs, weights, _config(), max_completion_length=40) as pool:
        got = pool.score(prompts, completions, columns)
        stats = pool.stats()
    assert got.per_func == expected.per_func
    assert got.total == expected.total
    assert got.failures == expected.failures
    assert got.failures["raise_on_poison"] == len([c for c in completions if "poison" in c]) > 0
    assert sum(v == 1.0 for v in got.per_func["accuracy"]) > 0
    assert stats["calls"] == 2  # 300 items > max_batch_size 256: split across both actors


def test_raising_hanging_and_exiting_rewards_are_isolated(ray_cluster, caplog) -> None:
    faulty = ["raises_on_fault", "hangs_on_fault", "exits_on_fault"]
    funcs = ["accuracy"] + [f"{PLUGIN}:{name}" for name in faulty]
    prompts, completions, columns = _items(40)
    expected_acc = make_scorer(["accuracy"], None, _config(use_ray=False)).score(
        prompts, completions, columns
    )
    with make_scorer(funcs, None, _config(timeout_s=1.5, min_batch_size=64)) as pool:  # one piece
        bad = pool.score(prompts, [c + " FAULT" for c in completions], columns)
        assert (
            bad.per_func["accuracy"] == expected_acc.per_func["accuracy"]
        )  # the others still score
        assert bad.failures["accuracy"] == 0
        for name in faulty:
            assert bad.per_func[name] == [None] * 40, name
            assert bad.failures[name] == 40, name
        assert bad.total == expected_acc.total  # None rewards add nothing (TRL nansum)
        assert "this reward is broken" in bad.failure_samples["raises_on_fault"]
        assert "timeout_s=1.5" in bad.failure_samples["hangs_on_fault"]
        assert "died" in bad.failure_samples["exits_on_fault"]
        assert "id='row-" in bad.failure_samples["exits_on_fault"]  # a sample of the failing input
        good = pool.score(prompts, completions, columns)  # the pool keeps working afterwards
        assert good.failures == dict.fromkeys(["accuracy", *faulty], 0)
        assert all(good.per_func[name] == [1.0] * 40 for name in faulty)
        stats = pool.stats()
    # 3 actors were killed; the last replacement may still be starting
    assert stats["timeouts"] == 2 and stats["worker_deaths"] == 1 and stats["restarts"] >= 2
    assert "sample item 0" in caplog.text


def test_dead_worker_is_replaced_and_later_calls_succeed(ray_cluster) -> None:
    funcs = ["format", f"{PLUGIN}:exits_on_kill", f"{PLUGIN}:worker_pid"]
    prompts, completions, columns = _items(20)
    with make_scorer(funcs, None, _config(num_workers=1, max_retries=1)) as pool:
        first = pool.score(prompts, completions, columns)
        before = first.per_func["worker_pid"][0]
        killed = pool.score(prompts, completions[:-1] + ["KILL"], columns)
        assert killed.per_func["exits_on_kill"] == [None] * 20  # one exit kills the whole call
        assert killed.failures["exits_on_kill"] == 20
        assert (
            killed.per_func["format"][:-1] == first.per_func["format"][:-1]
        )  # others still scored
        assert killed.failures["format"] == 0
        after = pool.score(prompts, completions, columns)
        assert (
            after.per_func["exits_on_kill"] == [1.0] * 20 and after.failures["exits_on_kill"] == 0
        )
        assert after.per_func["worker_pid"][0] not in (before, None)  # a new process
        assert pool.stats()["worker_deaths"] == 2  # the first try and its one retry


def test_concurrent_small_requests_are_coalesced(ray_cluster) -> None:
    prompts, completions, columns = _items(8 * 40)
    local = make_scorer(["accuracy", "format"], None, _config(use_ray=False))
    with make_scorer(["accuracy", "format"], None, _config(max_batch_size=128)) as pool:

        async def run() -> list:
            groups = [
                pool.ascore(
                    prompts[i : i + 8],
                    completions[i : i + 8],
                    {k: v[i : i + 8] for k, v in columns.items()},
                )
                for i in range(0, len(completions), 8)
            ]
            return await asyncio.gather(*groups)

        batches = asyncio.run(run())
        stats = pool.stats()
    total = [t for b in batches for t in b.total]
    assert total == local.score(prompts, completions, columns).total
    assert stats["items"] == 320
    assert stats["calls"] < 40  # groups that queue while actors are busy share one actor call


def test_empty_batch_bad_columns_and_declared_inputs(ray_cluster) -> None:
    with make_scorer(["format", f"{PLUGIN}:declared_inputs"], None, _config(num_workers=1)) as pool:
        empty = pool.score([], [], {})
        assert empty.total == [] and empty.per_func == {"format": [], "declared_inputs": []}
        with pytest.raises(ValueError, match="column 'id'"):
            pool.score(["p"], ["c"], {"id": []})
        prompts, completions, columns = _items(10)
        batch = pool.score(prompts, completions, columns)
        assert batch.per_func["declared_inputs"] == [1.0] * 10


def test_close_answers_in_flight_calls_and_rejects_new_ones(ray_cluster) -> None:
    import threading

    pool = make_scorer([f"{PLUGIN}:hangs"], None, _config(num_workers=1, timeout_s=300.0))
    prompts, completions, columns = _items(4)
    result: dict = {}
    caller = threading.Thread(
        target=lambda: result.update(batch=pool.score(prompts, completions, columns))
    )
    caller.start()
    deadline = time.monotonic() + 60
    while pool.stats().get("calls", 0) < 1:  # the call is in flight on the actor
        assert time.monotonic() < deadline, "the call never reached the actor"
        time.sleep(0.05)
    pool.close()
    caller.join(timeout=60)
    assert not caller.is_alive()
    assert (
        result["batch"].per_func["hangs"] == [None] * 4 and result["batch"].failures["hangs"] == 4
    )
    assert "closed" in result["batch"].failure_samples["hangs"]
    with pytest.raises(RuntimeError, match="closed"):
        pool.score(prompts, completions, columns)


def test_inline_builtins_score_in_the_driver(ray_cluster) -> None:
    from rewards.inprocess import InProcessScorer
    from rewards.ray_pool import RayScorer

    funcs = ["accuracy", "format", f"{PLUGIN}:worker_pid"]
    prompts, completions, columns = _items(64)
    expected = make_scorer(funcs, None, _config(use_ray=False)).score(prompts, completions, columns)
    with make_scorer(funcs, None, _config(inline_builtins=True)) as pool:
        assert isinstance(pool, RayScorer)
        got = pool.score(prompts, completions, columns)
        assert pool.stats()["items"] == 64  # only the plugin's items were shipped, once
    assert got.per_func["accuracy"] == expected.per_func["accuracy"]
    assert got.per_func["format"] == expected.per_func["format"]
    assert os.getpid() not in got.per_func["worker_pid"]  # the plugin ran on an actor
    only_builtins = make_scorer(["accuracy", "format"], None, _config(inline_builtins=True))
    assert isinstance(only_builtins, InProcessScorer)  # no actor would be used: none started
