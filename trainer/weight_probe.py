"""The weight probe: proof, after every weight push, that each sampler replica serves the
trainer's weights.

Owns: the fixed probe sequence, the trainer-side reference (the trainer model's logprobs of it),
the dtype-aware tolerance, and the comparison with each replica's `/logprobs` answer.
Does not know: how weights travel (any transport is checked the same way), ZeRO (the caller runs
the reference forward on every rank), or the run loop (it raises; the driver stops the run).

Why a probe: a wrong weight path (a TP shard loaded into the wrong rank, a bucket read before
its stream finished, a dtype or layout mix-up) leaves the sampler serving *some* model. Training
on its samples goes on quietly with an importance ratio that hides nothing; the probe turns that
into an error at the first push.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from sampler.client import SamplerClient

log = logging.getLogger(__name__)

# Plain prose that tokenizes to many ordinary tokens in any BPE vocabulary.
PROBE_TEXT = (
    "The weights of a language model are numbers learned from text. A sampler that serves "
    "the trainer's policy must compute, for this very sentence, the same probability of each "
    "next word as the trainer does, up to rounding."
)
PROBE_TOKENS = 48  # enough positions for a stable mean; one short forward per push

# Largest mean |logprob gap| per probe token that still counts as the same weights, by the
# coarser dtype of the two sides. Rounding differences between two kernels (vLLM's and
# transformers') grow with the dtype's epsilon. Measured on CPU (tiny model): float32 2e-7,
# bfloat16 1e-3; the limits leave room for GPU kernels' accumulation order and deep models,
# and sit below what a wrong tensor costs (docs/architecture.md, "The weight probe").
TOLERANCE = {"float32": 5e-3, "float64": 5e-3, "float16": 0.05, "bfloat16": 0.1}
_RANK = {"float64": 0, "float32": 1, "float16": 2, "bfloat16": 3}


class WeightProbeError(RuntimeError):
    """A replica does not serve the weights the trainer pushed."""


@dataclass(frozen=True)
class ProbeResult:
    url: str
    version: int
    gap: float  # mean |logprob gap| over the probe's tokens
    max_gap: float
    tolerance: float


def probe_token_ids(tokenizer: Any, max_len: int | None = None) -> list[int]:
    """The probe sequence in this model's vocabulary (at most PROBE_TOKENS, and `max_len`)."""
    ids = list(tokenizer.encode(PROBE_TEXT, add_special_tokens=False))[:PROBE_TOKENS]
    if max_len is not None:
        ids = ids[:max_len]
    if len(ids) < 2:
        raise ValueError("the weight probe needs a tokenizer that splits its text into >= 2 tokens")
    return ids


def reference_logprobs(model: Any, token_ids: list[int]) -> list[float]:
    """logprob of token_ids[i] given token_ids[:i] under `model` (i >= 1), as the sampler's
    `/logprobs` reports them: raw, temperature 1. Every ZeRO-3 rank must call it together."""
    import torch

    from trainer.loss import completion_logps

    device = next(model.parameters()).device
    ids = torch.tensor([token_ids], device=device)
    with torch.no_grad():
        lp, _ = completion_logps(model, ids, torch.ones_like(ids), len(token_ids) - 1)
    return [float(x) for x in lp[0].double().cpu()]


def tolerance(*dtypes: str | torch.dtype) -> float:
    """The gap limit for a comparison between sides computing in `dtypes` (the coarsest wins)."""
    names = [str(d).removeprefix("torch.") for d in dtypes]
    unknown = [n for n in names if n not in TOLERANCE]
    if unknown:
        raise ValueError(f"weight probe: no tolerance for dtype {unknown[0]!r}")
    return TOLERANCE[max(names, key=_RANK.__getitem__)]


def compare(
    url: str,
    reply: dict[str, Any],
    reference: list[float],
    version: int,
    trainer_dtype: str | torch.dtype,
    limit: float | None = None,
) -> ProbeResult:
    """Check one replica's `/logprobs` reply; raises WeightProbeError naming replica, version
    and gap when it serves another version or other weights."""
    served = int(reply["policy_version"])
    if served != version:
        raise WeightProbeError(
            f"weight probe: replica {url} serves policy version {served}, expected {version} "
            "right after the push"
        )
    got = [float(x) for x in reply["logprobs"]]
    if len(got) != len(reference):
        raise WeightProbeError(
            f"weight probe: replica {url} scored {len(got)} tokens, expected {len(reference)}"
        )
    gaps = [abs(a - b) for a, b in zip(got, reference, strict=True)]
    tol = limit if limit is not None else tolerance(trainer_dtype, reply["dtype"])
    res = ProbeResult(url, version, sum(gaps) / len(gaps), max(gaps), tol)
    if not res.gap <= tol:  # `not <=` also catches NaN
        raise WeightProbeError(
            f"weight probe: replica {url} does not serve the trainer's weights of policy version "
            f"{version}: mean logprob gap {res.gap:.4g} (max {res.max_gap:.4g}) over "
            f"{len(gaps)} probe tokens exceeds the tolerance {tol:g} for {trainer_dtype} vs "
            f"{reply['dtype']}; the weight transport delivered wrong weights (see "
            "docs/azure-ml.md, troubleshooting: 'weight probe')"
        )
    return res


def _unreachable(error: BaseException) -> bool:
    """A replica that could not answer at all (its process gone, its engine down: a transport
    error or a 5xx), as opposed to one that answered or refused the request (4xx)."""
    import httpx

    from sampler.client import SamplerUnavailable

    return isinstance(error, httpx.TransportError | SamplerUnavailable)


async def check_replicas(
    client: SamplerClient,
    urls: list[str],
    token_ids: list[int],
    reference: list[float],
    version: int,
    trainer_dtype: str | torch.dtype,
    limit: float | None = None,
) -> dict[str, float]:
    """Probe every replica in `urls`; metrics of the worst one, or WeightProbeError.

    A replica that cannot answer (it died after the push reached it) proves nothing about the
    weights: it is logged and counted, not checked. The driver's monitor restarts it, and a
    restarted replica is probed after its resync, before it serves again."""
    replies = await asyncio.gather(
        *(client.logprobs(u, token_ids) for u in urls), return_exceptions=True
    )
    answered, unreachable = [], []
    for url, reply in zip(urls, replies, strict=True):
        if isinstance(reply, BaseException):
            if not _unreachable(reply):
                raise reply
            unreachable.append(url)
            log.warning(
                "weight probe: replica %s did not answer (%s: %s); its weights of policy "
                "version %d are not checked",
                url,
                type(reply).__name__,
                reply,
                version,
            )
        else:
            answered.append((url, reply))
    results = [compare(u, r, reference, version, trainer_dtype, limit) for u, r in answered]
    return {
        "weight_sync/probe_gap": max((r.gap for r in results), default=0.0),
        "weight_sync/probe_gap_max": max((r.max_gap for r in results), default=0.0),
        "weight_sync/probe_replicas": float(len(results)),
        "weight_sync/probe_unreachable": float(len(unreachable)),
    }
