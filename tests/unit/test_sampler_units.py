"""Sampler pieces that need no engine: bucket planning and wire format, a real 2-rank gloo
transfer between threads, request models, CLI security checks, engine argument defaults."""

from __future__ import annotations

import threading

import pytest
import torch

from sampler.client import split_evenly
from sampler.weights.buckets import plan_buckets
from sampler.weights.receiver_buffers import ReceiveBuffers
from sampler.weights.sender_stream import BufferPool
from sampler.weights.wire import ALIGN, TensorMeta, align_up, decode_meta, encode_meta, unpack


def test_buckets_keep_a_layer_whole_unless_it_alone_is_too_big():
    from sampler.weights.buckets import layer_key

    names = ["embed", "model.layers.0.q", "model.layers.0.k", "model.layers.1.q", "lm_head"]
    keys = [layer_key(n) for n in names]
    assert keys[1] == keys[2] == "model.layers.0" and keys[3] == "model.layers.1"
    # Layer 0 (2 x 40 B) would fit after `embed` only split: it starts a bucket of its own.
    assert plan_buckets([40, 40, 40, 40, 40], 128, keys) == [[0], [1, 2], [3, 4]]
    # A layer larger than a bucket is split by tensor, as without groups.
    big = ["a", "model.layers.0.x", "model.layers.0.y", "model.layers.0.z"]
    keys = [layer_key(n) for n in big]
    assert plan_buckets([40, 40, 40, 40], 128, keys) == plan_buckets([40, 40, 40, 40], 128)


def test_align_and_plan_buckets():
    assert [align_up(x) for x in (0, 1, 64, 65)] == [0, 64, 64, 128]
    assert plan_buckets([10, 10, 10], bucket_bytes=128) == [[0, 1], [2]]
    # An oversized tensor gets a bucket of its own and does not swallow its neighbours.
    assert plan_buckets([10, 1000, 10], bucket_bytes=128) == [[0], [1], [2]]
    with pytest.raises(ValueError, match="bucket_bytes"):
        plan_buckets([1], 0)


def test_meta_roundtrip_and_unknown_dtype_rejected():
    metas = [
        TensorMeta("a.weight", "bfloat16", (2, 3), 0, 12, True),
        TensorMeta("b", "int64", (), 64, 8),
    ]
    assert decode_meta(encode_meta(metas)) == metas
    with pytest.raises(ValueError, match="complex64"):
        decode_meta(b'[["x", "complex64", [1], 0, 8, 0]]')


