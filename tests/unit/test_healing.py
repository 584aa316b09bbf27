"""Between-steps healing (trainer/healing.py) with fake replica actors and a fake clock: a dead
replica is restarted, resynced and put back; one that fails to restart stays out of rotation
until its backoff has passed, without stopping the run. The real thing: the chaos tests in
tests/integration/test_pipeline.py."""

from __future__ import annotations

import asyncio
import json

import pytest

from sampler.config import ReplicaWatchdog as WatchdogConfig
from trainer.healing import ReplicaHealer
from trainer.replica_health import RestartBackoff
from trainer.run_files import RunFiles


class _Method:
    def __init__(self, fn):
        self.fn = fn

    def remote(self, *args):
        fut = asyncio.get_running_loop().create_future()
        try:
            fut.set_result(self.fn(*args))
        except Exception as e:  # delivered to the awaiting caller, as Ray does
            fut.set_exception(e)
        return fut


class _Replica:
    """A SamplerReplica actor: `start` fails while `fail_starts` > 0."""

    def __init__(self, index: int, fail_starts: int = 0):
        self.index, self.alive, self.fail_starts, self.generation = index, True, fail_starts, 0
        self.start = _Method(self._start)
        self.info = _Method(self._info)
        self.kill = _Method(self._kill)

    @property
    def url(self) -> str:
        return f"http://r{self.index}-{self.generation}"

    def _start(self, timeout_s):
        if self.fail_starts:
            self.fail_starts -= 1
            raise RuntimeError("sampler exited with 1 while starting")
        self.generation += 1
        self.alive = True
        return self.url

    def _info(self):
        return {"index": self.index, "url": self.url, "alive": self.alive}

    def _kill(self):
        self.alive = False


class _Client:
    def __init__(self, urls):
        self.urls = list(urls)
        self.served: dict[str, int] = {}

    def set_urls(self, urls):
        self.urls = list(urls)

    async def versions(self, urls=None):
        return {u: self.served[u] for u in urls or self.urls if u in self.served}


class _Clock:
    now = 100.0

    def __call__(self):
        return self.now


def _healer(tmp_path, replicas):
    client = _Client([r.url for r in replicas])
    rotations, resyncs = [], []

    async def rotation(urls):
        client.set_urls(urls)
        rotations.append(list(urls))

    async def resync(url, version, others):
        resyncs.append((url, version, list(others)))
        client.served[url] = version
        return {"weight_sync/probe_gap": 1e-7}

    cfg = WatchdogConfig(backoff_s=10, backoff_max_s=100)
    files = RunFiles(tmp_path)
    h = ReplicaHealer(replicas, client, cfg, 60, files.write_replicas, rotation, resync)
    clock = _Clock()
    h.backoff = RestartBackoff(cfg.backoff_s, cfg.backoff_max_s, clock=clock)
    return h, client, clock, rotations, resyncs


def test_a_dead_replica_is_restarted_resynced_and_put_back(tmp_path):
    replicas = [_Replica(0), _Replica(1)]
    h, client, _, rotations, resyncs = _healer(tmp_path, replicas)
    replicas[1].alive = False
    asyncio.run(h.heal(7))
    assert resyncs == [("http://r1-1", 7, ["http://r0-0"])]
    assert rotations == [["http://r0-0"], ["http://r0-0", "http://r1-1"]]
    assert client.urls == ["http://r0-0", "http://r1-1"] and h.restarts == 1
    written = json.loads((tmp_path / "replicas.json").read_text())
    assert [(r["url"], r["alive"], r["version"]) for r in written] == [
        ("http://r0-0", True, 7),
        ("http://r1-1", True, 7),
    ]


def test_a_replica_that_fails_to_restart_waits_out_its_backoff_out_of_rotation(tmp_path):
    replicas = [_Replica(0), _Replica(1, fail_starts=1)]
    h, client, clock, _, resyncs = _healer(tmp_path, replicas)
    replicas[1].alive = False
    asyncio.run(h.heal(3))  # the restart fails: logged, the run goes on with replica 0
    assert client.urls == ["http://r0-0"] and h.restarts == 0 and resyncs == []
    clock.now += 5
    asyncio.run(h.heal(4))  # still backing off (10 s): not even tried
    assert replicas[1].generation == 0 and client.urls == ["http://r0-0"]
    clock.now += 5
    asyncio.run(h.heal(5))
    assert client.urls == ["http://r0-0", "http://r1-1"] and h.restarts == 1
    assert resyncs == [("http://r1-1", 5, ["http://r0-0"])]


def test_a_restarted_replica_on_the_wrong_version_stops_the_run(tmp_path):
    replicas = [_Replica(0), _Replica(1)]
    h, client, _, _, _ = _healer(tmp_path, replicas)

    async def resync(url, version, others):  # the push "succeeded" but it serves another
        client.served[url] = version - 1
        return {}

    h._resync = resync
    replicas[1].alive = False
    with pytest.raises(RuntimeError, match="replica 1 reports version 1 after resync to 2"):
        asyncio.run(h.heal(2))
