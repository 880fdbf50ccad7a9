"""gateway.tasks.Tasks: the one helper every component starts its background tasks with."""

from __future__ import annotations

import asyncio
import logging

import pytest

from gateway.tasks import Tasks


async def test_a_failed_task_is_logged_with_its_name_and_handed_to_on_error(caplog: pytest.LogCaptureFixture) -> None:
    tasks = Tasks()
    errors: list[BaseException] = []

    async def boom() -> None:
        raise RuntimeError("broken")

    task = tasks.spawn(boom(), "wakegate-test-boom", on_error=errors.append)
    with caplog.at_level(logging.ERROR, logger="gateway.tasks"):
        await asyncio.wait_for(tasks.join(), 10)
    assert task.done() and len(tasks) == 0
    assert [str(e) for e in errors] == ["broken"]
    assert "background task wakegate-test-boom failed" in caplog.text


async def test_close_cancels_what_still_runs_and_waits_for_it() -> None:
    tasks = Tasks()
    stopped = asyncio.Event()

    async def forever() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            stopped.set()

    task = tasks.spawn(forever())
    await asyncio.sleep(0)  # let it start
    assert len(tasks) == 1
    await asyncio.wait_for(tasks.close(), 10)
    assert task.cancelled() and stopped.is_set() and len(tasks) == 0


async def test_join_waits_for_tasks_started_by_tasks() -> None:
    tasks = Tasks()
    order: list[str] = []

    async def child() -> None:
        await asyncio.sleep(0)
        order.append("child")

    async def parent() -> None:
        tasks.spawn(child())
        order.append("parent")

    tasks.spawn(parent())
    await asyncio.wait_for(tasks.join(), 10)
    assert order == ["parent", "child"] and len(tasks) == 0


async def test_cancel_is_not_an_error() -> None:
    tasks = Tasks()
    errors: list[BaseException] = []
    task = tasks.spawn(asyncio.Event().wait(), on_error=errors.append)
    tasks.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0)  # the done callback runs
    assert errors == [] and len(tasks) == 0