def test_layout_bucket_packs_small_tensors_first():
    from sampler.weights.wire import SMALL_TENSOR_BYTES, bucket_len, layout_bucket, packed_len

    big = SMALL_TENSOR_BYTES
    metas = layout_bucket(
        [("w1", "float32", (big // 4,), big), ("n1", "float32", (3,), 12), ("n2", "int8", (5,), 5)]
    )
    assert [(m.name, m.offset, m.packed) for m in metas] == [
        ("n1", 0, True),
        ("n2", 64, True),
        ("w1", 128, False),
    ]
    assert packed_len(metas) == 69 and bucket_len(metas) == 128 + big
    assert packed_len(layout_bucket([("w", "float32", (big // 4,), big)])) == 0


def test_unpack_gives_views_of_packed_tensors():
    tensors = {
        "w": torch.randn(3, 5),
        "b": torch.arange(7, dtype=torch.int64),
        "h": torch.randn(4).bfloat16(),
    }
    buf = torch.zeros(1024, dtype=torch.uint8)
    metas, off = [], 0
    for name, t in tensors.items():
        nb = t.numel() * t.element_size()
        buf[off : off + nb].copy_(t.reshape(-1).view(torch.uint8))
        metas.append(TensorMeta(name, str(t.dtype).removeprefix("torch."), tuple(t.shape), off, nb))
        off = align_up(off + nb)
    out = dict(unpack(buf, metas))
    for name, t in tensors.items():
        assert torch.equal(out[name], t)
    assert out["w"].data_ptr() == buf.data_ptr()  # a view, not a copy


def test_buffer_pool_keeps_and_grows_buffers():
    pool = BufferPool()
    a = pool.get(0, 100)
    assert pool.get(0, 50).data_ptr() == a.data_ptr()  # kept across updates
    assert pool.get(1, 10).data_ptr() != a.data_ptr()  # one buffer per bucket position
    assert pool.get(0, 1000).numel() == 1000


def test_gloo_transfer_between_two_ranks_is_exact():
    """The trainer-side sender and the worker-side receiver over a real gloo group; tensors
    with a matching target land in it directly, a target of another dtype is ignored."""
    import torch.distributed as dist

    from sampler.weights.group import make_group
    from sampler.weights.receiver_stream import receive_buckets
    from sampler.weights.sender import DistWeightPusher

    store = dist.TCPStore("127.0.0.1", 0, 2, is_master=True, wait_for_workers=False)
    port = store.port
    sent = [(f"t{i}", torch.randn(17 + i, 9)) for i in range(6)] + [("big", torch.randn(600, 512))]
    sent.append(("half", torch.randn(33).to(torch.bfloat16)))
    received: dict[str, torch.Tensor] = {}
    stats_rx: dict[str, float] = {}
    errors: list[BaseException] = []
    targets = {
        "t1": torch.zeros(18, 9),  # small: copied out of the packed region
        "big": torch.zeros(600, 512),  # over SMALL_TENSOR_BYTES: received straight into it
        "half": torch.zeros(33),  # float32 target for a bfloat16 tensor: goes through the buffer
    }
    placed: set[str] = set()

    def receiver():
        try:
            _, pg = make_group("gloo", "127.0.0.1", port, 1, 30)
            for name, t in receive_buckets(
                pg, ReceiveBuffers("cpu"), "cpu", stats_rx, targets, placed
            ):
                received[name] = t.clone()
        except BaseException as e:  # surfaced by the assert below
            errors.append(e)

    th = threading.Thread(target=receiver)
    th.start()
    _, pg = make_group("gloo", "127.0.0.1", 0, 0, 30, store=store)
    pusher = DistWeightPusher.__new__(DistWeightPusher)
    pusher.device, pusher.bucket_bytes, pusher.pool = "cpu", 4096, BufferPool()
    failed: dict[str, str] = {}
    stats = pusher._send_all(iter(sent), {"r": pg}, failed)
    th.join(60)
    assert not errors and not failed
    assert placed == {"t1", "big"}
    assert list(received) == [n for n, _ in sent if n not in placed]
    for name, t in sent:
        got = targets[name] if name in placed else received[name]
        assert torch.equal(got, t), name
    assert stats["buckets"] == stats_rx["buckets"] > 2
    assert stats["bytes"] == stats_rx["bytes"] >= sum(t.numel() * t.element_size() for _, t in sent)


def test_split_evenly():
    assert split_evenly(0, 3) == []
    assert split_evenly(5, 2) == [(0, 3), (3, 5)]
    assert split_evenly(2, 8) == [(0, 1), (1, 2)]


# ---------------------------------------------------------------------------- protocol
def test_grouped_request_validation_messages():
    from pydantic import ValidationError

    from sampler.protocol import GroupedRequest

    ok = GroupedRequest(prompts=[[1, 2]], max_tokens=4, n=2, temperature=0.7)
    assert ok.n == 2
    for bad, needle in [
        ({"prompts": [[1]], "max_tokens": 4, "n": 0}, "n"),
        ({"prompts": [[1]], "max_tokens": 4, "temperature": -0.1}, "temperature"),
        ({"prompts": [[1]], "max_tokens": 4, "n": 2, "temperature": 0}, "temperature > 0"),
        ({"prompts": [[]], "max_tokens": 4}, "prompts[0] is empty"),
        ({"prompts": [], "max_tokens": 4}, "prompts"),
        ({"prompts": [[1]], "max_tokens": 4, "tempreature": 1}, "tempreature"),
    ]:
        with pytest.raises(ValidationError, match=needle.replace("[", r"\[").replace("]", r"\]")):
            GroupedRequest(**bad)


# ---------------------------------------------------------------------------- CLI / engine args
def test_cli_refuses_public_host_without_api_key(tmp_path, capsys):
    from sampler.__main__ import is_loopback, parse_args

    (tmp_path / "config.json").write_text("{}")
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.0.0.4")
    with pytest.raises(SystemExit) as e:
        parse_args(["--model", str(tmp_path), "--host", "0.0.0.0"])
    assert e.value.code == 2 and "--api-key" in capsys.readouterr().err
    _, cfg = parse_args(
        ["--model", str(tmp_path), "--host", "0.0.0.0", "--api-key", "k", "--port", "8001"]
    )
    assert cfg.api_key == "k" and cfg.port == 8001


def test_cli_port_zero_needs_a_port_file_and_binds_before_anything_else(tmp_path, capsys):
    import socket

    from sampler.__main__ import bind_port, parse_args

    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(SystemExit) as e:
        parse_args(["--model", str(tmp_path), "--port", "0"])
    assert e.value.code == 2 and "--port-file" in capsys.readouterr().err
    port_file = tmp_path / "port"
    a, cfg = parse_args(["--model", str(tmp_path), "--port", "0", "--port-file", str(port_file)])
    with bind_port(cfg.host, cfg.port, a.port_file) as sock:
        port = sock.getsockname()[1]
        assert port > 0 and int(port_file.read_text()) == port
        with pytest.raises(SystemExit) as e:
            bind_port("127.0.0.1", port, None)  # the port is held: a second server is refused
        assert e.value.code == 2
        assert f"cannot bind 127.0.0.1:{port}" in capsys.readouterr().err
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))  # closed: free again


def test_cli_reports_bad_model_and_config(tmp_path, capsys):
    from sampler.__main__ import parse_args

    with pytest.raises(SystemExit):
        parse_args(["--model", str(tmp_path / "missing")])
    assert "config.json" in capsys.readouterr().err
    (tmp_path / "config.json").write_text("{}")
    bad = tmp_path / "run.yaml"
    bad.write_text("sampler:\n  max_num_seqs: 0\n")
    with pytest.raises(SystemExit):
        parse_args(["--model", str(tmp_path), "--config", str(bad)])
    assert "max_num_seqs" in capsys.readouterr().err


def test_engine_kwargs_cpu_defaults():
    from sampler.config import SamplerConfig
    from sampler.engine import CPU_DEFAULT_KV_CACHE_BYTES, WORKER_EXTENSION, engine_kwargs

    kw = engine_kwargs("/m", SamplerConfig(), on_gpu=False)
    assert kw["kv_cache_memory_bytes"] == CPU_DEFAULT_KV_CACHE_BYTES and kw["enforce_eager"] is True
    assert (
        kw["worker_extension_cls"] == WORKER_EXTENSION
        and kw["logprobs_mode"] == "processed_logprobs"
    )
    gpu = engine_kwargs("/m", SamplerConfig(tensor_parallel_size=2), on_gpu=True)
    assert "kv_cache_memory_bytes" not in gpu and gpu["enforce_eager"] is False
    assert gpu["tensor_parallel_size"] == 2
    assert ALIGN % 16 == 0


def test_load_and_map_finds_where_unchanged_tensors_land():
    """`cpu_layout.load_and_map` on a model whose loader stacks, transforms and skips tensors:
    only a tensor copied unchanged into a parameter region gets a direct target."""
    from sampler.cpu_layout import load_and_map

    class Stacked(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.qk = torch.nn.Parameter(torch.zeros(6, 4), requires_grad=False)
            self.norm = torch.nn.Parameter(torch.zeros(4), requires_grad=False)

        def load_weights(self, weights):
            for name, t in weights:
                if name == "q":  # stacked: rows 0-1 of qk
                    self.qk.data[0:2].copy_(t)
                elif name == "k":  # transformed on the way in: no direct target
                    self.qk.data[2:6].copy_(t.t() * 1.0)
                elif name == "norm":
                    self.norm.data.copy_(t)
                # "lm_head" (tied) is skipped

    m = Stacked()
    q, k, norm = torch.randn(2, 4), torch.randn(4, 4), torch.randn(4)
    plain = load_and_map(m, [("q", q), ("k", k), ("norm", norm), ("lm_head", torch.ones(3))])
    assert plain.via_loader == {"k"} and plain.ignored == {"lm_head"}
    assert plain.required() == {"q", "k", "norm"}
    targets = plain.direct
    assert torch.equal(m.qk[0:2], q) and torch.equal(m.qk[2:6], k.t()) and torch.equal(m.norm, norm)
    new_q = torch.randn(2, 4)
    targets["q"].copy_(new_q)  # what the receiver does, straight into the parameter
    targets["norm"].fill_(7.0)
    assert torch.equal(m.qk[0:2], new_q) and torch.equal(m.qk[2:6], k.t())
    assert torch.equal(m.norm, torch.full((4,), 7.0))


def test_cpu_threads_bind_splits_the_allowed_cores_per_tp_worker():
    from sampler.engine import cpu_threads_bind

    assert cpu_threads_bind(2, [0, 1]) == "0|1"
    assert cpu_threads_bind(2, [7, 4, 5, 6]) == "4,5|6,7"
    assert cpu_threads_bind(1, [0, 1, 2]) == "0,1,2"
    with pytest.raises(ValueError, match="sampler.tensor_parallel_size 4 needs at least"):
        cpu_threads_bind(4, [0, 1])


class _Work:
    """A broadcast handle that completes only once waited (as gloo's can lag its peer)."""

    def __init__(self) -> None:
        self.waited = False

    def is_completed(self) -> bool:
        return self.waited

    def wait(self) -> bool:
        self.waited = True
        return True


def _done_future(result=None, error: BaseException | None = None):
    import asyncio

    loop = asyncio.new_event_loop()
    f = loop.create_future()
    if error is not None:
        f.set_exception(error)
    else:
        f.set_result(result)
    loop.close()
    return f


def test_a_replica_whose_update_succeeded_before_our_broadcast_completed_is_not_failed():
    """Race seen on a TP=2 replica: it had every byte and answered 200 before the sender's last
    broadcast handle reported completion; that must count as success, not 'ended mid-broadcast'."""
    from sampler.weights.sender import DistWeightPusher

    class _Group:  # every broadcast handle lags: not completed until waited
        def broadcast(self, tensors, opts):
            return _Work()

    pusher = DistWeightPusher.__new__(DistWeightPusher)
    pusher.device, pusher.bucket_bytes, pusher.pool = "cpu", 4096, BufferPool()
    failed: dict[str, str] = {}
    sent = [(f"t{i}", torch.randn(64)) for i in range(3)]
    requests = {"r": _done_future({"seconds": 0.1})}
    stats = pusher._send_all(iter(sent), {"r": _Group()}, failed, requests)
    assert not failed, failed
    assert stats["tensors"] == 3


def test_a_replica_whose_update_request_failed_fails_at_once():
    from sampler.weights.sender_stream import wait_work

    with pytest.raises(RuntimeError, match="failed mid-broadcast.*ConnectError"):
        wait_work(_Work(), _done_future(error=ConnectionError("ConnectError: gone")))


def test_dropping_a_group_whose_peer_died_mid_broadcast_does_not_block():
    """A replica dies mid-broadcast: our broadcasts to it stay pending until the group timeout,
    and destroying a gloo group waits for its pending work. The pusher forgets such a group
    without destroying it, so the next push (whose thread may run the garbage collection that
    frees it) does not stall for the group timeout."""
    import asyncio
    import gc

    import torch.distributed as dist

    from sampler.weights.group import make_group
    from sampler.weights.sender import DistWeightPusher

    store = dist.TCPStore("127.0.0.1", 0, 2, is_master=True, wait_for_workers=False)
    peer: list = []

    def dead_replica() -> None:  # joins, then never reads a byte (as a killed server's engine)
        peer.append(make_group("gloo", "127.0.0.1", store.port, 1, 120))

    th = threading.Thread(target=dead_replica)
    th.start()
    _, pg = make_group("gloo", "127.0.0.1", 0, 0, 120, store=store)
    th.join(60)
    loop = asyncio.new_event_loop()
    request = loop.create_future()
    request.set_exception(ConnectionError("server disconnected"))  # its HTTP call failed
    pusher = DistWeightPusher.__new__(DistWeightPusher)
    pusher.device, pusher.bucket_bytes, pusher.pool = "cpu", 64 << 20, BufferPool()
    pusher._sessions = {"r": ("instance", "session", store, pg)}
    failed: dict[str, str] = {}
    pusher._send_all(iter([("w", torch.zeros(32 << 20))]), {"r": pg}, failed, {"r": request})
    assert "failed mid-broadcast" in failed["r"]  # the pending 128 MB broadcast is abandoned
    held = [pg]  # the last reference outside the pusher, released in the thread below
    del pg
    done = threading.Event()

    def forget() -> None:  # what push() does with a failed replica's group, then a collection
        pusher._drop("r")
        held.clear()
        gc.collect()
        done.set()

    threading.Thread(target=forget, daemon=True).start()
    assert done.wait(60), "freeing the dead replica's group blocked on its pending broadcast"
    loop.close()


def test_a_stranger_on_the_weight_sync_store_gets_no_rank_and_no_weights():
    """The trainer's store port is open to the network. A stranger who connects first and
    claims the replica's rank must neither receive the weights nor stop the update: the group's
    keys live under the session secret, which only the admin-authenticated request carries."""
    import secrets

    import torch.distributed as dist

    from sampler.weights.group import make_group
    from sampler.weights.receiver_stream import receive_buckets
    from sampler.weights.sender import DistWeightPusher

    store = dist.TCPStore("127.0.0.1", 0, 2, is_master=True, wait_for_workers=False)
    secret = secrets.token_hex(16)
    sent = [("w", torch.randn(64, 64)), ("b", torch.randn(64))]
    stranger: dict[str, object] = {}
    got: dict[str, torch.Tensor] = {}

    def intrude() -> None:  # knows the address and port, not the secret
        try:
            _, pg = make_group("gloo", "127.0.0.1", store.port, 1, 3)
            stranger["got"] = dict(receive_buckets(pg, ReceiveBuffers("cpu"), "cpu", {}))
        except Exception as e:  # expected: it never meets the group
            stranger["error"] = e

    def replica() -> None:
        _, pg = make_group("gloo", "127.0.0.1", store.port, 1, 30, secret=secret)
        for name, t in receive_buckets(pg, ReceiveBuffers("cpu"), "cpu", {}):
            got[name] = t.clone()

    failed: dict[str, str] = {}

    def trainer() -> None:
        _, pg = make_group("gloo", "127.0.0.1", 0, 0, 30, store=store, secret=secret)
        pusher = DistWeightPusher.__new__(DistWeightPusher)
        pusher.device, pusher.bucket_bytes, pusher.pool = "cpu", 1 << 20, BufferPool()
        pusher._send_all(iter(sent), {"r": pg}, failed)

    # The stranger is there first, alone with the trainer, until it gives up (3 s); only then
    # does the replica come.
    bad, push = threading.Thread(target=intrude), threading.Thread(target=trainer)
    bad.start()
    push.start()
    bad.join(60)
    good = threading.Thread(target=replica)
    good.start()
    good.join(60)
    push.join(60)
    assert not failed and set(got) == {"w", "b"}
    assert all(torch.equal(got[n], t) for n, t in sent)
    assert "got" not in stranger and isinstance(stranger.get("error"), ConnectionError)


def test_a_stream_mailbox_keeps_only_the_newest_output_per_prompt():
    """A reader slower than the engine: 10,000 cumulative outputs of 2 prompts leave 2 in the
    mailbox (not 10,000), the newest of each, then the end; an error after them comes last."""
    import asyncio

    from sampler.serving import LatestOutputs

    async def run():
        box = LatestOutputs()
        for step in range(5000):
            for i in (0, 1):
                box.put_nowait((i, f"prompt {i} up to token {step}"))
        box.put_nowait(None)
        assert box.qsize() == 3
        got = [await box.get() for _ in range(3)]
        assert got == [(0, "prompt 0 up to token 4999"), (1, "prompt 1 up to token 4999"), None]
        box = LatestOutputs()
        box.put_nowait((0, "a"))
        box.put_nowait(RuntimeError("engine died"))
        assert await box.get() == (0, "a")
        assert isinstance(await box.get(), RuntimeError)
        waiter = asyncio.ensure_future(LatestOutputs().get())
        await asyncio.sleep(0)  # it waits: nothing was put
        assert not waiter.done()
        waiter.cancel()

    asyncio.run(run())
