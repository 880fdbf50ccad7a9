"""Background tasks owned by one component (the lifecycle, the server, a backend).

``asyncio.TaskGroup`` does not fit here: its tasks are awaited in one ``async with`` block and one
failure cancels the rest, while a gateway component starts tasks for as long as it runs (a wake, a
held request, a watch), a failed one must not stop the others, and the component's ``close`` cancels
whatever is left. A task that fails is logged with its name, and may also be handed to ``on_error``
(the server answers 500 for a request whose handler raised).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Callable, Coroutine
from typing import Any

_log = logging.getLogger(__name__)


class Tasks:
    """A set of running tasks: :meth:`spawn` starts one, :meth:`close` cancels and awaits them all.

    Cheap per task (a gateway may hold 10,000s of requests in tasks): one shared done-callback, and
    an entry in a side table only for a task given ``on_error``."""

    __slots__ = ("_done_cb", "_on_error", "_tasks")

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()
        self._on_error: dict[asyncio.Task[Any], Callable[[BaseException], None]] = {}
        self._done_cb = self._done

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str | None = None,
              on_error: Callable[[BaseException], None] | None = None,
              context: contextvars.Context | None = None) -> asyncio.Task[Any]:
        """Run ``coro`` in a task kept until it ends. A failure is logged, then given to ``on_error``."""
        task = asyncio.get_running_loop().create_task(coro, name=name, context=context)
        self._tasks.add(task)
        if on_error is not None:
            self._on_error[task] = on_error
        task.add_done_callback(self._done_cb)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        on_error = self._on_error.pop(task, None)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            _log.error("background task %s failed", task.get_name(), exc_info=exc)
            if on_error is not None:
                on_error(exc)

    def cancel(self) -> None:
        """Cancel every running task (without waiting for them)."""
        for task in list(self._tasks):
            task.cancel()

    async def close(self) -> None:
        """Cancel every running task and wait until all of them have ended."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def join(self) -> None:
        """Wait until no task is running (tasks started meanwhile included); failures are logged."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def __len__(self) -> int:
        return len(self._tasks)
