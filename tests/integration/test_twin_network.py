"""Node addresses on the twin (network namespaces): what a process on one node reaches another at.

Fast checks of the pieces the twin job tests rely on: the address and interface helpers, and a
weight-sync gloo group between two nodes (on this machine `gethostname()` resolves to loopback,
so a gloo device that follows the hostname makes each side dial its own loopback).
"""

from __future__ import annotations

import json
import sys
import textwrap

import pytest
from twin_cluster import Twin, require_namespaces

pytestmark = [pytest.mark.slow]


@pytest.fixture
def twin2():
    require_namespaces()
    with Twin(2) as twin:
        yield twin


def test_route_source_and_interface_are_the_nodes_own(twin2):
    code = textwrap.dedent(f"""
        import json
        from sampler.netaddr import interface_of, route_source
        src = route_source({twin2.ips[0]!r})
        print(json.dumps([src, interface_of(src), route_source("127.0.0.1"), interface_of("127.0.0.1")]))
    """)
    r = twin2.run(1, [sys.executable, "-c", code])
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == [twin2.ips[1], "eth0", "127.0.0.1", "lo"]


RANK0 = """
import sys, torch, torch.distributed as dist
from sampler.weights.group import broadcast, make_group
store = dist.TCPStore(sys.argv[1], int(sys.argv[2]), 2, is_master=True, wait_for_workers=False)
_, pg = make_group("gloo", sys.argv[1], 0, 0, 60, store)
broadcast(pg, torch.arange(6, dtype=torch.float32)).wait()
print("SENT", flush=True)
del pg  # a gloo group alive at interpreter exit aborts the process
"""

RANK1 = """
import sys, torch
from sampler.weights.group import broadcast, make_group
_, pg = make_group("gloo", sys.argv[1], int(sys.argv[2]), 1, 60, connect_timeout_s=30)
t = torch.zeros(6)
broadcast(pg, t).wait()
print("GOT", t.tolist(), flush=True)
del pg
"""


def test_weight_sync_group_crosses_nodes(twin2):
    """Rank 0 (a trainer) on node 0, rank 1 (a sampler worker) on node 1."""
    port = "29517"
    log0, log1 = twin2.root / "rank0.log", twin2.root / "rank1.log"
    p0 = twin2.popen(0, [sys.executable, "-c", RANK0, twin2.ips[0], port], twin2.node_env(0), log0)
    p1 = twin2.popen(1, [sys.executable, "-c", RANK1, twin2.ips[0], port], twin2.node_env(1), log1)
    assert p1.wait(timeout=120) == 0, log1.read_text()
    assert p0.wait(timeout=60) == 0, log0.read_text()
    assert "GOT [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]" in log1.read_text()


def _run_expecting_error(twin: Twin, code: str) -> str:
    """Run `code` on node 1; it prints `ERR <message>` for the error it expects."""
    r = twin.run(1, [sys.executable, "-c", textwrap.dedent(code)], timeout=120)
    assert r.returncode == 0, r.stderr
    assert "ERR " in r.stdout, r.stdout
    return r.stdout


def test_unreachable_store_fails_in_bounded_time_naming_address_and_port(twin2):
    """Nothing listens on node 0: rank 1 gives up after its connect timeout and says where it dialled."""
    out = _run_expecting_error(
        twin2,
        f"""
        from sampler.weights.group import make_group
        try:
            make_group("gloo", {twin2.ips[0]!r}, 29999, 1, 600, connect_timeout_s=3)
        except ConnectionError as e:
            print("ERR", e)
        """,
    )
    assert (
        f"ERR weight-sync rank 1 could not reach the trainer's store at {twin2.ips[0]}:29999" in out
    )
    assert "pipeline.connect_timeout_s" in out


def test_trainer_rank_that_cannot_reach_rank_0_fails_naming_it(twin2):
    """A trainer rank on node 1 dials a rank-0 store nobody opened on node 0: a bounded wait and
    an error with the rank, the address and port, and the setting to raise."""
    out = _run_expecting_error(
        twin2,
        f"""
        from trainer.workers import TrainerWorker
        w = TrainerWorker(1, 2, "unused", {{}}, {{}}, 1, "gloo", 600, 3)
        try:
            w.join({twin2.ips[0]!r}, 29998)
        except ConnectionError as e:
            print("ERR", e)
        """,
    )
    assert (
        f"ERR trainer rank 1 (node {twin2.ips[1]}) could not reach trainer rank 0's process-group "
        f"store at {twin2.ips[0]}:29998 within 3s (pipeline.connect_timeout_s)"
    ) in out, out
