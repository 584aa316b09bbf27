"""The Ray reward pool: reward actors that score batches with timeouts, retries and isolation.

Owns: `RayScorer` (same interface as rewards.inprocess.InProcessScorer), the dispatcher that splits
requests across idle actors and coalesces small concurrent requests into one actor call, and
actor replacement. Does not know: reward semantics (rewards.execution runs them inside actors).

Design (numbers and reasons in docs/rewards.md):
- the scorer runs its own asyncio loop in a thread, so `ascore` works from any caller loop and
  `score` from plain code; each actor has one dispatcher task, which only sends a call when its
  actor is idle, so the timeout measures execution, never queueing;
- while all actors are busy, requests wait in one queue; an actor that frees up takes as many
  queued pieces as fit in `max_batch_size` (per-call cost ~0.5-1 ms, so many groups of 8-64 items
  cost one call, not one each); an idle pool splits a request across idle actors;
- an actor call that times out or whose actor dies: the actor is killed and replaced; each
  reward of the failed call is retried alone (so a hanging reward cannot wipe out the others'
  scores), up to `max_retries`; what still fails is None, counted and logged with a sample.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
from collections import Counter, deque
from typing import Any

from rewards.batch import RewardBatch, build_batch
from rewards.chunks import Chunk, merge_results, split_ranges
from rewards.execution import FuncResult, check_batch, describe_item, run_rewards
from rewards.local_ray import init_loopback_ray
from rewards.registry import RewardFn, reward_inputs, reward_name
from rewards.spec import RewardSpec
from rewards.worker import RewardWorker

log = logging.getLogger(__name__)
_SPAWN_ATTEMPTS = 3


class RayScorer:
    """Scores on `config.num_workers` Ray actors. See the module docstring."""

    def __init__(self, spec: RewardSpec, fns: dict[str, RewardFn]) -> None:
        """`spec` validated (rewards.spec), `fns` its callables resolved in this process (the
        inline ones run here; every reward's declared inputs decide what is shipped)."""
        import ray

        config = spec.config
        self.names = spec.names
        self.weights = spec.weights
        self.config = config
        self._owns_ray = False
        if not ray.is_initialized():
            if config.ray_address:
                ray.init(address=config.ray_address)
            else:  # local mode: a bounded one-node Ray just for the pool, on loopback
                init_loopback_ray(
                    num_cpus=max(1, math.ceil(config.num_workers * config.num_cpus_per_worker)),
                    include_dashboard=False,
                )
            self._owns_ray = True
        runtime_env = dict(config.runtime_env or {})
        runtime_env["env_vars"] = {"OMP_NUM_THREADS": "1", **runtime_env.get("env_vars", {})}
        self._actor_cls = ray.remote(RewardWorker).options(
            num_cpus=config.num_cpus_per_worker, max_restarts=0, runtime_env=runtime_env
        )
        self._init_args = (spec,)
        self._inputs = {
            reward_name(f): reward_inputs(f, fns[reward_name(f)]) for f in spec.reward_funcs
        }
        # Built-ins run in the driver when config.inline_builtins (see RewardPoolConfig).
        inline = {reward_name(f) for f in spec.reward_funcs if spec.is_inline(f)}
        self._inline_fns = {n: fns[n] for n in self.names if n in inline}
        self._remote_names = tuple(n for n in self.names if n not in inline)
        self._actors: list[Any] = [None] * config.num_workers
        self._live = config.num_workers
        self._stats: Counter[str] = Counter()
        self._closed = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="reward-pool", daemon=True
        )
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self._start(), self._loop).result()
        except BaseException:
            self.close()
            raise

    # ---- public interface -------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(
                "this reward scorer is closed; build a new one with make_scorer(...)"
            )

    def score(self, prompts: list, completions: list, columns: dict[str, list]) -> RewardBatch:
        self._check_open()
        check_batch(prompts, completions, columns)
        return asyncio.run_coroutine_threadsafe(
            self._score(prompts, completions, columns), self._loop
        ).result()

    async def ascore(
        self, prompts: list, completions: list, columns: dict[str, list]
    ) -> RewardBatch:
        self._check_open()
        check_batch(prompts, completions, columns)
        cf = asyncio.run_coroutine_threadsafe(
            self._score(prompts, completions, columns), self._loop
        )
        return await asyncio.wrap_future(cf)

    def stats(self) -> dict[str, int]:
        """Counters since start: calls, items, timeouts, worker_deaths, restarts, retries."""
        return dict(self._stats)

    def close(self) -> None:
        """Stop the dispatchers and actors; shut Ray down only if this scorer started it."""
        if self._closed:
            return
        self._closed = True
        if self._loop.is_running():
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(timeout=30)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=30)
        import ray

        for actor in self._actors:
            if actor is not None:
                ray.kill(actor, no_restart=True)
        self._actors = [None] * len(self._actors)
        if self._owns_ray and ray.is_initialized():
            ray.shutdown()

    def __enter__(self) -> RayScorer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- inside the pool's loop -------------------------------------------------------------
    async def _start(self) -> None:
        self._pending: deque[Chunk] = deque()
        self._cond = asyncio.Condition()
        self._closing = False
        self._tasks: list[asyncio.Task] = []
        self._background: set[asyncio.Future] = set()
        results = await asyncio.gather(
            *(self._spawn(i) for i in range(len(self._actors))), return_exceptions=True
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise RuntimeError(
                f"reward pool: {len(errors)} of {len(results)} actors did not start: {errors[0]!r}. Check that "
                "the cluster has num_workers * num_cpus_per_worker free CPUs and that the rewards package and "
                "plugin modules import on the workers (rewards.runtime_env)."
            )
        self._tasks = [asyncio.create_task(self._dispatch(i)) for i in range(len(self._actors))]

    async def _shutdown(self) -> None:
        async with self._cond:
            self._closing = True
            self._cond.notify_all()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._fail_pending("the reward pool was closed")

    async def _spawn(self, slot: int) -> None:
        actor = self._actor_cls.remote(*self._init_args)
        try:
            await asyncio.wait_for(
                asyncio.wrap_future(actor.ping.remote().future()), self.config.actor_start_timeout_s
            )
        except BaseException:
            self._kill(actor)
            raise
        self._actors[slot] = actor

    def _kill(self, actor: Any) -> None:
        import ray

        try:
            ray.kill(actor, no_restart=True)
        except Exception as e:  # already gone: nothing to release, but say so
            log.debug("reward pool: kill of a reward actor failed: %r", e)

    async def _dispatch(self, slot: int) -> None:
        spawn_failures = 0
        while True:
            if self._actors[slot] is None:
                try:
                    await self._spawn(slot)
                    self._stats["restarts"] += 1
                    spawn_failures = 0
                except Exception as e:
                    spawn_failures += 1
                    log.error(
                        "reward pool: replacement actor %d failed to start (%d/%d): %r",
                        slot,
                        spawn_failures,
                        _SPAWN_ATTEMPTS,
                        e,
                    )
                    if spawn_failures >= _SPAWN_ATTEMPTS:
                        self._live -= 1
                        if self._live == 0:
                            self._fail_pending(f"no reward actor could be restarted ({e!r})")
                        return
                    await asyncio.sleep(
                        min(10.0, 2.0**spawn_failures)
                    )  # back-off before respawning
                    continue
            batch = await self._take()
            if batch is None:
                return
            await self._execute(slot, batch)

    async def _take(self) -> list[Chunk] | None:
        """Wait for work, then take queued pieces that fit in one call (same rewards and columns)."""
        cfg = self.config
        async with self._cond:
            while True:
                await self._cond.wait_for(lambda: self._pending or self._closing)
                if self._closing:
                    return None
                # Take a fair share of the queue, not all of it: the other actors free up soon
                # and should get the rest (one actor with 240 items while the other idles would
                # serialise a burst of groups).
                queued = sum(c.n for c in self._pending if not c.future.done())
                share = math.ceil(queued / max(1, self._live))
                limit = min(cfg.max_batch_size, max(cfg.min_batch_size, share))
                first = self._pending.popleft()
                if not first.future.done():  # a cancelled caller's pieces are dropped
                    break
            batch, total = [first], first.n
            while self._pending:
                nxt = self._pending[0]
                if nxt.future.done():
                    self._pending.popleft()
                    continue
                if (
                    nxt.names != first.names
                    or nxt.columns.keys() != first.columns.keys()
                    or total + nxt.n > limit
                ):
                    break
                batch.append(self._pending.popleft())
                total += nxt.n
            return batch

    async def _execute(self, slot: int, batch: list[Chunk]) -> None:
        import ray

        names = batch[0].names
        completions = [x for c in batch for x in c.completions]
        # Ship only what these rewards read (plus `id` for failure samples): transfer to the
        # actors is most of the pool's overhead for cheap rewards.
        needed = [self._inputs[n] for n in names]
        keep = None if any(x is None for x in needed) else frozenset().union(*needed) | {"id"}
        if keep is None or "prompts" in keep:
            prompts = [p for c in batch for p in c.prompts]
        else:
            prompts = [None] * len(completions)
        columns = {
            k: [v for c in batch for v in c.columns[k]]
            for k in batch[0].columns
            if keep is None or k in keep
        }
        actor = self._actors[slot]
        self._stats["calls"] += 1
        self._stats["items"] += len(completions)
        try:
            ref = actor.score.remote(list(names), prompts, completions, columns)
            results: dict[str, FuncResult] = await asyncio.wait_for(
                asyncio.wrap_future(ref.future()), self.config.timeout_s
            )
        except asyncio.TimeoutError:
            self._stats["timeouts"] += 1
            reason = f"the reward call did not finish within timeout_s={self.config.timeout_s}s (worker killed)"
            self._replace(slot, actor)
        except ray.exceptions.RayActorError as e:
            self._stats["worker_deaths"] += 1
            reason = f"the reward worker died ({type(e).__name__}); it was replaced"
            self._replace(slot, actor)
        except asyncio.CancelledError:  # close() while in flight: answer the callers, then stop
            for chunk in batch:
                self._give_up(chunk, "the reward pool was closed during the call")
            raise
        except Exception as e:  # e.g. inputs Ray cannot serialise
            reason = f"the reward call failed: {type(e).__name__}: {e!s:.300}"
        else:
            offset = 0
            for chunk in batch:
                part = {}
                for name, r in results.items():
                    idx = [i - offset for i in r.failed_idx if offset <= i < offset + chunk.n]
                    part[name] = FuncResult(
                        r.values[offset : offset + chunk.n], idx, r.error if idx else None
                    )
                offset += chunk.n
                if not chunk.future.done():
                    chunk.future.set_result(part)
            return
        log.warning(
            "reward pool: call with rewards %s on %d items failed: %s",
            list(names),
            len(completions),
            reason,
        )
        async with self._cond:
            for chunk in reversed(batch):
                self._on_failure(chunk, reason)
            self._cond.notify_all()

    def _replace(self, slot: int, actor: Any) -> None:
        self._kill(actor)
        self._actors[slot] = None  # the dispatcher starts a new actor before its next call

    def _on_failure(self, chunk: Chunk, reason: str) -> None:
        """Requeue a failed piece (per reward, at the front) or give up on it with None."""
        if chunk.future.done():
            return
        if len(chunk.names) > 1:  # isolate: each reward alone, so the innocent ones still score
            subs = [
                Chunk(
                    (name,),
                    chunk.prompts,
                    chunk.completions,
                    chunk.columns,
                    self._loop.create_future(),
                    max(0, chunk.retries_left - 1),
                    [reason],
                )
                for name in chunk.names
            ]
            self._pending.extendleft(reversed(subs))
            self._stats["retries"] += len(subs)

            async def gather() -> None:
                parts = await asyncio.gather(*(s.future for s in subs))
                if not chunk.future.done():
                    chunk.future.set_result({k: v for p in parts for k, v in p.items()})

            task = asyncio.ensure_future(gather())
            self._background.add(task)  # keep a reference until done (the loop holds weak ones)
            task.add_done_callback(self._background.discard)
            return
        if chunk.retries_left > 0:
            chunk.retries_left -= 1
            chunk.failures.append(reason)
            self._pending.appendleft(chunk)
            self._stats["retries"] += 1
            return
        self._give_up(chunk, reason)

    def _give_up(self, chunk: Chunk, reason: str) -> None:
        """Resolve a piece with None for every item of each of its rewards (counted as failures)."""
        if chunk.future.done():
            return
        sample = describe_item(chunk.completions, chunk.columns, 0)
        chunk.future.set_result(
            {
                n: FuncResult(
                    [None] * chunk.n,
                    list(range(chunk.n)),
                    f"reward {n!r}: {reason}; sample {sample}",
                )
                for n in chunk.names
            }
        )

    def _fail_pending(self, reason: str) -> None:
        while self._pending:
            self._give_up(self._pending.popleft(), reason)

    async def _score(
        self, prompts: list, completions: list, columns: dict[str, list]
    ) -> RewardBatch:
        n = len(completions)
        if n == 0:
            return RewardBatch([], {k: [] for k in self.names}, dict.fromkeys(self.names, 0))
        inline = None
        if self._inline_fns:  # in a thread, overlapping the actor calls
            inline = asyncio.ensure_future(
                asyncio.to_thread(
                    run_rewards,
                    self._inline_fns,
                    list(self._inline_fns),
                    prompts,
                    completions,
                    columns,
                )
            )
        results: dict[str, FuncResult] = {}
        if self._remote_names:
            results.update(await self._score_remote(prompts, completions, columns))
        if inline is not None:
            results.update(await inline)
        return build_batch(self.names, self.weights, results, completions)

    async def _score_remote(
        self, prompts: list, completions: list, columns: dict[str, list]
    ) -> dict[str, FuncResult]:
        n = len(completions)
        cfg = self.config
        pieces = max(
            math.ceil(n / cfg.max_batch_size), min(cfg.num_workers, n // cfg.min_batch_size), 1
        )
        ranges = split_ranges(n, pieces)
        chunks = [
            Chunk(
                self._remote_names,
                list(prompts[a:b]),
                list(completions[a:b]),
                {k: list(v[a:b]) for k, v in columns.items()},
                self._loop.create_future(),
                cfg.max_retries,
            )
            for a, b in ranges
        ]
        async with self._cond:
            self._pending.extend(chunks)
            if self._live == 0:
                self._fail_pending("no reward actor is alive")
            else:
                self._cond.notify_all()
        try:
            parts = await asyncio.gather(*(c.future for c in chunks))
        except asyncio.CancelledError:
            for c in chunks:
                c.future.cancel()
            raise
        return merge_results(self._remote_names, list(parts), [b - a for a, b in ranges])
