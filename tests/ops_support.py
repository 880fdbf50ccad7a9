"""Test support for the ops tests (admin, metrics, logs, drain, waiting page): a scripted Backend whose
"processes" are real aiohttp servers on loopback (started on scale-up, stopped on scale-down), and
a real ``wakegate serve`` child process with real project processes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Self

import aiohttp
import yaml
from aiohttp import web

from gateway.backends.base import Backend, BackendError, Endpoint, ProjectInfo, ProjectSettings

STEP_TIMEOUT_S = 20.0


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

    async def scale_down(self, name: str, last_activity_wall_s: float | None = None) -> bool:
        self.scale_downs.append(name)
        await self._stop(name)
        return True

    async def _stop(self, name: str) -> None:
        runner = self.runners.pop(name, None)
        if runner is not None:
            await runner.cleanup()



# --- a real `wakegate serve` process with real project processes ----------------------------------

# A project process (stdlib only, so it boots fast): waits BOOT_S, then serves on $PORT. ``/slow``
# streams its body in SLOW_PARTS pieces over SLOW_S seconds and prints "slow-started" first.
PROJECT_APP = r'''
import http.server, os, sys, time
time.sleep(float(os.environ.get("BOOT_S", "0")))
NAME = os.environ.get("NAME", "app")

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        if self.path.startswith("/slow"):
            print("slow-started", flush=True)
            parts = int(os.environ.get("SLOW_PARTS", "4"))
            piece = b"x" * 1000
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(parts * len(piece)))
            self.end_headers()
            for _ in range(parts):
                time.sleep(float(os.environ.get("SLOW_S", "2")) / parts)
                self.wfile.write(piece)
                self.wfile.flush()
            return
        body = (f"<!doctype html><title>{NAME}</title><h1 id='real'>real content of {NAME}</h1>"
                f"<p>path {self.path}</p>").encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
'''


def write_projects(directory: Path, projects: Mapping[str, Mapping[str, object]]) -> Path:
    """A projects file whose projects all run :data:`PROJECT_APP`; ``projects`` maps a name to extra
    settings, with ``env`` merged into the app's environment (BOOT_S, SLOW_S, ...)."""
    (directory / "app.py").write_text(PROJECT_APP)
    table: dict[str, dict[str, object]] = {}
    for name, extra in projects.items():
        spec: dict[str, object] = {"command": ["{python}", "{here}/app.py"]}
        env = {"NAME": name, "PYTHONUNBUFFERED": "1"}
        for key, val in extra.items():
            if key == "env":
                assert isinstance(val, Mapping)
                env.update({str(k): str(v) for k, v in val.items()})
            else:
                spec[key] = val
        spec["env"] = env
        table[name] = spec
    path = directory / "projects.yaml"
    path.write_text(yaml.safe_dump({"projects": table}))
    return path


