"""Prometheus metrics of one sampler replica.

Owns: metric names and labels, on a registry of its own (several apps can live in one process,
e.g. in tests). Does not know: HTTP, the engine.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
_UPDATE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class SamplerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "sampler_requests",
            "HTTP requests by route and status code",
            ["route", "status"],
            registry=r,
        )
        self.client_disconnects = Counter(
            "sampler_client_disconnects",
            "Non-streamed requests whose client left before the answer (their engine work aborted)",
            registry=r,
        )
        self.body_bytes = Counter(
            "sampler_request_body_bytes",
            "Request body bytes read by route (a request refused on its headers reads none)",
            ["route"],
            registry=r,
        )
        self.latency = Histogram(
            "sampler_request_latency_seconds",
            "Generation latency by route",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = Counter("sampler_prompt_tokens", "Prompt tokens processed", registry=r)
        self.generated_tokens = Counter(
            "sampler_generated_tokens", "Completion tokens generated", registry=r
        )
        self.queue_depth = Gauge(
            "sampler_queue_depth", "Unfinished requests in the engine", registry=r
        )
        self.policy_version = Gauge(
            "sampler_policy_version", "Weights version being served", registry=r
        )
        self.update_seconds = Histogram(
            "sampler_weight_update_seconds",
            "Weight update duration (drain + load) by transport",
            ["transport"],
            buckets=_UPDATE_BUCKETS,
            registry=r,
        )
        self.updates = Counter(
            "sampler_weight_updates",
            "Weight updates by transport and outcome",
            ["transport", "outcome"],
            registry=r,
        )
        self.reruns = Counter(
            "sampler_preempted_reruns", "Requests aborted by a weight update and re-run", registry=r
        )

    def observe_request(
        self, route: str, seconds: float, prompt_tokens: int, completion_tokens: int
    ) -> None:
        self.latency.labels(route).observe(seconds)
        self.prompt_tokens.inc(prompt_tokens)
        self.generated_tokens.inc(completion_tokens)
