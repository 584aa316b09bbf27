"""Weight-update time into a live sampler replica vs a raw torch.distributed gloo broadcast.

One command, same machine, same bytes:
  * baseline: a raw 2-process gloo broadcast (`ProcessGroupGloo.broadcast`) of the model's bytes
    in the same bucket sizes, buffers preallocated on both sides (the transport's ceiling);
  * the sampler's gloo transport end to end: `make_weight_pusher("gloo").push(state_dict)` into
    a running `python -m sampler` replica per `sampler.cpu_weight_layout` (`--layouts`): HTTP
    admin call, process group (kept across updates), the broadcasts, the in-place load (direct
    placement in the plain layout, vLLM's reload in the packed one), prefix-cache reset, version;
  * the filesystem transport end to end (safetensors in a temp folder + load), for reference;
  * a second raw baseline in the pusher's own message sizes (one broadcast per large tensor),
    which separates the cost of more, smaller messages from the cost of the update path;
Prints median seconds and effective bytes/s of each and the ratio gloo-push/raw (goal >= 0.8).

    .venv/bin/python bench/bench_sampler_weight_sync.py --model tiny
    .venv/bin/python bench/bench_sampler_weight_sync.py --model 100m
    .venv/bin/python bench/bench_sampler_weight_sync.py --model 100m --tp 2
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

_RECEIVER = """
import sys, torch, torch.distributed as dist
sys.path.insert(0, {root!r})
from sampler.weights.group import make_group, broadcast
sizes = {sizes!r}
bufs = [torch.empty(s, dtype=torch.uint8) for s in sizes]
_, pg = make_group("gloo", "127.0.0.1", {port}, 1, 120)
for _ in range({rounds}):
    for b in bufs:
        broadcast(pg, b).wait()
