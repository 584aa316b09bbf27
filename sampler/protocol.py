"""Wire models of the sampler's HTTP API (pydantic): the OpenAI subset, the grouped route, admin.

Owns: field names, types, bounds that do not depend on the model or the config (those are checked
in `serving.py`), and the error body shape. Does not know: vLLM, HTTP routing, versions.
OpenAI request models forbid unknown fields so a misspelled parameter is an error, not a silently
ignored setting; the common OpenAI parameters we do not act on are not accepted either.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

POLICY_VERSION_HEADER = "X-Policy-Version"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SamplingFields(_Strict):
    """Sampling settings shared by every generation route (OpenAI names)."""

    temperature: float = Field(1.0, ge=0, le=100, description="0 = greedy.")
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int | None = Field(None, ge=-1, description="-1 or null: no top-k.")
    min_p: float | None = Field(None, ge=0, le=1)
    repetition_penalty: float = Field(1.0, gt=0, le=10)
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    n: int = Field(1, ge=1, description="Completions per prompt (bounded by the server's max_n).")
    ignore_eos: bool = Field(
        False, description="Generate max_tokens tokens whatever the model says (vLLM's extension)."
    )

    @model_validator(mode="after")
    def _greedy_single(self) -> SamplingFields:
        if self.n > 1 and self.temperature == 0:
            raise ValueError(
                "n > 1 needs temperature > 0 (greedy decoding gives n identical completions)"
            )
        return self


# ---------------------------------------------------------------- grouped route (trainer)
class GroupedRequest(SamplingFields):
    """A batch of token-id prompts; `n` completions per prompt."""

    prompts: list[list[int]] = Field(..., min_length=1, description="Token-id prompts.")
    max_tokens: int = Field(..., ge=1, description="Completion length bound.")
    stop_token_ids: list[int] | None = Field(
        None, description="Extra stop tokens (eos always stops)."
    )

    @model_validator(mode="after")
    def _nonempty(self) -> GroupedRequest:
        for i, p in enumerate(self.prompts):
            if not p:
                raise ValueError(f"prompts[{i}] is empty: every prompt needs at least one token")
        return self


class VersionSpan(BaseModel):
    """Tokens from `start` up to the next span's start (or the end) came from weights `version`."""

    version: int
    start: int = Field(ge=0, description="Index of the first completion token of this span.")


class GroupedCompletion(BaseModel):
    token_ids: list[int]
    logprobs: list[float] = Field(description="Sampling logprob of each completion token.")
    finish_reason: str = Field(description="'stop' (eos/stop token) or 'length' (hit max_tokens).")
    text: str
    versions: list[VersionSpan] = Field(
        description="Which weights produced which tokens, oldest first: one span, unless weights "
        "were updated while this completion was generated (sampler.update_mode=inflight)."
    )


class Group(BaseModel):
    prompt_token_ids: list[int]
    completions: list[GroupedCompletion]
    policy_version: int = Field(
        description="The oldest weights version of any token here (what staleness bounds)."
    )


class GroupedResponse(BaseModel):
    groups: list[Group]
    policy_version: int = Field(description="The oldest version of any group here.")


# ---------------------------------------------------------------- OpenAI subset
class StreamOptions(_Strict):
    include_usage: bool = False


class CompletionRequest(SamplingFields):
    model: str | None = None
    prompt: str | list[str] | list[int] | list[list[int]] = Field(
        ..., description="Text, texts, token ids, or lists of token ids."
    )
    max_tokens: int | None = Field(16, ge=1)
    stop: str | list[str] | None = None
    logprobs: int | None = Field(None, ge=0, le=20, description="Top logprobs per token.")
    echo: Literal[False] = Field(False, description="Not supported (must be false).")
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None


class ChatMessage(_Strict):
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str
    name: str | None = None


class ChatRequest(SamplingFields):
    model: str | None = None
    messages: list[ChatMessage] = Field(..., min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None

    @property
    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class LogprobsRequest(_Strict):
    """Score a token sequence: the logprob of each token given the ones before it."""

    token_ids: list[int] = Field(
        ..., min_length=2, description="Token ids; the first one is context only."
    )


class LogprobsResponse(BaseModel):
    logprobs: list[float] = Field(
        description="logprob of token_ids[i] given token_ids[:i], for i = 1 .. len-1 (raw model "
        "logprobs: no temperature or other sampling processing)."
    )
    policy_version: int
    dtype: str = Field(description="The engine's model dtype, e.g. 'bfloat16'.")


# ---------------------------------------------------------------- admin
class GlooUpdateRequest(_Strict):
    """Join the trainer's process group and receive one bucketed update."""

    master_addr: str = Field(
        ..., min_length=1, description="Trainer rank 0's address (TCPStore host)."
    )
    master_port: int = Field(..., ge=1, le=65535)
    backend: Literal["gloo", "nccl"] = "gloo"
    version: int | None = Field(None, ge=0, description="New version; default: current + 1.")
    reset_version: bool = Field(
        False,
        description="A new trainer session takes over (a resume, a restarted trainer): accept a "
        "version that is not newer than the served one. Without it such a version gets 409.",
    )
    timeout_s: float | None = Field(None, gt=0, le=3600)
    connect_timeout_s: float | None = Field(
        None,
        gt=0,
        le=3600,
        description="Limit on reaching the trainer's store (default timeout_s).",
    )
    session: str = Field(
        ...,
        min_length=32,
        max_length=64,
        description="The trainer's secret id of the group (kept across updates): the group's keys "
        "live under it in the trainer's store, so only a holder of the admin key can join.",
    )
    new_group: bool = Field(True, description="Join a new group (else reuse the session's group).")


class PathUpdateRequest(_Strict):
    """Reload every weight from a folder of safetensors files readable by this replica."""

    path: str = Field(..., min_length=1)
    version: int | None = Field(None, ge=0, description="New version; default: current + 1.")
    reset_version: bool = Field(
        False,
        description="A new trainer session takes over (a resume, a restarted trainer): accept a "
        "version that is not newer than the served one. Without it such a version gets 409.",
    )


class UpdateResponse(BaseModel):
    policy_version: int
    seconds: float
    stats: dict[str, float]


class HealthResponse(BaseModel):
    status: Literal["ok", "needs_weights"] = Field(
        description="'ok' (HTTP 200): serving. 'needs_weights' (HTTP 503): the engine is alive but "
        "a weight update failed half-way; it serves again after the next full push."
    )
    detail: str | None = Field(None, description="Why the replica is not serving.")
    policy_version: int
    model: str
    updating: bool
    instance_id: str = Field(
        description="Random per server process: changes when a replica restarts."
    )
    workers: int = Field(
        1,
        ge=1,
        description="vLLM workers of this replica (tensor x pipeline parallel): each one is a "
        "receiver of the trainer's weight-sync group.",
    )


def error_body(message: str, *, type_: str, param: str | None = None, code: int) -> dict:
    """OpenAI-style error body (the openai client raises with this message)."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}
