"""Shared test helpers: a real Backend whose projects are real local servers, an in-process
gateway, and a raw HTTP/1.1 client that shows exactly what went over the wire.

- :class:`TableBackend` serves a fixed table of projects. Each project has an :class:`Upstream`
  (an aiohttp app or a raw asyncio server); ``scale_up`` starts it and reports its endpoint through
  ``listener.endpoints_changed``; ``scale_down`` stops it. Scale calls are counted.
- :func:`running_gateway` runs Lifecycle + PublicServer on 127.0.0.1:0.
- :class:`RawClient` speaks raw bytes and parses responses with llhttp (``HEAD``-aware, 1xx
  interim responses kept apart), so tests can send hostile input and check framing.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httptools
from aiohttp import web

from gateway.backends.base import Backend, Endpoint, ProjectInfo, ProjectSettings
from gateway.config import HostPort, Settings
from gateway.lifecycle import Lifecycle
from gateway.routing import Router
from gateway.server import PublicServer, RequestObserver

DOMAIN = "example.test"
STEP_TIMEOUT_S = 20.0


def host(project: str) -> bytes:
    """The Host value that routes to ``project``."""
    return f"{project}.{DOMAIN}".encode()


# --- upstreams ------------------------------------------------------------------------------------


class Upstream:
    """Something that listens on 127.0.0.1 for one project."""

    endpoint: Endpoint | None = None
    accepts = 0  # TCP connections accepted

    async def start(self) -> Endpoint:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError


class AppUpstream(Upstream):
    """An aiohttp application as a project's process."""

    def __init__(self, app: web.Application | Callable[[], web.Application]) -> None:
        self._factory = app if callable(app) and not isinstance(app, web.Application) else (lambda: app)
        self._runner: web.AppRunner | None = None
        self._server: asyncio.Server | None = None
        self.accepts = 0

    async def start(self) -> Endpoint:
        app = self._factory()
        assert isinstance(app, web.Application)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.1)
        await self._runner.setup()
        server = self._runner.server
        assert server is not None

        def counting_factory() -> Any:
            self.accepts += 1
            return server()

        self._server = await asyncio.get_running_loop().create_server(counting_factory, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.endpoint = Endpoint("127.0.0.1", port)
        return self.endpoint

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


RawHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class RawUpstream(Upstream):
    """A raw asyncio server: ``handler(reader, writer)`` runs per accepted connection."""

    def __init__(self, handler: RawHandler) -> None:
        self.handler = handler
        self.accepts = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> Endpoint:
        async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.accepts += 1
            self._writers.add(writer)
            try:
                await self.handler(reader, writer)
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                self._writers.discard(writer)
                writer.close()

        self._server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.endpoint = Endpoint("127.0.0.1", port)
        return self.endpoint

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for w in list(self._writers):
                w.transport.abort()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
            self._server = None


async def read_request_head(reader: asyncio.StreamReader) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """Read one request head from a raw upstream connection: (request line, fields)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head[:-4].split(b"\r\n")
    fields = [(n, v.strip()) for n, _, v in (line.partition(b":") for line in lines[1:])]
    return lines[0], fields


def field_values(fields: list[tuple[bytes, bytes]], name: bytes) -> list[bytes]:
    return [v for n, v in fields if n.lower() == name.lower()]


# --- backend --------------------------------------------------------------------------------------


class TableBackend(Backend):
    """A fixed table of projects, each run by an :class:`Upstream` the test controls."""

    def __init__(self, upstreams: Mapping[str, Upstream], settings: Mapping[str, ProjectSettings] | None = None,
                 *, running: tuple[str, ...] = ()) -> None:
        self.upstreams = dict(upstreams)
        settings = settings or {}
        self.table = {n: ProjectInfo(n, settings.get(n, ProjectSettings()), location=f"test {n}") for n in upstreams}
        self.running = set(running)  # started by start(), as if found running
        self.scale_ups: Counter[str] = Counter()
        self.scale_downs: Counter[str] = Counter()
        self.discovered: Counter[str] = Counter()
        self.ready_gate: dict[str, asyncio.Event] = {}  # scale_up waits for the event before starting

    async def start(self) -> None:
        for name in self.running:
            await self._start(name)

    async def close(self) -> None:
        for up in self.upstreams.values():
            await up.stop()

    def projects(self) -> Mapping[str, ProjectInfo]:
        return self.table

    async def discover(self, name: str) -> ProjectInfo | None:
        self.discovered[name] += 1
        return self.table.get(name)

    async def scale_up(self, name: str) -> None:
        self.scale_ups[name] += 1
        gate = self.ready_gate.get(name)
        if gate is not None:
            asyncio.get_running_loop().create_task(self._start_after(name, gate))
            return
        await self._start(name)

    async def _start_after(self, name: str, gate: asyncio.Event) -> None:
        await gate.wait()
        await self._start(name)

    async def _start(self, name: str) -> None:
        up = self.upstreams[name]
        ep = up.endpoint if up.endpoint is not None and self._listening(up) else await up.start()
        assert self.listener is not None
        self.listener.endpoints_changed(name, [ep])

    @staticmethod
    def _listening(up: Upstream) -> bool:
        return getattr(up, "_server", None) is not None

    async def scale_down(self, name: str) -> bool:
        self.scale_downs[name] += 1
        await self.upstreams[name].stop()
        assert self.listener is not None
        self.listener.endpoints_changed(name, [])
        return True

    @property
    def scale_calls(self) -> int:
        return sum(self.scale_ups.values()) + sum(self.scale_downs.values())


# --- in-process gateway ---------------------------------------------------------------------------


@dataclass
class Gateway:
    settings: Settings
    backend: TableBackend
    lifecycle: Lifecycle
    server: PublicServer

    @property
    def port(self) -> int:
        assert self.server.port is not None
        return self.server.port

    def client(self) -> RawClient:
        return RawClient(self.port)


@contextlib.asynccontextmanager
async def running_gateway(backend: TableBackend, observer: RequestObserver | None = None,
                          **overrides: Any) -> AsyncIterator[Gateway]:
    """Lifecycle + PublicServer for ``backend`` on 127.0.0.1:0 (reaper effectively off)."""
    base = Settings(domain=DOMAIN, listen=HostPort("127.0.0.1", 0), reap_interval_s=3600.0, hold_timeout_s=10.0)
    settings = dataclasses.replace(base, **overrides)
    lifecycle = Lifecycle(backend, settings)
    await lifecycle.start()
    server = PublicServer(settings, lifecycle, Router(settings.domain), observer=observer)
    await server.start()
    try:
        yield Gateway(settings, backend, lifecycle, server)
    finally:
        await server.stop_accepting()
        server.close()
        await lifecycle.close()


# --- raw client -----------------------------------------------------------------------------------


@dataclass
class Response:
    status: int
    reason: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    interim: list[int] = field(default_factory=list)  # 1xx statuses seen before this response
    chunked: bool = False
    complete: bool = True  # False: the connection ended before the body did

    def header(self, name: str) -> str | None:
        for n, v in self.headers:
            if n.decode().lower() == name.lower():
                return v.decode("latin-1")
        return None

    def all(self, name: str) -> list[str]:
        return [v.decode("latin-1") for n, v in self.headers if n.decode().lower() == name.lower()]

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


class _ResponseSink:
    def __init__(self) -> None:
        self.done: list[Response] = []
        self.cur: Response | None = None
        self.in_head = False
        self.parser: Any = None
        self.interim: list[int] = []
        self.body: list[bytes] = []
        self.head_only = False

    def on_message_begin(self) -> None:
        self.cur = Response(0, b"", [], b"")
        self.body = []
        self.in_head = True

    def on_status(self, reason: bytes) -> None:
        assert self.cur is not None
        self.cur.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.in_head and self.cur is not None:
            self.cur.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.in_head = False
        assert self.cur is not None
        self.cur.status = self.parser.get_status_code()
        self.cur.chunked = any(n.lower() == b"transfer-encoding" for n, _ in self.cur.headers)

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        cur = self.cur
        assert cur is not None
        if cur.status < 200:
            self.interim.append(cur.status)
            return
        cur.body = b"".join(self.body)
        cur.interim = self.interim
        self.interim = []
        self.done.append(cur)
        self.cur = None


class RawClient:
    """One TCP connection to the gateway; raw bytes out, parsed responses in."""

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self.port = port
        self.host = host
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self._sink = _ResponseSink()
        self._parser: Any = None
        self.eof = False
        self.upgraded_tail = b""

    async def __aenter__(self) -> RawClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    async def connect(self) -> None:
        self.reader, self.writer = await asyncio.wait_for(asyncio.open_connection(self.host, self.port),
                                                          STEP_TIMEOUT_S)
        self._new_parser()

    def _new_parser(self) -> None:
        self._sink = _ResponseSink()
        self._parser = httptools.HttpResponseParser(self._sink)
        self._sink.parser = self._parser

    def close(self) -> None:
        if self.writer is not None:
            self.writer.transport.abort()

    async def send(self, data: bytes) -> None:
        assert self.writer is not None
        self.writer.write(data)
        await self.writer.drain()

    async def request(self, method: str, path: str, project: str | None = "app",
                      headers: Mapping[str, str] | None = None, body: bytes | None = None, *,
                      head_only: bool | None = None) -> Response:
        """Send one simple request and read its response."""
        await self.send(build_request(method, path, project, headers, body))
        return await self.response(head_only=method == "HEAD" if head_only is None else head_only)

    async def response(self, *, head_only: bool = False, limit_s: float = STEP_TIMEOUT_S) -> Response:
        """Read the next final response (1xx are collected into ``interim``)."""
        async with asyncio.timeout(limit_s):
            while True:
                sink = self._sink
                if sink.done:
                    return sink.done.pop(0)
                if head_only and sink.cur is not None and not sink.in_head:
                    cur = sink.cur
                    if cur.status >= 200:
                        # llhttp does not know about HEAD: finish the message here, start afresh.
                        cur.body = b""
                        cur.interim = sink.interim
                        self._new_parser()
                        return cur
                if self.eof:
                    cur = sink.cur
                    if cur is not None and cur.status >= 200:
                        cur.body = b"".join(sink.body)
                        cur.complete = _close_delimited(cur)
                        sink.cur = None
                        return cur
                    raise ConnectionError("connection closed before a complete response")
                assert self.reader is not None
                try:
                    data = await self.reader.read(65536)
                except ConnectionResetError:
                    data = b""
                if not data:
                    self.eof = True
                    continue
                try:
                    self._parser.feed_data(data)
                except httptools.HttpParserUpgrade as exc:
                    self.upgraded_tail = data[exc.args[0]:]
                    sink.done.append(_upgraded(sink))

    async def read_until_closed(self, limit_s: float = STEP_TIMEOUT_S) -> bytes:
        """Everything until the gateway closes the connection."""
        assert self.reader is not None
        chunks = []
        async with asyncio.timeout(limit_s):
            while True:
                try:
                    data = await self.reader.read(65536)
                except ConnectionResetError:
                    break
                if not data:
                    break
                chunks.append(data)
        return b"".join(chunks)


def _close_delimited(r: Response) -> bool:
    has_length = any(n.lower() == b"content-length" for n, _ in r.headers)
    return not has_length and not r.chunked


def _upgraded(sink: _ResponseSink) -> Response:
    cur = sink.cur
    assert cur is not None
    sink.cur = None
    return cur


def build_request(method: str, path: str, project: str | None = "app", headers: Mapping[str, str] | None = None,
                  body: bytes | None = None) -> bytes:
    """A well-formed HTTP/1.1 request (Host routes to ``project`` unless ``headers`` has one)."""
    lines = [f"{method} {path} HTTP/1.1"]
    given = {k.lower() for k in (headers or {})}
    if project is not None and "host" not in given:
        lines.append(f"Host: {project}.{DOMAIN}")
    for k, v in (headers or {}).items():
        lines.append(f"{k}: {v}")
    if body is not None and "content-length" not in given and "transfer-encoding" not in given:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")
