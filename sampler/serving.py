"""Serving logic of one sampler replica: generation, policy versions, weight updates, metrics.

Owns: `SamplerService`, which receives a running engine (vLLM `AsyncLLM`) and turns validated
protocol objects into engine calls; the admission gate that makes version labels exact; request
bounds that depend on the model/config; Prometheus metrics. Does not know: HTTP/FastAPI (routes
live in `api.py`), how the engine was built (`engine.py`), the wire format of weight buckets
(`sampler/weights/wire.py`).

Versions: every token is labelled with the weights that produced it (vLLM's per-completion
weight-version spans; how updates keep them exact in either `sampler.update_mode` is in
`updates.py`). The grouped route reports the spans and, per group, the oldest version (what the
trainer's staleness bound applies to); the OpenAI routes report the version a response finished
on. The admission gate (`_enter`/`_exit`) lets a `drain` update wait for, or abort and re-run,
the requests in flight.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from sampler.config import SamplerConfig
from sampler.errors import Preempted, RequestError, client_errors, engine_gone
from sampler.metrics import SamplerMetrics
from sampler.protocol import (
    Group,
    GroupedCompletion,
    GroupedRequest,
    GroupedResponse,
    LogprobsRequest,
    LogprobsResponse,
    SamplingFields,
)
from sampler.streams import LatestOutputs, aiter_queue
from sampler.updates import WeightUpdates, token_versions

__all__ = ["RequestError", "SamplerService", "aiter_queue", "newest_version"]

log = logging.getLogger(__name__)
MAX_RERUNS = 3


class SamplerService(WeightUpdates):
    def __init__(
        self,
        engine: Any,
        cfg: SamplerConfig,
        model_name: str,
        *,
        initial_version: int = 0,
        metrics: SamplerMetrics | None = None,
    ) -> None:
        self.engine = engine
        self.cfg = cfg
        self.limits = cfg.limits
        self.model_name = model_name
        mc = engine.model_config
        self.max_model_len: int = int(mc.max_model_len)
        self.vocab_size: int = int(mc.get_vocab_size())
        self.tokenizer = engine.get_tokenizer()
        self.version = initial_version
        self.instance_id = uuid.uuid4().hex
        # Receivers of a weight push: vLLM runs one worker per TP x PP rank.
        self.workers: int = int(engine.vllm_config.parallel_config.world_size)
        self.updating = False
        self.broken: str | None = None
        self.metrics = metrics or SamplerMetrics()
        self.metrics.policy_version.set(initial_version)
        self.metrics.queue_depth.set_function(self._queue_depth)
        self._inflight = 0
        self._engine_ids: set[str] = set()
        self._preempted: set[str] = set()
        self._open = asyncio.Event()
        self._open.set()
        self._drained = asyncio.Event()
        self._drained.set()
        # Public (/v1/*) work: bounded (limits.max_public_inflight), behind the trainer's in
        # vLLM's queue, and aborted after a short grace when an update comes (see `_drain`).
        self._public_inflight = 0
        self._public_ids: set[str] = set()
        self._update_lock = asyncio.Lock()
        self.initial_version = initial_version
        # Prefix-cache namespace of new requests (inflight updates bump it; see updates.py).
        self.kv_namespace = 0

    # ------------------------------------------------------------------ health / metrics
    def _queue_depth(self) -> float:
        try:
            return float(self.engine.get_num_unfinished_requests())
        except Exception:  # engine gone: the gauge must not break /metrics
            return float(self._inflight)

    async def check_health(self) -> None:
        """Raises RequestError(503) unless the engine can serve."""
        await self.check_engine()
        if self.broken:
            raise RequestError(503, f"replica unhealthy: {self.broken}; push weights again")

    async def check_engine(self) -> None:
        """Raises RequestError(503) unless the engine itself is alive (weights may be broken)."""
        try:
            await self.engine.check_health()
        except Exception as e:
            log.warning("engine health check failed: %s", e)
            raise RequestError(503, "engine is not healthy (see the server log)") from e

    # ------------------------------------------------------------------ admission gate
    def _enter_public(self) -> None:
        """Count one public request in, or 429 beyond the bound (before it waits for anything)."""
        if self._public_inflight >= self.limits.max_public_inflight:
            raise RequestError(
                429,
                f"this replica already runs {self._public_inflight} public requests (limit "
                f"sampler.limits.max_public_inflight={self.limits.max_public_inflight}); retry later",
            )
        self._public_inflight += 1

    def _exit_public(self) -> None:
        self._public_inflight -= 1

    async def _enter(self) -> int:
        while not self._open.is_set():
            await self._open.wait()
        if self.broken:
            raise RequestError(503, f"replica unhealthy: {self.broken}; push weights again")
        self._inflight += 1
        self._drained.clear()
        return self.version

    def _exit(self) -> None:
        self._inflight -= 1
        if self._inflight == 0:
            self._drained.set()

    # ------------------------------------------------------------------ validation
    def check_sampling(self, req: SamplingFields, n_prompts: int, max_tokens: int) -> None:
        lim = self.limits
        if req.n > lim.max_n:
            raise RequestError(
                400, f"n={req.n} exceeds this server's limit max_n={lim.max_n}; lower n", "n"
            )
        if max_tokens > lim.max_tokens:
            raise RequestError(
                400,
                f"max_tokens={max_tokens} exceeds this server's limit max_tokens={lim.max_tokens}; lower it",
                "max_tokens",
            )
        if n_prompts > lim.max_prompts_per_request:
            raise RequestError(
                400,
                f"{n_prompts} prompts exceed this server's limit max_prompts_per_request="
                f"{lim.max_prompts_per_request}; split the batch",
                "prompts",
            )

    def check_prompt(self, ids: list[int], max_tokens: int, param: str) -> None:
        if not ids:
            raise RequestError(400, f"{param} is empty: give at least one token", param)
        limit = self.limits.max_prompt_tokens or self.max_model_len
        if len(ids) > limit:
            which = (
                "this server's limit max_prompt_tokens"
                if self.limits.max_prompt_tokens
                else "the model's context length"
            )
            raise RequestError(400, f"{param} has {len(ids)} tokens; {which} is {limit}", param)
        if len(ids) + max_tokens > self.max_model_len:
            raise RequestError(
                400,
                f"{param} ({len(ids)} tokens) + max_tokens ({max_tokens}) exceeds the model's context "
                f"length {self.max_model_len}; shorten the prompt or lower max_tokens",
                param,
            )
        bad = next((t for t in ids if not 0 <= t < self.vocab_size), None)
        if bad is not None:
            raise RequestError(
                400,
                f"{param} contains token id {bad}, outside the vocabulary [0, {self.vocab_size})",
                param,
            )

    def sampling_params(
        self,
        req: SamplingFields,
        max_tokens: int,
        *,
        logprobs: int | None,
        stream: bool,
        **extra: Any,
    ) -> Any:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        try:
            return self._make_params(
                SamplingParams, RequestOutputKind, req, max_tokens, logprobs, stream, extra
            )
        except client_errors() as e:  # vLLM's own checks (e.g. stop strings)
            raise RequestError(400, f"invalid sampling settings: {e}") from e

    @staticmethod
    def _make_params(
        SamplingParams: Any,
        RequestOutputKind: Any,
        req: SamplingFields,
        max_tokens: int,
        logprobs: int | None,
        stream: bool,
        extra: dict,
    ) -> Any:
        return SamplingParams(
            n=req.n,
            temperature=req.temperature,
            top_p=req.top_p,
            top_k=req.top_k if req.top_k not in (None, 0) else -1,
            min_p=req.min_p or 0.0,
            repetition_penalty=req.repetition_penalty,
            presence_penalty=req.presence_penalty,
            frequency_penalty=req.frequency_penalty,
            seed=req.seed,
            max_tokens=max_tokens,
            logprobs=logprobs,
            ignore_eos=req.ignore_eos,
            # CUMULATIVE lets streams compute deltas for any n; FINAL_ONLY is cheaper otherwise.
            output_kind=RequestOutputKind.CUMULATIVE if stream else RequestOutputKind.FINAL_ONLY,
            **extra,
        )

    # ------------------------------------------------------------------ engine calls
    async def _run(
        self,
        prompt_ids: list[int],
        params: Any,
        on_output: Callable | None = None,
        public: bool = False,
    ) -> Any:
        """One engine request to completion; returns the final RequestOutput."""
        rid = uuid.uuid4().hex
        self._engine_ids.add(rid)
        if public:
            self._public_ids.add(rid)
        final = None
        try:
            prompt: dict[str, Any] = {"prompt_token_ids": prompt_ids}
            if self.cfg.update_mode == "inflight":
                prompt["cache_salt"] = f"weights-{self.kv_namespace}"
            async for out in self.engine.generate(prompt, params, rid, priority=int(public)):
                final = out
                if on_output is not None:
                    await on_output(out)
        except client_errors() as e:  # vLLM's input checks: client input it rejected
            raise RequestError(400, f"the engine rejected the request: {e}") from e
        except engine_gone() as e:  # shutting down or crashed: another replica can serve it
            raise RequestError(
                503,
                "the engine stopped (replica shutting down or failed); retry on another replica",
            ) from e
        finally:
            self._engine_ids.discard(rid)
            self._public_ids.discard(rid)
        preempted = rid in self._preempted
        self._preempted.discard(rid)
        if preempted or final is None or any(c.finish_reason == "abort" for c in final.outputs):
            raise Preempted(rid)
        return final

    async def run_admitted(self, work: Callable[[], Awaitable[Any]]) -> tuple[Any, int]:
        """Run `work` inside the gate; re-run it (new version) if an update preempted it."""
        for _attempt in range(MAX_RERUNS):
            version = await self._enter()
            try:
                return await work(), version
            except Preempted:
                self.metrics.reruns.inc()
                log.info("request preempted by a weight update; re-running on the new weights")
            finally:
                self._exit()
        raise RequestError(
            503, f"request preempted by {MAX_RERUNS} consecutive weight updates; retry"
        )

    # ------------------------------------------------------------------ grouped route
    async def generate_grouped(self, req: GroupedRequest) -> GroupedResponse:
        self.check_sampling(req, len(req.prompts), req.max_tokens)
        for i, p in enumerate(req.prompts):
            self.check_prompt(p, req.max_tokens, f"prompts[{i}]")
        extra = {"stop_token_ids": req.stop_token_ids} if req.stop_token_ids else {}
        params = self.sampling_params(req, req.max_tokens, logprobs=0, stream=False, **extra)
        t0 = time.perf_counter()

        async def work() -> list[Any]:
            return await asyncio.gather(*(self._run(p, params) for p in req.prompts))

        outs, admitted = await self.run_admitted(work)
        groups = []
        n_tokens = 0
        for prompt, out in zip(req.prompts, outs, strict=True):
            comps = []
            for c in sorted(out.outputs, key=lambda c: c.index):
                ids = list(c.token_ids)
                n_tokens += len(ids)
                comps.append(
                    GroupedCompletion(
                        token_ids=ids,
                        logprobs=sampled_logprobs(ids, c.logprobs),
                        finish_reason=c.finish_reason or "length",
                        text=c.text,
                        versions=token_versions(c, self.initial_version),
                    )
                )
            oldest = min((c.versions[0].version for c in comps if c.versions), default=admitted)
            groups.append(Group(prompt_token_ids=prompt, completions=comps, policy_version=oldest))
        self.metrics.observe_request(
            "generate", time.perf_counter() - t0, sum(map(len, req.prompts)), n_tokens
        )
        return GroupedResponse(groups=groups, policy_version=min(g.policy_version for g in groups))

    # ------------------------------------------------------------------ scoring route
    async def score(self, req: LogprobsRequest) -> LogprobsResponse:
        """Raw prompt logprobs of a token sequence, labelled with the version that computed them
        (the trainer's weight probe compares them with its own)."""
        self.check_prompt(req.token_ids, 1, "token_ids")
        from vllm import SamplingParams

        # prompt_logprobs=0: each position's own token only; max_tokens=1 is vLLM's minimum.
        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False)
        t0 = time.perf_counter()

        async def work() -> Any:
            return await self._run(req.token_ids, params)

        out, admitted = await self.run_admitted(work)
        # Prompt logprobs come from the step that made the one output token: its version.
        spans = token_versions(out.outputs[0], self.initial_version)
        version = spans[0].version if spans else admitted
        if out.prompt_logprobs is None:
            raise RuntimeError("engine returned no prompt logprobs although they were requested")
        # position 0 has no context (None); position i holds {token_ids[i]: Logprob, ...}
        lps = sampled_logprobs(req.token_ids[1:], out.prompt_logprobs[1:])
        self.metrics.observe_request("logprobs", time.perf_counter() - t0, len(req.token_ids), 0)
        dtype = str(self.engine.model_config.dtype).removeprefix("torch.")
        return LogprobsResponse(logprobs=lps, policy_version=version, dtype=dtype)

    # ------------------------------------------------------------------ OpenAI helpers
    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text))

    def chat_prompt(self, messages: list[dict]) -> list[int]:
        text = self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    async def generate_many(self, prompts: list[list[int]], params: Any) -> tuple[list[Any], int]:
        """Non-streamed generation of several prompts; returns (outputs, the version they
        finished on)."""

        async def work() -> list[Any]:
            return await asyncio.gather(*(self._run(p, params, public=True) for p in prompts))

        self._enter_public()
        try:
            outs, admitted = await self.run_admitted(work)
        finally:
            self._exit_public()
        return outs, newest_version(outs, self.initial_version, admitted)

    async def start_stream(
        self, prompts: list[list[int]], params: Any
    ) -> tuple[int, LatestOutputs, asyncio.Task]:
        """Start streamed generation. Returns (version, queue of (prompt_index, output) ending
        with None or an Exception, producer task). The producer holds the admission itself, so
        a client that never reads cannot block weight updates beyond max_tokens of work."""
        queue = LatestOutputs()
        admitted: asyncio.Future = asyncio.get_running_loop().create_future()

        self._enter_public()

        async def produce() -> None:
            try:
                version = await self._enter()
            except BaseException as e:
                self._exit_public()
                admitted.set_exception(e)
                return
            admitted.set_result(version)
            try:

                async def one(i: int, p: list[int]) -> None:
                    async def push(out: Any) -> None:
                        queue.put_nowait((i, out))

                    await self._run(p, params, push, public=True)

                await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts)))
                queue.put_nowait(None)
            except Preempted:
                queue.put_nowait(RequestError(503, "stream aborted by a weight update; retry"))
            except Exception as e:  # surfaced to the client as an error event, and logged
                log.exception("stream failed")
                queue.put_nowait(e)
            finally:
                self._exit()
                self._exit_public()

        task = asyncio.create_task(produce())
        version = await admitted
        return version, queue, task

    async def _preempt(self, ids: list[str]) -> None:
        """Abort engine requests for a weight update; `_run` sees them as preempted (re-run)."""
        self._preempted.update(ids)
        await self.engine.abort(ids)


def newest_version(outputs: list[Any], initial_version: int, default: int) -> int:
    """The version of the newest token in vLLM RequestOutputs (what a response finished on)."""
    versions = [
        spans[-1].version
        for out in outputs
        for c in out.outputs
        if (spans := token_versions(c, initial_version))
    ]
    return max(versions, default=default)


def sampled_logprobs(token_ids: list[int], logprobs: Any) -> list[float]:
    """The logprob of each given token (sampled, or of the prompt) from vLLM's per-position
    {token_id: Logprob} dicts."""
    if logprobs is None:
        raise RuntimeError("engine returned no logprobs although logprobs=0 was requested")
    return [float(pos[tok].logprob) for tok, pos in zip(token_ids, logprobs, strict=True)]
