"""The weight transport's device handling, on CPU here and on CUDA where a GPU is (`gpu` marks):
the trainer side sending bfloat16 parameters that live on the device, the receiver's bounded
buffers on the device, and the device sync before a buffer is reused.

These need only torch (no vLLM, Ray or DeepSpeed): the GPU check machine has nothing else. Two
threads of one process form a real 2-rank gloo group (gloo moves CUDA tensors through host
memory; NCCL needs one GPU per rank, which a single-GPU machine cannot give).
"""

from __future__ import annotations

import threading

import pytest
import torch

from sampler.weights.group import make_group
from sampler.weights.receiver_buffers import ReceiveBuffers
from sampler.weights.receiver_stream import receive_buckets
from sampler.weights.sender_stream import BufferPool

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.gpu),
]


def _device(name: str) -> str:
    if name == "cuda" and not torch.cuda.is_available():
        pytest.fail("a gpu-marked test ran without CUDA: run it on the GPU machine")
    return "cuda:0" if name == "cuda" else "cpu"


def _layers(device: str, n_layers: int = 6) -> list[tuple[str, torch.Tensor]]:
    """A model's worth of bfloat16 tensors on `device`, named as a checkpoint names them: two
    large projections and a small norm per layer, an embedding first."""
    g = torch.Generator().manual_seed(0)
    out = [("model.embed_tokens.weight", torch.randn(512, 256, generator=g))]
    for i in range(n_layers):
        p = f"model.layers.{i}."
        out += [
            (p + "mlp.up_proj.weight", torch.randn(1024, 256, generator=g)),
            (p + "mlp.down_proj.weight", torch.randn(256, 1024, generator=g)),
            (p + "input_layernorm.weight", torch.randn(256, generator=g)),
        ]
    return [(n, t.to(device=device, dtype=torch.bfloat16)) for n, t in out]


@pytest.mark.parametrize("name", DEVICES)
def test_bf16_weights_on_the_device_arrive_exact_in_at_most_two_buffers(name):
    dev = _device(name)
    sent = _layers(dev)
    layer_bytes = 2 * (2 * 1024 * 256 + 256)
    bucket = layer_bytes  # one whole layer per bucket (the pusher never splits a layer)
    store = torch.distributed.TCPStore("127.0.0.1", 0, 2, is_master=True, wait_for_workers=False)
    loaded: dict[str, torch.Tensor] = {}
    stats_rx: dict[str, float] = {}
    errors: list[BaseException] = []
    pool = ReceiveBuffers(dev, max_buffers=2)

    def receiver() -> None:
        try:
            _, pg = make_group("gloo", "127.0.0.1", store.port, 1, 60)
            for tensor_name, view in receive_buckets(pg, pool, dev, stats_rx):
                # As vLLM's loader: copy into the parameter (on the device), drop the view.
                loaded[tensor_name] = torch.empty_like(view).copy_(view)
        except BaseException as e:  # surfaced by the assert below
            errors.append(e)

    th = threading.Thread(target=receiver)
    th.start()
    _, pg = make_group("gloo", "127.0.0.1", 0, 0, 60, store=store)
    from sampler.weights.sender import DistWeightPusher

    pusher = DistWeightPusher.__new__(DistWeightPusher)  # the sender half, no HTTP
    pusher.device, pusher.bucket_bytes, pusher.pool = dev, bucket, BufferPool(dev)
    failed: dict[str, str] = {}
    stats = pusher._send_all(iter(sent), {"r": pg}, failed)
    th.join(120)
    assert not th.is_alive() and not errors and not failed, (errors, failed)
    assert list(loaded) == [n for n, _ in sent]
    for n, t in sent:
        got = loaded[n]
        assert got.device == t.device and got.dtype == torch.bfloat16, n
        assert torch.equal(got.view(torch.int16), t.view(torch.int16)), n  # bit for bit
    assert stats["buckets"] == stats_rx["buckets"] >= len(sent) // 3
    one_bucket = max(bucket, 512 * 256 * 2) + 64 * 3  # + alignment of a layer's 3 tensors
    assert 0 < stats_rx["receive_buffer_peak_bytes"] <= 2 * one_bucket, stats_rx
    assert stats_rx["receive_buffer_extra"] == 0, stats_rx


@pytest.mark.gpu
def test_a_cuda_buffer_is_reused_only_after_the_loaders_queued_copy_ran():
    """The loader (another thread, its own stream) queues a copy out of bucket buffer A behind
    slow work and drops its view at once, as vLLM's loader does. The receive thread then gets A
    back for the next bucket and overwrites it: without the device sync in ReceiveBuffers the
    overwrite can land before the queued copy reads A, and the parameter gets the next bucket's
    bytes."""
    dev = _device("cuda")
    pool = ReceiveBuffers(dev, max_buffers=1, wait_s=600)
    a = pool.acquire(1 << 20)
    a.fill_(7)
    torch.cuda.synchronize(dev)
    param = torch.zeros(1 << 20, dtype=torch.uint8, device=dev)
    loader = torch.cuda.Stream(dev)

    views = [a[:]]  # the loader's view of the bucket

    def load() -> None:
        with torch.cuda.stream(loader):
            torch.cuda._sleep(200_000_000)  # ~0.1 s of GPU time before the copy runs
            param.copy_(views[0], non_blocking=True)
        views.clear()  # dropped while the copy is still queued

    t = threading.Thread(target=load)
    t.start()
    t.join(60)
    del a
    b = pool.acquire(1 << 20)  # the same kept buffer, handed out again
    b.fill_(9)  # the next bucket arrives (default stream)
    torch.cuda.synchronize(dev)
    assert int(param.min()) == 7 and int(param.max()) == 7
