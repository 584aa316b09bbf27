"""The replica watchdog's rules (trainer/replica_health.py) with fake checks and a fake clock:
how many failed checks make a replica hung, what resets the count, and the restart backoff.
tests/integration/test_pipeline.py::test_sampler_replica_stopped_mid_run runs it for real."""

from __future__ import annotations

import asyncio

from trainer.replica_health import ReplicaWatchdog, RestartBackoff


class _Checks:
    """Scripted /health outcomes per URL; records the hung calls."""

    def __init__(self, script: dict[str, list[bool]]):
        self.script = {u: list(v) for u, v in script.items()}
        self.hung: list[tuple[int, str]] = []

    async def check(self, url: str) -> bool:
        return self.script[url].pop(0)

    async def on_hung(self, index: int, url: str) -> None:
        self.hung.append((index, url))


def _rounds(dog: ReplicaWatchdog, n: int) -> list[list[int]]:
    async def go():
        return [await dog.check_once() for _ in range(n)]

    return asyncio.run(go())


def test_a_replica_is_hung_after_the_set_number_of_failed_checks_in_a_row():
    checks = _Checks({"a": [True] * 5, "b": [False, False, False]})
    dog = ReplicaWatchdog(checks.check, checks.on_hung, interval_s=1, failures=3)
    dog.watch(0, "a")
    dog.watch(1, "b")
    assert _rounds(dog, 3) == [[], [], [1]]
    assert checks.hung == [(1, "b")] and dog.hung_total == 1
    assert _rounds(dog, 2) == [[], []]  # no longer watched: declared once, not every round
    assert checks.script["b"] == []


def test_one_answer_resets_the_count():
    checks = _Checks({"a": [False, False, True, False, False, True]})
    dog = ReplicaWatchdog(checks.check, checks.on_hung, interval_s=1, failures=3)
    dog.watch(0, "a")
    assert _rounds(dog, 6) == [[]] * 6 and checks.hung == []


def test_a_replica_watched_again_after_a_restart_starts_from_zero():
    checks = _Checks({"a": [False, False], "a2": [False, False, False]})
    dog = ReplicaWatchdog(checks.check, checks.on_hung, interval_s=1, failures=3)
    dog.watch(0, "a")
    _rounds(dog, 2)
    dog.unwatch(0)  # the driver restarts it
    dog.watch(0, "a2")
    assert _rounds(dog, 3) == [[], [], [0]] and checks.hung == [(0, "a2")]


def test_a_check_that_finishes_after_the_replica_was_restarted_does_not_count():
    dog: ReplicaWatchdog

    async def check(url: str) -> bool:
        dog.unwatch(0)  # the restart happened while this check was waiting
        dog.watch(0, "new")
        return False

    async def on_hung(index: int, url: str) -> None:
        raise AssertionError("a stale result declared the new replica hung")

    dog = ReplicaWatchdog(check, on_hung, interval_s=1, failures=1)
    dog.watch(0, "old")
    assert _rounds(dog, 1) == [[]]


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_backoff_is_immediate_first_then_doubles_up_to_the_cap():
    clock = _Clock()
    b = RestartBackoff(base_s=10, max_s=35, clock=clock)
    assert b.delay(0) == 0
    waits = []
    for _ in range(4):
        b.restarted(0)
        waits.append(b.delay(0))
        clock.now += waits[-1]  # it restarts as soon as allowed and fails again at once
    assert waits == [10, 20, 35, 35]
    assert b.delay(1) == 0  # per replica


def test_backoff_counts_time_already_waited_and_resets_after_a_healthy_stretch():
    clock = _Clock()
    b = RestartBackoff(base_s=10, max_s=60, clock=clock)
    b.restarted(0)
    clock.now += 4
    assert b.delay(0) == 6
    b.restarted(0)
    clock.now += 61  # served longer than max_s since the last restart: a fresh streak
    assert b.delay(0) == 0
    b.restarted(0)
    assert b.delay(0) == 10
