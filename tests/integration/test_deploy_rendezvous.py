"""The launchers' control channel over real TCP on 127.0.0.1 (fast; no Ray)."""

from __future__ import annotations

import socket
import threading

import pytest

from deploy.rendezvous import HeadRendezvous, RendezvousError, WorkerRendezvous
from sampler.netaddr import free_port


def test_join_and_exit_code_reach_every_worker():
    port = free_port()
    head = HeadRendezvous("127.0.0.1", port, {1, 2}, "127.0.0.1:6379", heartbeat_s=0.2)
    codes = {}

    def worker(rank):
        w = WorkerRendezvous.connect("127.0.0.1", port, timeout=10)
        assert w.ray_address == "127.0.0.1:6379"
        w.report(rank, "trainer", ok=True)
        codes[rank] = w.wait_exit(heartbeat_timeout=5)
        w.close()

    threads = [threading.Thread(target=worker, args=(r,)) for r in (1, 2)]
    for t in threads:
        t.start()
    head.wait_joined(timeout=10)
    head.finish(7)
    for t in threads:
        t.join(timeout=10)
    assert codes == {1: 7, 2: 7}


def test_a_worker_that_fails_to_start_fails_the_join():
    port = free_port()
    head = HeadRendezvous("127.0.0.1", port, {1}, "127.0.0.1:6379")
    w = WorkerRendezvous.connect("127.0.0.1", port, timeout=10)
    w.report(1, "trainer", ok=False, message="ray start: address in use")
    with pytest.raises(RendezvousError, match="node 1 .*address in use"):
        head.wait_joined(timeout=10)
    head.finish(3)
    w.close()


def test_missing_worker_times_out_with_its_rank():
    head = HeadRendezvous("127.0.0.1", free_port(), {1, 2}, "x:1")
    with pytest.raises(RendezvousError, match=r"nodes \[1, 2\] did not join within 0s"):
        head.wait_joined(timeout=0.3)
    head.finish(3)


def test_worker_notices_a_dead_head_and_a_lost_worker_is_reported():
    port = free_port()
    head = HeadRendezvous("127.0.0.1", port, {1}, "x:1", heartbeat_s=0.2)
    w = WorkerRendezvous.connect("127.0.0.1", port, timeout=10)
    w.report(1, "sampler", ok=True)
    head.wait_joined(timeout=10)
    w.close()  # the worker node dies
    deadline = threading.Event()
    for _ in range(100):
        if head.failure():
            break
        deadline.wait(0.05)
    assert "node 1" in (head.failure() or "")
    head.finish(1)

    port2 = free_port()
    head2 = HeadRendezvous("127.0.0.1", port2, {1}, "x:1", heartbeat_s=0.2)
    w2 = WorkerRendezvous.connect("127.0.0.1", port2, timeout=10)
    w2.report(1, "trainer", ok=True)
    head2.wait_joined(timeout=10)
    head2._closing.set()  # the head stops heartbeating without sending an exit code (a hung node 0)
    with pytest.raises(RendezvousError, match="no heartbeat from node 0"):
        w2.wait_exit(heartbeat_timeout=0.5)
    head2._server.close()
    w2.close()


def test_connect_gives_up_with_a_clear_message():
    with pytest.raises(RendezvousError, match="could not reach node 0's launcher"):
        WorkerRendezvous.connect("127.0.0.1", free_port(), timeout=0.5)


def test_a_stranger_learns_nothing_and_cannot_stop_the_job():
    """The control port is reachable by anyone on the network: without the job's token a peer
    gets a random challenge (no Ray address), and its "failed" line or fake join is ignored."""
    import json

    port = free_port()
    head = HeadRendezvous("127.0.0.1", port, {1}, "10.0.0.4:6379", heartbeat_s=0.2, secret="tok")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        first = json.loads(s.makefile().readline())
        assert set(first) == {"challenge"}, first  # no head address for a stranger
        s.sendall(b'{"hello": "guess", "challenge": "x"}\n{"failed": "stop everything"}\n')
        s.sendall(b'{"rank": 1, "role": "trainer", "ok": false, "message": "fake"}\n')
        assert s.recv(1024) == b""  # dropped unheard
    with pytest.raises(RendezvousError, match="do not share the job's Ray token"):
        WorkerRendezvous.connect("127.0.0.1", port, timeout=5, secret="another job's token")
    w = WorkerRendezvous.connect("127.0.0.1", port, timeout=10, secret="tok")
    assert w.ray_address == "10.0.0.4:6379"
    w.report(1, "trainer", ok=True)
    head.wait_joined(timeout=10)
    assert head.failure() is None
    head.finish(0)
    assert w.wait_exit(heartbeat_timeout=5) == 0
    w.close()