"""


def raw_broadcast(sizes: list[int], rounds: int) -> list[float]:
    """Seconds per round of broadcasting buffers of `sizes` bytes to a second process."""
    import torch
    import torch.distributed as dist

    from sampler.launch import child_env
    from sampler.weights.group import broadcast, make_group

    store = dist.TCPStore("127.0.0.1", 0, 2, is_master=True, wait_for_workers=False)
    code = _RECEIVER.format(
        root=str(Path(__file__).resolve().parents[1]), sizes=sizes, port=store.port, rounds=rounds
    )
    proc = subprocess.Popen([sys.executable, "-c", code], env=child_env())
    _, pg = make_group("gloo", "127.0.0.1", 0, 0, 120, store=store)
    bufs = [torch.randint(0, 255, (s,), dtype=torch.uint8) for s in sizes]
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for b in bufs:
            broadcast(pg, b).wait()
        times.append(time.perf_counter() - t0)
    proc.wait(timeout=120)
    return times


def wire_messages(state: dict, bucket_bytes: int) -> list[int]:
    """Byte sizes of the data broadcasts the gloo pusher issues for `state` (per bucket: the
    packed region of small tensors, then one message per larger tensor)."""
    from sampler.weights.buckets import plan_buckets
    from sampler.weights.wire import layout_bucket, packed_len

    items = list(state.items())
    sizes = [t.numel() * t.element_size() for _, t in items]
    out = []
    for idx in plan_buckets(sizes, bucket_bytes):
        metas = layout_bucket(
            [(items[i][0], "float32", tuple(items[i][1].shape), sizes[i]) for i in idx]
        )
        if packed_len(metas):
            out.append(packed_len(metas))
        out += [m.nbytes for m in metas if not m.packed]
    return out


def bucket_sizes(state: dict, bucket_bytes: int) -> list[int]:
    from sampler.weights.buckets import plan_buckets
    from sampler.weights.wire import align_up

    sizes = [t.numel() * t.element_size() for t in state.values()]
    out = []
    for idx in plan_buckets(sizes, bucket_bytes):
        used = 0
        for i in idx:
            used = align_up(used) + sizes[i]
        out.append(used)
    return out


async def pushes(
    url: str,
    state: dict,
    transport: str,
    rounds: int,
    bucket_bytes: int,
    tmp: str,
    first_version: int,
) -> list[dict]:
    from sampler.client import SamplerClient
    from sampler.weights.sender import make_weight_pusher

    client = SamplerClient([url], admin_key="bench-admin")
    pusher = make_weight_pusher(
        transport,
        client,
        bucket_bytes=bucket_bytes,
        timeout_s=120,
        shared_dir=str(Path(tmp) / "shared"),
    )
    out = []
    for r in range(rounds):
        out.append(await pusher.push(iter(state.items()), version=first_version + r))
    await client.aclose()
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    from bench.presets import MODEL_PRESETS, add_model_argument

    add_model_argument(p, default="tiny")
    p.add_argument("--bucket-mb", type=float, default=64)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument(
        "--layouts",
        default="plain,packed",
        help="sampler.cpu_weight_layout values to measure, each with its own replica",
    )
    p.add_argument(
        "--tp",
        type=int,
        default=1,
        help="sampler.tensor_parallel_size of the measured replicas (2 on this 2-core box: every "
        "TP worker is a receiver)",
    )
    a = p.parse_args()
    import torch
    from transformers import AutoModelForCausalLM

    from data.tiny_model import build_tiny_model
    from sampler.launch import start_sampler

    bucket_bytes = int(a.bucket_mb * (1 << 20))
    with tempfile.TemporaryDirectory() as tmp:
        model = build_tiny_model(Path(tmp) / "a", seed=0, **MODEL_PRESETS[a.model])
        other = build_tiny_model(Path(tmp) / "b", seed=1, **MODEL_PRESETS[a.model])
        state = AutoModelForCausalLM.from_pretrained(other, dtype=torch.float32).state_dict()
        # What actually travels: tied weights are one tensor in memory but sent under both names.
        nbytes = sum(t.numel() * t.element_size() for t in state.values())
        n_params = sum(t.numel() for n, t in state.items() if n != "lm_head.weight")
        sizes = bucket_sizes(state, bucket_bytes)
        print(
            f"model={a.model} params={n_params / 1e6:.1f}M bytes={nbytes / 1e6:.1f}MB "
            f"buckets={len(sizes)} x <= {a.bucket_mb} MiB rounds={a.rounds} (1 warm-up each) "
            f"tp={a.tp}"
        )
        raw = raw_broadcast(sizes, a.rounds + 1)[1:]
        messages = wire_messages(state, bucket_bytes)
        raw_msgs = raw_broadcast(messages, a.rounds + 1)[1:]
        results = {}
        for layout in a.layouts.split(","):
            cfg = Path(tmp) / f"{layout}.yaml"
            cfg.write_text(
                f"sampler:\n  cpu_weight_layout: {layout}\n  tensor_parallel_size: {a.tp}\n"
            )
            sp = start_sampler(
                model,
                log_dir=tmp,
                admin_key="bench-admin",
                extra_args=["--dtype", "float32", "--config", str(cfg)],
                timeout_s=600,
            )
            try:
                gloo = asyncio.run(
                    pushes(sp.url, state, "gloo", a.rounds + 1, bucket_bytes, tmp, 1)
                )[1:]
                fs = asyncio.run(
                    pushes(sp.url, state, "filesystem", a.rounds + 1, bucket_bytes, tmp, 100)
                )[1:]
            finally:
                sp.stop()
            results[layout] = (gloo, fs)
    raw_s = statistics.median(raw)
    raw_msgs_s = statistics.median(raw_msgs)
    gb = nbytes / 1e9
    print("raw per round (ms): " + " ".join(f"{x * 1e3:.0f}" for x in raw))
    print(f"raw gloo broadcast:        {raw_s * 1e3:8.1f} ms  {gb / raw_s:6.2f} GB/s")
    print(
        f"raw, pusher's messages:    {raw_msgs_s * 1e3:8.1f} ms  {gb / raw_msgs_s:6.2f} GB/s "
        f"({len(messages)} broadcasts instead of {len(sizes)}; per round (ms): "
        + " ".join(f"{x * 1e3:.0f}" for x in raw_msgs)
        + ")"
    )
    for layout, (gloo, fs) in results.items():
        gloo_s = statistics.median(s["seconds"] for s in gloo)
        send_s = statistics.median(s["send_seconds"] for s in gloo)
        fs_s = statistics.median(s["seconds"] for s in fs)
        rep_s = statistics.median(s["replica_update_seconds"] for s in gloo)
        work_s = statistics.median(s["replica_worker_seconds"] for s in gloo)
        print(
            f"[{layout}] per round (ms): gloo push "
            + " ".join(f"{x['seconds'] * 1e3:.0f}" for x in gloo)
            + " | filesystem "
            + " ".join(f"{x['seconds'] * 1e3:.0f}" for x in fs)
        )
        print(
            f"[{layout}] gloo push (end to end):    {gloo_s * 1e3:8.1f} ms  {gb / gloo_s:6.2f} GB/s  "
            f"(pack+broadcast {send_s * 1e3:.1f} ms; replica: update {rep_s * 1e3:.1f} ms, "
            f"worker receive+load {work_s * 1e3:.1f} ms)"
        )
        print(f"[{layout}] last replica stats: {gloo[-1]}")
        peak = max(s.get("replica_receive_buffer_peak_bytes", 0.0) for s in gloo)
        print(
            f"[{layout}] receiver peak extra bytes: {peak / 1e6:.1f} MB = {peak / max(sizes):.2f} "
            f"x the largest bucket ({max(sizes) / 1e6:.1f} MB; goal <= 2), "
            f"{peak / nbytes:.2f} x the model"
        )
        print(f"[{layout}] filesystem push (e2e):     {fs_s * 1e3:8.1f} ms  {gb / fs_s:6.2f} GB/s")
        print(
            f"[{layout}] ratio gloo-push bytes/s / raw bytes/s: {raw_s / gloo_s:.3f} (goal >= 0.8); "
            f"vs raw in the pusher's {len(messages)} messages: {raw_msgs_s / gloo_s:.3f}"
        )
        print(f"[{layout}] ratio pack+broadcast phase / raw:      {raw_s / send_s:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
