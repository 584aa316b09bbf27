"""Trainer-side access to sampler replicas: grouped generation over N replicas, weight pushes.

Owns: `SamplerClient` (async; least-outstanding-work placement, re-runs a request on another
replica when one dies, health/version polling, admin requests) and the result dataclasses.
Does not know: GRPO, rewards, the weight transport (`sampler/weights/`: its pushers use this
client's `health` and `admin_post`; the trainer imports them from `sampler.weights.sender`).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

log = logging.getLogger(__name__)
_RETRYABLE_STATUS = {500, 502, 503, 504}
_DOWN_SECONDS = 5.0  # how long a replica that failed is avoided when others are available


class SamplerUnavailable(RuntimeError):
    """No replica could serve a request (each one's error is in the message)."""


class SamplerRequestError(ValueError):
    """A replica rejected the request itself (4xx): retrying elsewhere would not help."""


@dataclass
class SamplingSpec:
    """Per-request sampling settings (TRL names)."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop_token_ids: list[int] | None = None  # besides eos


@dataclass
class CompletionResult:
    token_ids: list[int]
    logprobs: list[float]
    finish_reason: str
    text: str
    # (version, index of its first token) per span, oldest first: more than one when weights
    # were updated while this completion was generated (sampler.update_mode=inflight)
    versions: list[tuple[int, int]] = field(default_factory=list)

    @classmethod
    def from_json(cls, c: dict) -> CompletionResult:
        spans = [(int(v["version"]), int(v["start"])) for v in c.get("versions", [])]
        return cls(c["token_ids"], c["logprobs"], c["finish_reason"], c["text"], spans)


@dataclass
class GroupResult:
    prompt_token_ids: list[int]
    completions: list[CompletionResult]
    policy_version: int
    replica: str


def split_evenly(n_items: int, n_parts: int) -> list[tuple[int, int]]:
    """[start, end) ranges covering n_items in at most n_parts near-equal consecutive chunks."""
    if n_items <= 0:
        return []
    size = math.ceil(n_items / max(1, min(n_parts, n_items)))
    return [(i, min(i + size, n_items)) for i in range(0, n_items, size)]


class SamplerClient:
    """Async client of N sampler replicas."""

    def __init__(
        self,
        urls: list[str],
        api_key: str | None = None,
        admin_key: str | None = None,
        request_timeout_s: float = 600,
        max_retries: int = 3,
    ) -> None:
        if not urls:
            raise ValueError("SamplerClient needs at least one replica URL")
        self.api_key = api_key
        self.admin_key = admin_key
        self.max_retries = max_retries
        self.request_timeout_s = request_timeout_s
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(request_timeout_s, connect=10.0),
            limits=httpx.Limits(max_connections=256, max_keepalive_connections=64),
        )
        self._outstanding: dict[str, float] = {}
        self._down_until: dict[str, float] = {}
        self.urls: list[str] = []
        self.set_urls(urls)

    def set_urls(self, urls: list[str]) -> None:
        self.urls = [u.rstrip("/") for u in urls]
        for u in self.urls:
            self._outstanding.setdefault(u, 0.0)

    def _headers(self, admin: bool = False) -> dict[str, str]:
        key = self.admin_key if admin else self.api_key
        return {"Authorization": f"Bearer {key}"} if key else {}

    def _pick(self, exclude: set[str]) -> str | None:
        """Least outstanding work among replicas not tried yet; replicas that failed recently
        come last."""
        now = time.monotonic()
        candidates = [u for u in self.urls if u not in exclude]
        if not candidates:
            return None
        return min(
            candidates,
            key=lambda u: (self._down_until.get(u, 0) > now, self._outstanding.get(u, 0)),
        )

    # ------------------------------------------------------------------ generation
    async def generate(
        self, prompts: list[list[int]], n: int, spec: SamplingSpec
    ) -> list[GroupResult]:
        """One GroupResult per prompt, same order. Prompts are split over the replicas."""
        chunks = split_evenly(len(prompts), len(self.urls))
        parts = await asyncio.gather(
            *(self._generate_chunk(prompts[a:b], n, spec) for a, b in chunks)
        )
        return [g for part in parts for g in part]

    async def _generate_chunk(
        self, prompts: list[list[int]], n: int, spec: SamplingSpec
    ) -> list[GroupResult]:
        body: dict[str, Any] = {
            "prompts": prompts,
            "n": n,
            "max_tokens": spec.max_tokens,
            "temperature": spec.temperature,
            "top_p": spec.top_p,
            "top_k": spec.top_k,
            "min_p": spec.min_p,
            "repetition_penalty": spec.repetition_penalty,
            "seed": spec.seed,
            "stop_token_ids": spec.stop_token_ids,
        }
        cost = float(len(prompts) * n * spec.max_tokens)
        tried: set[str] = set()
        errors: list[str] = []
        for _attempt in range(self.max_retries + 1):
            url = self._pick(tried)
            if url is None:
                break
            tried.add(url)
            self._outstanding[url] = self._outstanding.get(url, 0.0) + cost
            try:
                r = await self._http.post(f"{url}/generate", json=body, headers=self._headers())
            except httpx.HTTPError as e:  # died mid-request, refused, timed out: re-run elsewhere
                errors.append(f"{url}: {type(e).__name__}: {e}")
                self._down_until[url] = time.monotonic() + _DOWN_SECONDS
                log.warning(
                    "replica %s failed (%s); re-running %d prompts elsewhere", url, e, len(prompts)
                )
                continue
            finally:
                self._outstanding[url] -= cost
            if r.status_code in _RETRYABLE_STATUS:
                errors.append(f"{url}: HTTP {r.status_code}: {r.text[:300]}")
                self._down_until[url] = time.monotonic() + _DOWN_SECONDS
                continue
            if r.status_code != 200:
                raise SamplerRequestError(
                    f"{url} rejected the request (HTTP {r.status_code}): {r.text[:500]}"
                )
            self._down_until.pop(url, None)
            return [
                GroupResult(
                    prompt_token_ids=g["prompt_token_ids"],
                    completions=[CompletionResult.from_json(c) for c in g["completions"]],
                    policy_version=g["policy_version"],
                    replica=url,
                )
                for g in r.json()["groups"]
            ]
        raise SamplerUnavailable(
            "no sampler replica could serve the request: " + "; ".join(errors or ["no URLs"])
        )

    # ------------------------------------------------------------------ health / versions
    async def health(
        self, url: str, *, accept_needs_weights: bool = False, timeout_s: float = 5.0
    ) -> dict | None:
        """The replica's /health body when it serves (or, with `accept_needs_weights`, when it
        is alive but waits for a full weight push) within `timeout_s`; None otherwise."""
        try:
            r = await self._http.get(f"{url}/health", timeout=timeout_s)
            body = r.json() if r.status_code in (200, 503) else None
        except (httpx.HTTPError, ValueError):
            return None
        if r.status_code == 200:
            return body
        if accept_needs_weights and isinstance(body, dict):
            return body if body.get("status") == "needs_weights" else None
        return None

    async def wait_healthy(self, timeout_s: float) -> None:
        """Poll /health of every replica until all answer ok; raise naming those that are not."""
        deadline = time.monotonic() + timeout_s
        pending = set(self.urls)
        while pending:
            states = await asyncio.gather(*(self.health(u) for u in sorted(pending)))
            pending = {u for u, s in zip(sorted(pending), states, strict=True) if s is None}
            if not pending:
                return
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"sampler replicas not healthy after {timeout_s:.0f}s: {sorted(pending)}"
                )
            await asyncio.sleep(0.2)  # polling interval of a deadline loop

    async def versions(self, urls: list[str] | None = None) -> dict[str, int]:
        """url -> served policy version, for the replicas (default: those in rotation) that
        answer."""
        urls = self.urls if urls is None else [u.rstrip("/") for u in urls]
        states = await asyncio.gather(*(self.health(u) for u in urls))
        return {u: s["policy_version"] for u, s in zip(urls, states, strict=True) if s is not None}

    async def logprobs(self, url: str, token_ids: list[int], timeout_s: float = 60.0) -> dict:
        """One replica's `/logprobs` body for `token_ids` (logprobs, policy_version, dtype)."""
        r = await self._http.post(
            f"{url}/logprobs",
            json={"token_ids": token_ids},
            headers=self._headers(),
            timeout=timeout_s,
        )
        if r.status_code != 200:
            err = SamplerRequestError if 400 <= r.status_code < 500 else SamplerUnavailable
            raise err(f"{url}/logprobs: HTTP {r.status_code}: {r.text[:500]}")
        return r.json()

    async def admin_post(self, url: str, path: str, body: dict, timeout_s: float) -> dict:
        r = await self._http.post(
            f"{url}{path}", json=body, headers=self._headers(admin=True), timeout=timeout_s
        )
        if r.status_code != 200:
            raise RuntimeError(f"{url}{path}: HTTP {r.status_code}: {r.text[:500]}")
        return r.json()

    async def aclose(self) -> None:
        await self._http.aclose()
