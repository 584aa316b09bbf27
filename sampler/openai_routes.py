"""The OpenAI-compatible part of the API: request -> engine call -> OpenAI-shaped JSON / SSE.

Owns: the OpenAI response and stream-chunk shapes (with an extra `policy_version` field the
openai client tolerates), prompt normalisation, logprob formatting. Does not know: auth, the
app (see `api.py`), versions or updates (see `serving.py`).
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from sampler.protocol import ChatRequest, CompletionRequest
from sampler.serving import RequestError, SamplerService, aiter_queue
from sampler.updates import token_versions

log = logging.getLogger(__name__)


def normalise_prompts(svc: SamplerService, prompt: Any) -> list[list[int]]:
    """OpenAI's four prompt forms -> token-id lists."""
    if isinstance(prompt, str):
        return [svc.encode(prompt)]
    if not prompt:
        raise RequestError(400, "prompt is empty: give a string, strings, or token ids", "prompt")
    if isinstance(prompt[0], str):
        return [svc.encode(p) for p in prompt]
    if isinstance(prompt[0], int):
        return [list(prompt)]
    return [list(p) for p in prompt]


def _tok(lp: Any, tid: int) -> str:
    return lp.decoded_token if lp.decoded_token is not None else str(tid)


def completion_logprobs(token_ids: Any, logprobs: Any, start_offset: int = 0) -> dict | None:
    if logprobs is None:
        return None
    tokens, token_lps, tops, offsets = [], [], [], []
    offset = start_offset
    for tid, pos in zip(token_ids, logprobs, strict=False):
        chosen = pos[tid]
        text = _tok(chosen, tid)
        tokens.append(text)
        token_lps.append(chosen.logprob)
        tops.append({_tok(lp, t): lp.logprob for t, lp in pos.items()})
        offsets.append(offset)
        offset += len(text)
    return {
        "tokens": tokens,
        "token_logprobs": token_lps,
        "top_logprobs": tops,
        "text_offset": offsets,
    }


def chat_logprobs(token_ids: Any, logprobs: Any, top_n: int) -> dict | None:
    if logprobs is None:
        return None
    content = []
    for tid, pos in zip(token_ids, logprobs, strict=False):
        chosen = pos[tid]
        ranked = sorted(pos.items(), key=lambda kv: kv[1].rank or 0)[:top_n]
        content.append(
            {
                "token": _tok(chosen, tid),
                "logprob": chosen.logprob,
                "bytes": list(_tok(chosen, tid).encode()),
                "top_logprobs": [
                    {
                        "token": _tok(lp, t),
                        "logprob": lp.logprob,
                        "bytes": list(_tok(lp, t).encode()),
                    }
                    for t, lp in ranked
                ],
            }
        )
    return {"content": content}


def _usage(prompts: list[list[int]], completion_tokens: int) -> dict:
    """OpenAI's usage block: each prompt counts once, whatever `n`."""
    p = sum(len(x) for x in prompts)
    return {
        "prompt_tokens": p,
        "completion_tokens": completion_tokens,
        "total_tokens": p + completion_tokens,
    }


def _sse(obj: Any) -> str:
    return f"data: {json.dumps(obj)}\n\n"


