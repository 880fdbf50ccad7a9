"""The controller's WorkQueue: each name queued once at its earliest due time, handed out in due order, and
to one worker at a time. Every wait is bounded; nothing asserts on wall-clock durations."""

from __future__ import annotations

import asyncio

from provisioner.controller import WorkQueue

BOUND_S = 10.0  # only ever reached when a test fails


async def get(queue: WorkQueue) -> str:
    async with asyncio.timeout(BOUND_S):
        return await queue.get()


async def settle() -> None:
    """Let every ready task run until it blocks again."""
    for _ in range(10):
        await asyncio.sleep(0)


async def test_a_name_added_twice_is_handed_out_once() -> None:
    queue = WorkQueue()
    queue.add("demo")
    queue.add("demo")
    assert len(queue) == 1
    assert await get(queue) == "demo"
    assert len(queue) == 0
    waiter = asyncio.create_task(queue.get())
    await settle()
    assert not waiter.done()  # nothing left: the second add did not queue it again
    queue.add("other")
    async with asyncio.timeout(BOUND_S):
        assert await waiter == "other"


async def test_names_come_out_in_due_order() -> None:
    queue = WorkQueue()
    queue.add("later", 0.3)
    queue.add("now")
    assert len(queue) == 2
    assert await get(queue) == "now"  # added after, but due first
    assert await get(queue) == "later"  # and the delayed one still comes, once due
    assert len(queue) == 0


async def test_a_delayed_name_is_not_handed_out_before_its_time() -> None:
    queue = WorkQueue()
    queue.add("demo", 3600)
    waiter = asyncio.create_task(queue.get())
    await settle()
    assert not waiter.done()
    assert len(queue) == 1
    queue.add("demo")  # the earlier due time wins, and wakes the waiting worker
    async with asyncio.timeout(BOUND_S):
        assert await waiter == "demo"
    assert len(queue) == 0


async def test_the_earliest_due_time_wins_whatever_the_order_of_adds() -> None:
    queue = WorkQueue()
    queue.add("a", 0)
    queue.add("a", 3600)  # a later time does not postpone it
    queue.add("b", 3600)
    queue.add("b", 0.05)  # an earlier one brings it forward
    assert len(queue) == 2
    assert await get(queue) == "a"
    assert await get(queue) == "b"


async def test_a_negative_delay_is_due_now_and_keeps_fifo_by_due_time() -> None:
    queue = WorkQueue()
    queue.add("second", 0.2)
    queue.add("first", -5)
    assert await get(queue) == "first"
    assert await get(queue) == "second"


async def test_a_name_being_worked_on_goes_to_no_second_worker_until_done() -> None:
    queue = WorkQueue()
    queue.add("demo")
    first = await get(queue)
    assert first == "demo"
    second = asyncio.create_task(queue.get())
    queue.add("demo")  # changed again while the first worker still holds it
    await settle()
    assert not second.done()
    assert len(queue) == 1  # queued, not lost
    queue.done("demo")
    async with asyncio.timeout(BOUND_S):
        assert await second == "demo"
    assert len(queue) == 0


async def test_two_concurrent_workers_with_one_name() -> None:
    queue = WorkQueue()
    queue.add("demo")
    workers = [asyncio.create_task(queue.get()) for _ in range(2)]
    await settle()
    done = [w for w in workers if w.done()]
    assert len(done) == 1 and done[0].result() == "demo"
    waiting = next(w for w in workers if not w.done())
    queue.done("demo")  # nothing queued: the other worker keeps waiting
    await settle()
    assert not waiting.done()
    queue.add("demo")
    async with asyncio.timeout(BOUND_S):
        assert await waiting == "demo"


async def test_a_busy_name_does_not_hold_up_the_others() -> None:
    queue = WorkQueue()
    queue.add("busy")
    assert await get(queue) == "busy"
    queue.add("busy")
    queue.add("other", 0.05)
    assert await get(queue) == "other"  # busy is due first but held by a worker
    assert len(queue) == 1
    queue.done("other")
    waiter = asyncio.create_task(queue.get())
    await settle()
    assert not waiter.done()
    queue.done("busy")
    async with asyncio.timeout(BOUND_S):
        assert await waiter == "busy"


async def test_done_of_a_name_not_held_is_harmless() -> None:
    queue = WorkQueue()
    queue.done("never-handed-out")
    queue.add("demo")
    assert await get(queue) == "demo"
    assert len(queue) == 0


async def test_len_counts_queued_names_not_busy_ones() -> None:
    queue = WorkQueue()
    assert len(queue) == 0
    for i, name in enumerate(("a", "b", "c")):
        queue.add(name, i * 3600)
    queue.add("a", 60)
    assert len(queue) == 3
    assert await get(queue) == "a"
    assert len(queue) == 2
    queue.add("a")
    assert len(queue) == 3
    queue.done("a")
    assert len(queue) == 3
