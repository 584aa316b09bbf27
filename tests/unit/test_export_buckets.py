"""The trainer's weight export gathers by the weight push's one bucketing rule
(`sampler.weights.buckets.weight_buckets`): whole layers per gather, every tensor once, in order.
No DeepSpeed engine: the export plan is given, ZeRO stage 2 (no gather context)."""

from __future__ import annotations

import pytest
import torch

import trainer.engine as engine_module
from sampler.weights.buckets import weight_buckets
from trainer.engine import PolicyEngine


def test_the_export_gathers_whole_layers_and_yields_every_tensor(monkeypatch) -> None:
    pytest.importorskip("deepspeed")
    params = {
        f"model.layers.{i}.w{j}": torch.nn.Parameter(torch.randn(50))  # 200 B each
        for i in range(3)
        for j in range(2)
    }
    params["lm_head.weight"] = torch.nn.Parameter(torch.randn(50))
    eng = PolicyEngine.__new__(PolicyEngine)  # only what the export reads
    eng._export_plan = lambda: [(n, [p], None) for n, p in params.items()]
    eng.zero_stage, eng.rank, eng.model_dtype = 2, 0, torch.float32
    gathers: list[list[str]] = []

    def recorded(items, nbytes, bucket_bytes):
        for bucket in weight_buckets(items, nbytes, bucket_bytes):
            gathers.append([name for name, _, _ in bucket])
            yield bucket

    monkeypatch.setattr(engine_module, "weight_buckets", recorded)
    out = dict(eng.iter_named_params_for_sync(bucket_bytes=600))
    assert list(out) == list(params)
    assert all(torch.equal(out[n], p.data) for n, p in params.items())
    # A running sum would gather 3 x 200 B = 600 B (layer 1 split across two gathers); the rule
    # keeps each layer (256 + 200 B aligned) whole, one per gather here.
    assert gathers == [
        ["model.layers.0.w0", "model.layers.0.w1"],
        ["model.layers.1.w0", "model.layers.1.w1"],
        ["model.layers.2.w0", "model.layers.2.w1"],
        ["lm_head.weight"],
    ]
