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


class StaticUpstream(Upstream):
    """A project whose process runs elsewhere (another process, or a fixed address)."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self._server = True  # "listening": TableBackend reports it without starting anything

    async def start(self) -> Endpoint:
        assert self.endpoint is not None
        return self.endpoint

    async def stop(self) -> None:
        pass


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

    async def scale_down(self, name: str, last_activity_wall_s: float | None = None) -> bool:
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
    """Lifecycle + PublicServer for ``backend`` on 127.0.0.1:0 (reaper effectively off). A
    :class:`Watch` given as ``observer`` also observes the lifecycle."""
    base = Settings(domain=DOMAIN, listen=HostPort("127.0.0.1", 0), reap_interval_s=3600.0, hold_timeout_s=10.0)
    settings = dataclasses.replace(base, **overrides)
    lifecycle = Lifecycle(backend, settings, observer=observer if isinstance(observer, Watch) else None)
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


# --- a recording raw upstream ---------------------------------------------------------------------


@dataclass
class SeenRequest:
    """A request as the upstream parsed it (llhttp)."""

    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    chunked: bool
    connection: int  # which accepted connection (1-based) carried it

    def all(self, name: str) -> list[bytes]:
        return [v for n, v in self.headers if n.decode().lower() == name.lower()]

    def one(self, name: str) -> bytes | None:
        values = self.all(name)
        assert len(values) <= 1, (name, values)
        return values[0] if values else None


Responder = Callable[[SeenRequest, asyncio.StreamWriter], Awaitable[None]]


def simple_bytes(status: int = 200, body: bytes = b"ok", headers: Mapping[str, str] | None = None) -> bytes:
    """A complete HTTP/1.1 response with Content-Length."""
    lines = [f"HTTP/1.1 {status} X"]
    for k, v in (headers or {}).items():
        lines.append(f"{k}: {v}")
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


async def reply_ok(seen: SeenRequest, writer: asyncio.StreamWriter) -> None:
    """Default responder: 200 whose body names the method and target."""
    writer.write(simple_bytes(200, seen.method + b" " + seen.target))


class _RequestSink:
    def __init__(self) -> None:
        self.parser: Any = httptools.HttpRequestParser(self)
        self.done: list[SeenRequest] = []
        self.cur: SeenRequest | None = None
        self.in_head = False
        self.connection = 0
        self.upgrade_tail: bytes | None = None

    def on_message_begin(self) -> None:
        self.cur = SeenRequest(b"", b"", [], b"", False, self.connection)
        self.in_head = True

    def on_url(self, url: bytes) -> None:
        assert self.cur is not None
        self.cur.target += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.in_head and self.cur is not None:
            self.cur.headers.append((name, value))

    def on_headers_complete(self) -> None:
        assert self.cur is not None
        self.in_head = False
        self.cur.method = self.parser.get_method()
        self.cur.chunked = any(n.lower() == b"transfer-encoding" for n, _ in self.cur.headers)

    def on_body(self, body: bytes) -> None:
        assert self.cur is not None
        self.cur.body += body

    def on_message_complete(self) -> None:
        assert self.cur is not None
        self.done.append(self.cur)
        self.cur = None


class RecordingUpstream(RawUpstream):
    """A raw HTTP/1.1 server that records every request it parses and answers with ``responder``
    (which writes the response bytes itself, so it can stall, stream, or break the connection).
    Requests of one connection are answered in order; ``on_request`` fires as each is parsed."""

    def __init__(self, responder: Responder = reply_ok) -> None:
        super().__init__(self._serve)
        self.responder = responder
        self.seen: list[SeenRequest] = []
        self.arrived = asyncio.Condition()

    async def wait_seen(self, count: int) -> list[SeenRequest]:
        """Wait until ``count`` requests have arrived in all."""
        async with asyncio.timeout(STEP_TIMEOUT_S), self.arrived:
            await self.arrived.wait_for(lambda: len(self.seen) >= count)
        return self.seen

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sink = _RequestSink()
        sink.connection = self.accepts
        while True:
            data = await reader.read(65536)
            if not data:
                return
            try:
                sink.parser.feed_data(data)
            except httptools.HttpParserUpgrade:
                pass
            except httptools.HttpParserError:
                writer.write(simple_bytes(400, b"upstream: bad request"))
                await writer.drain()
                return
            while sink.done:
                seen = sink.done.pop(0)
                self.seen.append(seen)
                async with self.arrived:
                    self.arrived.notify_all()
                await self.responder(seen, writer)
                await writer.drain()


class Watch:
    """A RequestObserver and LifecycleObserver that records what happens and lets a test await a
    condition on it (woken by every callback, never polled)."""

    def __init__(self) -> None:
        self.finished: list[tuple[str | None, int]] = []
        self.errors: list[str] = []
        self.inflight = 0
        self.held = 0
        self.rejected: list[str] = []
        self.streams: list[str] = []
        self.wakes: list[tuple[str, str]] = []
        self._event = asyncio.Event()

    def _changed(self) -> None:
        self._event.set()

    async def until(self, predicate: Callable[[], bool], limit_s: float = STEP_TIMEOUT_S) -> None:
        """Wait until ``predicate()`` holds."""
        async with asyncio.timeout(limit_s):
            while not predicate():
                self._event.clear()
                await self._event.wait()

    # RequestObserver
    def request_finished(self, project: str | None, status: int, duration_s: float, page: bool = False) -> None:
        assert duration_s >= 0
        self.finished.append((project, status))
        self._changed()

    def stream_finished(self, kind: str, duration_s: float) -> None:
        assert duration_s >= 0 and kind in ("tunnel", "stream")
        self.streams.append(kind)
        self._changed()

    def upstream_error(self, reason: str) -> None:
        self.errors.append(reason)
        self._changed()

    def inflight_changed(self, delta: int) -> None:
        self.inflight += delta
        self._changed()

    # LifecycleObserver
    def wake_started(self, project: str) -> None:
        self._changed()

    def wake_finished(self, project: str, result: str, duration_s: float) -> None:
        self.wakes.append((project, result))
        self._changed()

    def held_changed(self, delta: int) -> None:
        self.held += delta
        self._changed()

    def held_rejected(self, reason: str) -> None:
        self.rejected.append(reason)
        self._changed()

    def scale_operation(self, direction: str, ok: bool) -> None:
        self._changed()

    def project_removed(self, project: str) -> None:
        self._changed()

    def project_changed(self, project: str) -> None:
        self._changed()


async def release_herd(gw: Gateway, watch: Watch, gate: asyncio.Event, n: int, path: str = "/herd") -> list[Response]:
    """Park ``n`` cold requests (one connection each) until all are held, open ``gate`` (the project
    becomes ready), and return every response in order."""
    clients = [gw.client() for _ in range(n)]
    for c in clients:
        await c.connect()
        await c.send(build_request("GET", path))
    await watch.until(lambda: watch.held == n)
    gate.set()
    try:
        return list(await asyncio.gather(*(c.response() for c in clients)))
    finally:
        for c in clients:
            c.close()