class OpenAIHandler:
    """Completions and chat completions on top of a `SamplerService`."""

    def __init__(self, svc: SamplerService) -> None:
        self.svc = svc

    def _check_model(self, model: str | None) -> None:
        if model is not None and model != self.svc.model_name:
            raise RequestError(
                404, f"model {model!r} is not served here; use {self.svc.model_name!r}", "model"
            )

    # ------------------------------------------------------------------ completions
    def prepare_completion(self, req: CompletionRequest) -> tuple[list[list[int]], Any]:
        self._check_model(req.model)
        prompts = normalise_prompts(self.svc, req.prompt)
        max_tokens = req.max_tokens or 16
        self.svc.check_sampling(req, len(prompts), max_tokens)
        for i, p in enumerate(prompts):
            self.svc.check_prompt(p, max_tokens, "prompt" if len(prompts) == 1 else f"prompt[{i}]")
        params = self.svc.sampling_params(
            req, max_tokens, logprobs=req.logprobs, stream=req.stream, stop=req.stop
        )
        return prompts, params

    async def completion(self, req: CompletionRequest) -> tuple[dict, int]:
        prompts, params = self.prepare_completion(req)
        t0 = time.perf_counter()
        outs, version = await self.svc.generate_many(prompts, params)
        choices, n_tok = [], 0
        for i, out in enumerate(outs):
            for c in sorted(out.outputs, key=lambda c: c.index):
                n_tok += len(c.token_ids)
                choices.append(
                    {
                        "index": i * req.n + c.index,
                        "text": c.text,
                        "logprobs": completion_logprobs(c.token_ids, c.logprobs)
                        if req.logprobs is not None
                        else None,
                        "finish_reason": c.finish_reason,
                    }
                )
        self.svc.metrics.observe_request(
            "completions", time.perf_counter() - t0, sum(map(len, prompts)), n_tok
        )
        return self._body("cmpl", "text_completion", choices, _usage(prompts, n_tok), version)

    def _body(
        self, id_prefix: str, kind: str, choices: list, usage: dict, version: int
    ) -> tuple[dict, int]:
        """The OpenAI response envelope, plus the policy version that produced it."""
        body = {
            "id": f"{id_prefix}-{uuid.uuid4().hex}",
            "object": kind,
            "created": int(time.time()),
            "model": self.svc.model_name,
            "choices": choices,
            "usage": usage,
            "policy_version": version,
        }
        return body, version

    # ------------------------------------------------------------------ chat
    def prepare_chat(self, req: ChatRequest) -> tuple[list[list[int]], Any]:
        self._check_model(req.model)
        try:
            prompt = self.svc.chat_prompt([m.model_dump(exclude_none=True) for m in req.messages])
        except Exception as e:  # a template that rejects the conversation is the client's input
            raise RequestError(
                400, f"messages could not be rendered with the chat template: {e}", "messages"
            ) from e
        room = self.svc.max_model_len - len(prompt)
        max_tokens = req.token_limit or max(1, min(self.svc.limits.max_tokens, room))
        self.svc.check_sampling(req, 1, max_tokens)
        self.svc.check_prompt(prompt, max_tokens, "messages")
        top = req.top_logprobs or 0
        params = self.svc.sampling_params(
            req,
            max_tokens,
            logprobs=top if req.logprobs else None,
            stream=req.stream,
            stop=req.stop,
        )
        return [prompt], params

    async def chat(self, req: ChatRequest) -> tuple[dict, int]:
        prompts, params = self.prepare_chat(req)
        t0 = time.perf_counter()
        outs, version = await self.svc.generate_many(prompts, params)
        choices, n_tok = [], 0
        for c in sorted(outs[0].outputs, key=lambda c: c.index):
            n_tok += len(c.token_ids)
            choices.append(
                {
                    "index": c.index,
                    "message": {"role": "assistant", "content": c.text},
                    "logprobs": chat_logprobs(c.token_ids, c.logprobs, req.top_logprobs or 0)
                    if req.logprobs
                    else None,
                    "finish_reason": c.finish_reason,
                }
            )
        self.svc.metrics.observe_request("chat", time.perf_counter() - t0, len(prompts[0]), n_tok)
        return self._body("chatcmpl", "chat.completion", choices, _usage(prompts, n_tok), version)

    # ------------------------------------------------------------------ streaming
    def _finished_on(self, c: Any, version: int) -> int | None:
        """A streamed choice's version once it finished (vLLM reports spans only then)."""
        if c.finish_reason is None:
            return None
        spans = token_versions(c, self.svc.initial_version)
        return spans[-1].version if spans else version

    async def stream(self, req: CompletionRequest | ChatRequest) -> tuple[AsyncIterator[str], int]:
        chat = isinstance(req, ChatRequest)
        prompts, params = self.prepare_chat(req) if chat else self.prepare_completion(req)
        version, queue, task = await self.svc.start_stream(prompts, params)
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        created = int(time.time())
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        top = getattr(req, "top_logprobs", None) or 0
        want_lp = bool(req.logprobs) if chat else req.logprobs is not None

        def chunk(choices: list[dict], usage: dict | None = None, at: int | None = None) -> str:
            body = {
                "id": rid,
                "object": "chat.completion.chunk" if chat else "text_completion",
                "created": created,
                "model": self.svc.model_name,
                "choices": choices,
                # the version so far (the header's); a choice's last chunk: the one it finished on
                "policy_version": version if at is None else at,
            }
            if usage is not None:
                body["usage"] = usage
            return _sse(body)

        async def events() -> AsyncIterator[str]:
            sent: dict[int, tuple[int, int]] = {}  # choice index -> (chars sent, tokens sent)
            n_tok = 0
            t0 = time.perf_counter()
            try:
                async for i, out in aiter_queue(queue):
                    for c in out.outputs:
                        idx = i * req.n + c.index
                        piece = _delta(c, idx, sent, chat, want_lp, top)
                        if piece is not None:
                            n_tok += piece[1]
                            yield chunk([piece[0]], at=self._finished_on(c, version))
                if include_usage:
                    yield chunk([], _usage(prompts, n_tok))
                self.svc.metrics.observe_request(
                    "chat" if chat else "completions",
                    time.perf_counter() - t0,
                    sum(map(len, prompts)),
                    n_tok,
                )
            except RequestError as e:
                yield _sse(
                    {"error": {"message": e.message, "type": "server_error", "code": e.status}}
                )
            except Exception:  # the stream has begun: report in-band, never drop silently
                ref = uuid.uuid4().hex[:12]  # the exception's text stays in the server log
                log.exception("stream failed (ref %s)", ref)
                error = {"message": f"generation failed (ref {ref} in the server log)"}
                yield _sse({"error": {**error, "type": "server_error", "code": 500}})
            finally:
                if not task.done():
                    task.cancel()
            yield "data: [DONE]\n\n"

        return events(), version


def _delta(
    c: Any, idx: int, sent: dict[int, tuple[int, int]], chat: bool, want_lp: bool, top: int
) -> tuple[dict, int] | None:
    """The stream choice for completion `c` (choice `idx`) since what `sent` records (chars,
    tokens), and how many new tokens it carries; None when nothing new is there to send.
    Updates `sent`."""
    chars, toks = sent.get(idx, (0, 0))
    new_ids = list(c.token_ids[toks:])
    if not new_ids and not c.finish_reason and idx in sent:
        return None
    text = c.text[chars:]
    lps = c.logprobs[toks:] if (want_lp and c.logprobs is not None) else None
    if chat:
        delta = {"content": text} if idx in sent else {"content": text, "role": "assistant"}
        logprobs = chat_logprobs(new_ids, lps, top) if lps is not None else None
        choice = {"index": idx, "delta": delta, "logprobs": logprobs}
    else:
        logprobs = completion_logprobs(new_ids, lps, chars) if lps is not None else None
        choice = {"index": idx, "text": text, "logprobs": logprobs}
    choice["finish_reason"] = c.finish_reason
    sent[idx] = (len(c.text), len(c.token_ids))
    return choice, len(new_ids)
