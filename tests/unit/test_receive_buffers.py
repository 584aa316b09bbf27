"""sampler.weights.receiver_buffers: kept buffers are reused only once released; extras only while the
loader holds every kept one, and freed once it lets go."""

from __future__ import annotations

import threading

import torch

from sampler.weights.receiver_buffers import ReceiveBuffers


def test_reuses_a_released_buffer_and_keeps_the_bound():
    pool = ReceiveBuffers("cpu", max_buffers=2)
    a = pool.acquire(100)
    view_of_a = a[10:20].view(torch.int16)  # what vLLM's loader would hold
    b = pool.acquire(100)
    assert a.data_ptr() != b.data_ptr() and pool.total_bytes == 200
    del a  # the receiver let go; the loader still holds `view_of_a`
    del b
    c = pool.acquire(80)  # b's buffer is free: reused, not a third one
    assert c.data_ptr() != view_of_a.untyped_storage().data_ptr()
    assert pool.total_bytes == 200 and pool.extra_allocations == 0
    del c, view_of_a
    d, e = pool.acquire(100), pool.acquire(100)
    assert pool.total_bytes == 200 and pool.peak_bytes == 200
    del d, e
    big = pool.acquire(300)  # a larger bucket replaces a released buffer
    assert big.numel() == 300 and pool.total_bytes == 400 and pool.extra_allocations == 0


def test_waits_for_a_release_while_the_loader_works_extra_only_when_it_starves():
    pool = ReceiveBuffers("cpu", max_buffers=2, wait_s=600)
    held = [pool.acquire(10)[2:4], pool.acquire(10)[2:4]]  # the loader holds both buckets
    got: list[torch.Tensor] = []
    t = threading.Thread(target=lambda: got.append(pool.acquire(10)))
    t.start()
    t.join(timeout=0.3)
    assert t.is_alive() and not got  # the loader still has work: wait, allocate nothing
    held.pop(0)  # the loader completes a layer and drops bucket 0's views
    t.join(timeout=30)
    assert got and pool.extra_allocations == 0 and pool.total_bytes == 20
    # Now the loader waits for the next bucket while holding both (a layer spans them):
    pool.loader_starved.set()
    again = [got.pop()[2:4]]
    extra = pool.acquire(10)  # no deadlock: a third buffer, counted
    assert pool.extra_allocations == 1 and pool.total_bytes == 30
    del extra, held, again
    pool.start_update()
    assert pool.total_bytes == 20 and pool.extra_allocations == 0  # the extra is freed


def test_a_loader_that_stopped_does_not_stall_the_receiver_past_its_wait():
    pool = ReceiveBuffers("cpu", max_buffers=2, wait_s=0.05)
    held = [pool.acquire(10)[2:4], pool.acquire(10)[2:4]]  # never released
    extra = pool.acquire(10)  # after wait_s: reads on into an extra buffer
    assert pool.extra_allocations == 1 and extra.numel() == 10
    del held
