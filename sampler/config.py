"""Configuration of the sampler service (the `sampler:` section of a run YAML, and `python -m sampler`)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

# The bearer tokens among SamplerConfig's fields: never echoed in errors, files or MLflow.
SECRET_FIELDS = ("api_key", "admin_key", "trainer_key")


class SamplerLimits(BaseModel):
    """Per-request bounds; a request over a bound gets a 4xx that names it."""

    model_config = ConfigDict(extra="forbid")

    max_n: int = Field(
        64, ge=1, description="Largest `n` (completions per prompt) one request may ask for."
    )
    max_tokens: int = Field(8192, ge=1, description="Largest `max_tokens` one request may ask for.")
    max_prompts_per_request: int = Field(
        512, ge=1, description="Largest batch of prompts on the grouped route."
    )
    max_prompt_tokens: int | None = Field(
        None, ge=1, description="Largest prompt in tokens; default: the model's context length."
    )
    max_body_bytes: int = Field(16 << 20, ge=1024, description="Largest request body in bytes.")
    max_public_inflight: int = Field(
        16,
        ge=1,
        description="Requests on the public OpenAI routes (/v1/*) a replica runs at once; more get "
        "429 (retry later). The trainer's routes have no such bound: a person trying the live "
        "policy must not be able to fill the engine the trainer needs.",
    )


class ReplicaWatchdog(BaseModel):
    """How the trainer tells a hung replica (process alive, not answering) from a busy one, and
    how fast it restarts one that keeps failing. Launched replicas only: external servers are
    their operator's to restart."""

    model_config = ConfigDict(extra="forbid")

    interval_s: float = Field(
        10, ge=0, description="Seconds between health checks of each replica; 0 turns them off."
    )
    timeout_s: float = Field(
        10, gt=0, description="A /health answer slower than this counts as a failed check."
    )
    failures: int = Field(
        3,
        ge=1,
        description="Failed checks in a row that declare a replica hung: it is killed (its "
        "in-flight requests re-run on the others) and restarted between steps.",
    )
    backoff_s: float = Field(
        10,
        ge=0,
        description="Delay before restarting a replica that failed again soon after a restart; "
        "doubles with each such failure in a row.",
    )
    backoff_max_s: float = Field(
        300,
        ge=0,
        description="Longest restart delay; a replica healthy this long after a restart starts "
        "a new streak.",
    )


class SamplerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    replicas: int = Field(
        1, ge=1, description="Sampler replicas (each one vLLM engine behind its own HTTP server)."
    )
    external_urls: list[str] | None = Field(
        None,
        description="Train against sampler servers that are already running (`python -m sampler`, "
        "same model) instead of launching replicas; needs admin_key (or SAMPLER_ADMIN_KEY). The "
        "run fails before training if any of them is not healthy within startup_timeout_s.",
    )
    host: str = Field(
        "127.0.0.1", description="Bind address. Anything but loopback requires api_key."
    )
    port: int = Field(
        0,
        ge=0,
        le=65535,
        description="First replica's port (replica i uses port+i); 0 picks free ports.",
    )
    api_key: str | None = Field(
        None, description="Bearer token for generation routes; null disables auth (loopback only)."
    )
    admin_key: str | None = Field(
        None,
        description="Bearer token for admin (weight update) routes; generated per run if null.",
    )
    trainer_key: str | None = Field(
        None,
        description="Bearer token for the trainer's routes (/generate, /logprobs); generated per "
        "run for launched replicas (never written to disk). A standalone server without one "
        "accepts api_key there. With external_urls: the servers' trainer key (or "
        "SAMPLER_TRAINER_KEY); default api_key.",
    )
    tensor_parallel_size: int = Field(
        1, ge=1, description="GPUs per replica (vLLM tensor parallelism)."
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="vLLM model dtype."
    )
    max_model_len: int | None = Field(
        None, ge=16, description="Context length vLLM serves; default: the model's."
    )
    gpu_memory_utilization: float = Field(
        0.9, gt=0, le=1, description="vLLM's GPU memory fraction (GPU only)."
    )
    kv_cache_memory_bytes: int | None = Field(
        None,
        ge=1 << 20,
        description="KV cache size in bytes; on CPU defaults to 256 MiB (else vLLM takes 92% of RAM).",
    )
    max_num_seqs: int = Field(256, ge=1, description="vLLM's max concurrent sequences per replica.")
    enforce_eager: bool = Field(
        False, description="Disable CUDA graphs / torch.compile (forced on CPU)."
    )
    enable_prefix_caching: bool = Field(
        True, description="vLLM prefix caching (reset on every weight update)."
    )
    seed: int = Field(0, description="Engine seed.")
    limits: SamplerLimits = Field(default_factory=SamplerLimits)
    watchdog: ReplicaWatchdog = Field(default_factory=ReplicaWatchdog)
    startup_timeout_s: float = Field(
        600, gt=0, description="How long to wait for a replica to become healthy."
    )
    request_timeout_s: float = Field(
        600, gt=0, description="Client-side timeout of one grouped request."
    )
    served_model_name: str | None = Field(
        None,
        description="Model name on the OpenAI routes (`model` field); default: the model folder's name.",
    )
    logprobs_mode: Literal["processed_logprobs", "raw_logprobs"] = Field(
        "processed_logprobs",
        description="Which logprobs vLLM returns: after temperature/top-k/top-p (TRL's choice: unbiased "
        "importance sampling) or of the raw model logits.",
    )
    public_drain_timeout_s: float = Field(
        1.0,
        gt=0,
        description="How long a weight update waits for public (/v1/*) requests before it aborts "
        "them: non-streamed ones re-run on the new weights (labelled with it), streams end with a "
        "503 error event. The trainer's requests get update_drain_timeout_s.",
    )
    update_mode: Literal["drain", "inflight"] = Field(
        "inflight",
        description="How a weight update treats requests in flight. 'inflight' (default): it "
        "freezes them, loads, and lets them continue on the new weights, keeping their KV cache; "
        "a completion then spans versions and reports which tokens came from which (`versions` "
        "on the grouped route; the trainer bounds staleness by the oldest). 'drain': it waits "
        "for them to finish on the old weights (aborting those left after "
        "update_drain_timeout_s, which re-run on the new ones), so every completion comes from "
        "one version, but every update waits for the longest completion in flight. Default by "
        "bench/bench_inflight.py (docs/benchmarks.md section 8): on the embedded default an "
        "update that met running requests waited 0.25-0.27 s for them in drain vs a 0.04-0.08 s "
        "pause, and the reward per generating version was the same over 3 seeds with ~30% of "
        "completions spanning two versions; no throughput difference was measurable on 2 CPU "
        "cores. See docs/sampler.md.",
    )
    update_drain_timeout_s: float = Field(
        60,
        gt=0,
        description="How long a weight update waits for in-flight requests to finish on the old "
        "weights; requests still running then are aborted and re-run on the new weights (and "
        "labelled with the new version).",
    )
    cpu_weight_layout: Literal["packed", "plain"] = Field(
        "packed",
        description="CPU only (ignored on GPU). 'packed': vLLM's oneDNN-prepacked weights (fastest "
        "generation; every update rebuilds and re-packs each layer). 'plain': linear weights stay "
        "ordinary tensors and updates land directly in them (~10x cheaper updates, generation "
        "~8-18% slower). On a CPU-bound box the pipeline is faster packed (docs/benchmarks.md).",
    )
    weight_sync_buffers: int = Field(
        2,
        ge=2,
        description="Receive buffers of one bucket each that a worker holds at most during a "
        "weight update (one being loaded, one being received): the receiver's extra memory is "
        "this times pipeline.weight_sync_bucket_mb.",
    )
    weight_update_timeout_s: float = Field(
        300,
        gt=0,
        description="Timeout of one weight transfer (process-group rendezvous and each broadcast).",
    )