class WakegateProcess:
    """A ``wakegate`` command as a child process with JSON logs on stderr, read as they come."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[dict[str, Any]] = []
        self.raw: list[str] = []
        self._changed = asyncio.Condition()
        self._reader = asyncio.get_running_loop().create_task(self._read())
        self.port = 0
        self.admin_port = 0

    @classmethod
    async def launch(cls, argv: Sequence[str], ready: Callable[[dict[str, Any]], bool], *,
                     env: Mapping[str, str] | None = None, drop_env: tuple[str, ...] = (),
                     timeout_s: float = 30) -> tuple[Self, dict[str, Any]]:
        """``python -m gateway ARGV`` without the caller's ``WAKEGATE_*`` (and ``drop_env``) variables;
        waits for the first log line ``ready`` accepts and returns it too."""
        environ = {k: v for k, v in os.environ.items() if not k.startswith("WAKEGATE_") and k not in drop_env}
        environ.update(env or {})
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", *argv, env=environ, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, start_new_session=True)
        child = cls(proc)
        try:
            line = await child.wait_event(ready, timeout_s)
        except BaseException:
            await child.kill()
            raise
        return child, line

    @classmethod
    async def start(cls, projects_file: Path, *flags: str, env: Mapping[str, str] | None = None) -> GatewayProcess:
        """Start on free loopback ports (domain ``localhost``) and wait for its ``listening`` line."""
        return await cls.spawn("--projects", str(projects_file), "--reap-interval", "3600", *flags, env=env)

    @classmethod
    async def spawn(cls, *args: str, env: Mapping[str, str] | None = None, drop_env: tuple[str, ...] = (),
                    timeout_s: float = 30) -> GatewayProcess:
        """``wakegate serve ARGS`` on free loopback ports (domain ``localhost``, JSON logs), without the
        caller's ``WAKEGATE_*`` (and ``drop_env``) variables; waits for its ``listening`` line."""
        gw, listening = await cls.launch(
            ("serve", "--domain", "localhost", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
             "--log-format", "json", *args), lambda e: e.get("event") == "listening",
            env=env, drop_env=drop_env, timeout_s=timeout_s)
        gw.port, gw.admin_port = int(listening["port"]), int(listening["admin_port"])
        return gw

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def text(self) -> str:
        """Everything the process wrote to stderr so far."""
        return "\n".join(self.raw)

    async def _read(self) -> None:
        assert self.proc.stderr is not None
        async for raw in self.proc.stderr:
            line = raw.decode(errors="replace").rstrip("\n")
            async with self._changed:
                self.raw.append(line)
                try:
                    parsed = json.loads(line)
                except ValueError:
                    parsed = None
                if isinstance(parsed, dict):
                    self.lines.append(parsed)
                self._changed.notify_all()
        async with self._changed:
            self._changed.notify_all()

    async def wait_event(self, predicate: Callable[[dict[str, Any]], bool], timeout_s: float = STEP_TIMEOUT_S,
                         ) -> dict[str, Any]:
        """The first log line (already seen or to come) for which ``predicate`` holds."""
        seen = 0
        async with asyncio.timeout(timeout_s), self._changed:
            while True:
                for line in self.lines[seen:]:
                    if predicate(line):
                        return line
                seen = len(self.lines)
                if self._reader.done():
                    raise AssertionError("the process exited; its output:\n" + self.text()[-4000:])
                await self._changed.wait()

    def events(self, name: str) -> list[dict[str, Any]]:
        return [line for line in self.lines if line.get("event") == name]

    async def wait_exit(self, timeout_s: float) -> int:
        code = await asyncio.wait_for(self.proc.wait(), timeout_s)
        await asyncio.wait_for(self._reader, timeout_s)
        return code

    async def kill(self) -> None:
        """Stop it for good (test teardown): SIGKILL to its whole session, then reap."""
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            await self.proc.wait()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


def ensure_debian_package(path: str, package: str) -> str:
    """``path`` from Debian's ``package`` (``make system-deps`` installs it; installed here when it
    is missing, so a test never skips for it)."""
    if not os.path.exists(path):
        subprocess.run(["apt-get", "update", "-qq"], check=True, timeout=300)
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", package], check=True,
                       timeout=600, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    assert os.path.exists(path), f"{path} is missing; run `make system-deps`"
    return path


async def assert_serves_web(base_url: str, timeout_s: float = 60.0) -> None:
    """A request for project ``web`` (:data:`PROJECT_APP`) through the gateway at ``base_url`` is
    proxied: 200 and the app's own page for that path."""
    async with aiohttp.ClientSession() as session, session.get(
            f"{base_url}/hello", headers={"Host": "web.localhost"},
            timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
        body = await resp.text()
    assert resp.status == 200 and "real content of web" in body and "path /hello" in body


#: ``wakegate serve`` (and ``demo``): :meth:`WakegateProcess.start` / :meth:`WakegateProcess.spawn`.
GatewayProcess = WakegateProcess
