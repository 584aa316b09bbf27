"""vLLM worker side: what vLLM's in-place reload left unloaded, the completeness check of a
weight update on the path GPUs take (and the CPU packed layout).

Owns: running `reload_weights` with a look at the model right after `model.load_weights`
returns and before vLLM finalises the reload, and the error that names what was not loaded.
Does not know: transports, HTTP, the plain CPU layout (it has its own check, `cpu_layout.py`).

Why: vLLM's layerwise reload only logs a warning ("Failed to load weights", "Following weights
were not loaded") for a layer whose tensors never arrived, and serves that layer's *old* values
(or, for a layer that got some of its tensors, a mix). An update that misses a tensor must fail
instead: the server then marks itself broken until a full push (see `serving.py`).
How: vLLM counts the elements each layer receives (`LayerReloadingInfo.load_numel` against
`load_numel_total`) and processes a layer once it is complete, which resets its info; a layer
that got some of its tensors but whose info still expects more when `load_weights` returns is
incomplete (embedding layers legitimately stay short: rows padded past the vocabulary); a
parameter that got nothing is missing from the names `load_weights` reports as loaded.
Pinned to vLLM 0.32's reload module (see pyproject).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def incomplete_layers(model: Any) -> list[str]:
    """Names of the modules vLLM's reload still waits on (call between load and finalise)."""
    from vllm.model_executor.layers.attention import is_deferred_attention_layer
    from vllm.model_executor.layers.vocab_parallel_embedding import VocabParallelEmbedding
    from vllm.model_executor.model_loader.reload.layerwise import LAYERWISE_INFO

    out = []
    for name, layer in model.named_modules():
        info = LAYERWISE_INFO.get(layer)
        # Only layers that got some tensors: one that got none (rotary caches, attention
        # scales, or a weight never sent) is judged by the parameter names in `checked_reload`.
        if info is None or not info.can_load() or not 0 < info.load_numel < info.load_numel_total:
            continue
        if isinstance(layer, VocabParallelEmbedding) or is_deferred_attention_layer(layer):
            continue  # padded rows past the vocabulary; attention finalises later by design
        out.append(name)
    return out


def checked_reload(model: Any, reload: Callable[[], None]) -> None:
    """Run `reload()` (which calls `model.load_weights` once) and raise if any parameter or
    layer of `model` did not get its weights."""
    expected = {name for name, _ in model.named_parameters()}
    seen: dict[str, Any] = {}
    load_weights = model.load_weights

    def watched(weights: Any) -> Any:
        loaded = load_weights(weights)
        seen["loaded"] = loaded
        seen["incomplete"] = incomplete_layers(model)
        return loaded

    model.load_weights = watched  # this instance only, for this one reload
    try:
        reload()
    finally:
        del model.load_weights
    if "loaded" not in seen:
        raise RuntimeError("weight update: vLLM's reload did not call the model's load_weights")
    missing = sorted(expected - set(seen["loaded"] or expected))
    incomplete = seen["incomplete"]
    if missing or incomplete:
        what = missing or [f"{n} (some of its tensors)" for n in incomplete]
        raise RuntimeError(
            f"weight update left {len(what)} parameters on their old values (e.g. {what[:3]}): "
            "send the full state dict"
        )
