"""Upstream HTTP/1.1 connections (llhttp response parsing) and their per-endpoint keep-alive pool.

A request owns its upstream connection for its whole exchange (no pipelining upstream), so a slow
project never blocks another one. Idle connections wait in a bounded LIFO list per endpoint and
leave it when they close, misbehave, or idle too long.

Response bodies are re-framed for the client: a ``Content-Length`` passes through; chunked and
close-delimited bodies are (re-)chunked for HTTP/1.1 clients. Whatever one read of the upstream
produces for the client is written with one call.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import httptools

from gateway.backends.base import Endpoint
from gateway.headers import FRAME_CHUNKED, FRAME_CLOSE, FRAME_NONE, relay_response_head

if TYPE_CHECKING:
    from gateway.forward.client import Exchange

HttpParserError: type[Exception] = httptools.HttpParserError
HttpParserUpgrade: type[Exception] = httptools.HttpParserUpgrade

_CRLF = b"\r\n"
_LAST_CHUNK = b"0\r\n\r\n"


class UpstreamConnection(asyncio.Protocol):
    """One connection to a project endpoint; serves one exchange at a time."""

    def __init__(self, pool: UpstreamPool, endpoint: Endpoint) -> None:
        self.pool = pool
        self.endpoint = endpoint
        self.idle_list = pool.idle_list(endpoint)
        self.transport: asyncio.Transport | None = None
        self.parser: Any = httptools.HttpResponseParser(self)
        self.exchange: Exchange | None = None
        self.closed = False
        self.idle_since = 0.0
        self.read_paused = False
        self.tunnel = False
        self.got_bytes = False
        self._out: asyncio.Transport | None = None
        self._pending: list[bytes] = []  # for the client, from the current read
        self._headers: list[tuple[bytes, bytes]] = []
        self._interim = False
        self._status = 0
        self._framing = FRAME_NONE
        self._until_close = False
        self._keep_alive = False
        self._done = False
        self._extra = False
        self._stale_parser = False

    # --- asyncio.Protocol --------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        ex = self.exchange
        if ex is None:
            # An idle connection must stay silent; anything else means it is unusable.
            self.abort()
            return
        if self.tunnel:
            out = self._out
            if out is not None:
                out.write(data)
            return
        self.got_bytes = True
        try:
            self.parser.feed_data(data)
        except HttpParserUpgrade as exc:
            self._flush()
            self._upgraded(ex, data[exc.args[0]:])
            return
        except HttpParserError as exc:
            if self._done:
                self._extra = True  # junk after a complete response: deliver it, drop the connection
            else:
                self._flush()
                self._broken(ex, "protocol", f"invalid response from the project: {exc}")
                return
        if self._done:
            self._finish_response(
                ex,
                self._keep_alive and not self._extra and not self._until_close and ex.request_done
                and ex.upgrade is None,
            )
        elif self._pending:
            self._flush()

    def _flush(self) -> None:
        pending = self._pending
        if pending:
            out = self._out
            if out is not None:
                if len(pending) == 1:
                    out.write(pending[0])
                else:
                    out.writelines(pending)
            self._pending = []

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        ex = self.exchange
        if ex is None:
            self.pool.discard(self)
            return
        self.exchange = None
        if self.tunnel:
            ex.tunnel_closed()
            return
        self._flush()
        if self._done or (self._until_close and ex.head_sent):
            # A close-delimited body ends here: the only way it can.
            self._done = True
            self._finish_response(ex, reusable=False)
            return
        if not ex.head_sent:
            ex.upstream_failed("reset", "the project closed the connection before responding")
        else:
            ex.upstream_broken()

    def pause_writing(self) -> None:
        ex = self.exchange
        if ex is not None:
            ex.conn.set_upstream_backpressure(True)

    def resume_writing(self) -> None:
        ex = self.exchange
        if ex is not None:
            ex.conn.set_upstream_backpressure(False)

    # --- flow control from the client side ---------------------------------------------------------

    def pause_reading(self) -> None:
        if not self.read_paused and self.transport is not None and not self.closed:
            self.read_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.read_paused and self.transport is not None and not self.closed:
            self.read_paused = False
            self.transport.resume_reading()

    def abort(self) -> None:
        """Drop the connection at once (RST); it is never reused."""
        self.closed = True
        self.exchange = None
        if self.transport is not None:
            self.transport.abort()

    # --- exchange ----------------------------------------------------------------------------------

    def start(self, ex: Exchange, head: bytes) -> None:
        """Begin serving ``ex``: send its request head (the caller streams the body)."""
        self.exchange = ex
        self._out = ex.conn.transport
        self._done = False
        self._extra = False
        self._until_close = False
        self._interim = False
        self.got_bytes = False
        if self._pending:
            self._pending = []
        self.transport.write(head)  # type: ignore[union-attr]

    # --- llhttp callbacks (no on_status: the client gets standard reason phrases) ------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        headers = self._headers
        self._headers = []
        ex = self.exchange
        if ex is None or self._done:
            self._extra = True
            return
        status = self.parser.get_status_code()
        self._status = status
        if status < 200:
            self._interim = True
            if status == 101:
                self._headers = headers  # kept for the tunnel's 101
            else:
                ex.relay_interim(status, headers)
            return
        self._keep_alive = self.parser.should_keep_alive()
        no_body = ex.is_head or status == 204 or status == 304
        close = ex.response_starts(status)
        head, framing, chunked = relay_response_head(
            status, headers, no_body=no_body, http11=ex.http11, close=close, extra=ex.response_extra
        )
        self._framing = framing
        if framing in (FRAME_CHUNKED, FRAME_CLOSE):
            self._until_close = not chunked
            if framing == FRAME_CLOSE:
                ex.close_after = True
        elif no_body and ex.is_head and status != 204 and status != 304:
            # llhttp does not know the method: it would wait for a body that never comes.
            self._stale_parser = True
            self._done = True
        self._pending.append(head)

    def on_body(self, body: bytes) -> None:
        if self._done:
            return
        if self._framing == FRAME_CHUNKED:
            self._pending += (b"%x\r\n" % len(body), body, _CRLF)
        else:
            self._pending.append(body)

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        if self._done:
            self._extra = True
        self._done = True

    # --- completion --------------------------------------------------------------------------------

    def _finish_response(self, ex: Exchange, reusable: bool) -> None:
        pending = self._pending
        if self._framing == FRAME_CHUNKED:
            pending.append(_LAST_CHUNK)
        out = self._out
        if pending and out is not None:
            if len(pending) == 1:
                out.write(pending[0])
            else:
                out.writelines(pending)
        self._pending = []
        self.exchange = None
        self._out = None
        if self._stale_parser:
            self._stale_parser = False
            self.parser = httptools.HttpResponseParser(self)
        if not self.closed:
            if reusable:
                if self.read_paused:
                    self.resume_reading()
                self.pool.release(self)
            else:
                self.closed = True
                self.transport.close()  # type: ignore[union-attr]
        ex.response_complete()

    def _broken(self, ex: Exchange, reason: str, message: str) -> None:
        self.abort()
        if not ex.head_sent:
            ex.upstream_failed(reason, message)
        else:
            ex.upstream_broken()

    def _upgraded(self, ex: Exchange, tail: bytes) -> None:
        headers = self._headers
        self._headers = []
        upgrade = next((v for n, v in headers if n.lower() == b"upgrade"), None)
        if self._status != 101 or not ex.upgrade or upgrade is None:
            self._broken(ex, "protocol", "the project switched protocols unasked")
            return
        self.tunnel = True
        ex.tunnel_open(self._status, headers, upgrade, tail)


class _IdleList(list[UpstreamConnection]):
    """Idle connections of one endpoint; ``dead`` once the pool forgot it."""

    __slots__ = ("dead",)

    def __init__(self) -> None:
        super().__init__()
        self.dead = False


class UpstreamPool:
    """Idle keep-alive connections per endpoint (LIFO, bounded)."""

    def __init__(self, max_idle_per_endpoint: int = 256, idle_timeout_s: float = 30.0) -> None:
        self.max_idle_per_endpoint = max_idle_per_endpoint
        self.idle_timeout_s = idle_timeout_s
        self.now = 0.0  # coarse clock, advanced by the owner's sweeper
        self._idle: dict[Endpoint, _IdleList] = {}

    def idle_list(self, endpoint: Endpoint) -> _IdleList:
        """The idle list of ``endpoint``; connections keep a reference to theirs."""
        idle = self._idle.get(endpoint)
        if idle is None:
            idle = self._idle[endpoint] = _IdleList()
        return idle

    def acquire(self, endpoint: Endpoint) -> UpstreamConnection | None:
        """An idle open connection to ``endpoint``, most recently used first, or ``None``."""
        idle = self._idle.get(endpoint)
        while idle:
            up = idle.pop()
            if not up.closed:
                return up
        return None

    def release(self, up: UpstreamConnection) -> None:
        """Return a connection whose exchange completed cleanly."""
        idle = up.idle_list
        if idle.dead:
            idle = up.idle_list = self.idle_list(up.endpoint)
        if len(idle) >= self.max_idle_per_endpoint:
            up.abort()
            return
        up.idle_since = self.now
        idle.append(up)

    def discard(self, up: UpstreamConnection) -> None:
        """Forget a connection that closed while idle."""
        idle = up.idle_list
        if up in idle:
            idle.remove(up)

    def idle_count(self, endpoint: Endpoint | None = None) -> int:
        """Idle connections to ``endpoint`` (or to all endpoints)."""
        if endpoint is not None:
            return len(self._idle.get(endpoint, ()))
        return sum(len(v) for v in self._idle.values())

    def sweep(self, now: float) -> None:
        """Close connections idle for longer than the idle timeout; forget empty endpoints."""
        self.now = now
        limit = now - self.idle_timeout_s
        for endpoint, idle in list(self._idle.items()):
            stale = [up for up in idle if up.closed or up.idle_since <= limit]
            for up in stale:
                idle.remove(up)
                up.abort()
            if not idle:
                idle.dead = True  # connections in use that hold it move to a new list on release
                del self._idle[endpoint]

    def close(self) -> None:
        """Close every idle connection."""
        for idle in self._idle.values():
            for up in list(idle):
                up.abort()
            idle.clear()
            idle.dead = True
        self._idle.clear()
