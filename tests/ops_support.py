"""A small real Backend for the admin / metrics / logs tests: a scripted project table whose
"processes" are real aiohttp servers on loopback, started on scale-up and stopped on scale-down."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence

from aiohttp import web

from gateway.backends.base import Backend, BackendError, Endpoint, ProjectInfo, ProjectSettings


def project_app(name: str, body: str | None = None) -> web.Application:
    """An upstream that answers every path with a text naming the project (``/slow`` takes 1.5 s)."""

    async def handle(request: web.Request) -> web.Response:
        if request.path == "/slow":
            await asyncio.sleep(float(request.query.get("s", "1.5")))
        return web.Response(text=body or f"hello from {name} {request.path}", content_type="text/html")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


class ScriptedBackend(Backend):
    """Projects from a dict. ``scale_up`` starts a real HTTP server for the project (after
    ``ready_delay_s``), ``scale_down`` stops it. Names in ``fail`` raise on scale-up; names in
    ``never_ready`` scale up without ever reporting an endpoint."""

    def __init__(
        self,
        names: Sequence[str] | Mapping[str, ProjectSettings],
        *,
        ready_delay_s: float = 0.0,
        fail: Sequence[str] = (),
        never_ready: Sequence[str] = (),
        exits: Sequence[str] = (),
    ) -> None:
        settings = names if isinstance(names, Mapping) else {n: ProjectSettings() for n in names}
        self.table = {n: ProjectInfo(n, s, location=f"scripted {n}") for n, s in settings.items()}
        self.ready_delay_s = ready_delay_s
        self.fail = set(fail)
        self.never_ready = set(never_ready)
        self.exits = set(exits)  # scale up "works", then the process dies: wake_failed
        self.is_ready = False
        self.scale_ups: list[str] = []
        self.scale_downs: list[str] = []
        self.runners: dict[str, web.AppRunner] = {}
        self.scaled_up = asyncio.Event()

    async def start(self) -> None:
        self.is_ready = True

    async def close(self) -> None:
        for name in list(self.runners):
            await self._stop(name)

    @property
    def ready(self) -> bool:
        return self.is_ready

    def projects(self) -> Mapping[str, ProjectInfo]:
        return self.table

    def remove(self, name: str) -> None:
        """Drop a project from the table, as a deleted projects-file entry would."""
        del self.table[name]
        assert self.listener is not None
        self.listener.projects_changed()

    async def scale_up(self, name: str) -> None:
        self.scale_ups.append(name)
        self.scaled_up.set()
        if name in self.fail:
            raise BackendError(f"cannot start {name}: scripted failure")
        if name in self.never_ready or name in self.runners:
            return
        loop = asyncio.get_running_loop()
        if name in self.exits:
            loop.call_later(self.ready_delay_s, self._report_failed, name)
            return
        loop.call_later(self.ready_delay_s, lambda: loop.create_task(self._start_server(name)))

    def _report_failed(self, name: str) -> None:
        assert self.listener is not None
        self.listener.wake_failed(name, f"process of {name} exited with status 3")

    async def _start_server(self, name: str) -> None:
        runner = web.AppRunner(project_app(name), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.runners[name] = runner
        port = int(runner.addresses[0][1])
        assert self.listener is not None
        self.listener.endpoints_changed(name, [Endpoint("127.0.0.1", port)])

    async def scale_down(self, name: str) -> bool:
        self.scale_downs.append(name)
        await self._stop(name)
        return True

    async def _stop(self, name: str) -> None:
        runner = self.runners.pop(name, None)
        if runner is not None:
            await runner.cleanup()

