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
import collections
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import httptools

from gateway.backends.base import Endpoint
from gateway.headers import (
    FRAME_CHUNKED,
    FRAME_CLOSE,
    FRAME_LENGTH,
    FRAME_NONE,
    FramingError,
    parse_fields,
    relay_raw_response_head,
)

if TYPE_CHECKING:
    from gateway.forward.client import Exchange

HttpParserError: type[Exception] = httptools.HttpParserError
HttpParserUpgrade: type[Exception] = httptools.HttpParserUpgrade

_CRLF = b"\r\n"
_LAST_CHUNK = b"0\r\n\r\n"
MAX_RESPONSE_HEAD_BYTES = 1024 * 1024
# Requests waiting for a connection to an endpoint: while connections come free more often than
# this, no new connection is opened for them (UpstreamPool.connect_done).
_STALL_S = 0.01
_monotonic = time.monotonic


class _BadHead(Exception):
    pass


# Where an upstream response stands.
_S_HEAD = 0  # reading a head (1xx heads included)
_S_LENGTH = 1  # a Content-Length body, relayed as it comes and counted
_S_CHUNKED = 2  # a chunked body relayed as it comes to an HTTP/1.1 client (llhttp checks the framing)
_S_DECHUNK = 3  # a chunked body de-chunked for an HTTP/1.0 client
_S_UNTIL_CLOSE = 4  # a body that ends when the upstream closes
_S_DONE = 5  # the response is complete (or has no body)
_S_TUNNEL = 6  # switched protocols: bytes are spliced both ways

_RELAYED: dict[tuple[bytes, int, int], tuple[bytes, int, bool, int | None]] = {}
_RELAYED_SIZE = 512
_RELAYED_MAX_BLOCK = 4096  # bigger heads are rewritten each time (bounds the memory held)

_DECHUNK_HEAD = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"

# Whole response heads (status line to the blank line) that llhttp accepted before, with what they
# mean for a plain exchange (see _plain): head bytes -> (head for the client, status,
# Content-Length, keep-alive). Such a head arriving again at the start of a read is relayed without
# llhttp: identical bytes parse identically, and the parser, left at a message start, is not fed
# the response at all (nor its body). A head is remembered only once llhttp completed its
# Content-Length body exactly where the gateway's own count did.
_KNOWN: dict[bytes, tuple[bytes, int, int, bool]] = {}
_KNOWN_SIZE = 512


class _Dechunk:
    """Feeds the data of a chunked body to a transport (HTTP/1.0 clients only)."""

    def __init__(self, out: asyncio.Transport) -> None:
        self.out = out

    def on_body(self, body: bytes) -> None:
        self.out.write(body)


class UpstreamConnection(asyncio.Protocol):
    """One connection to a project endpoint; serves one exchange at a time.

    llhttp sees every response head (validation, status, keep-alive) and the body bytes of
    length-delimited and chunked bodies (so it stays in step and checks chunk framing), but no
    Python callback runs per field or per body piece: heads are relayed from their raw field
    block, and bodies are relayed as they arrive — chunked bodies keep their chunking.
    """

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
        self._out: asyncio.Transport | None = None
        self._state = _S_DONE
        self._head_buf = b""  # a head still incomplete
        self._head_pos = 0  # where the next head (or the body) starts in _head_buf
        self._relay: bytes = b""  # the head to send the client, made in on_headers_complete
        self._remaining = 0
        self._last = b""  # the end of the previous chunked piece (a terminator may straddle reads)
        self._dechunker: Any = None
        self._close_delimited = False
        self._status = 0
        self._interim = False
        self._keep_alive = False
        self._done = False  # llhttp completed the message
        self._extra = False  # bytes after the response: never relayed, the connection is dropped
        self._stale_parser = False
        self._unfed = False  # a known head was relayed without llhttp: its body is not fed either
        self._learn: tuple[bytes, tuple[bytes, int, int, bool]] | None = None  # a head for _KNOWN
        self._headers: list[tuple[bytes, bytes]] = []  # a 101's fields, for the tunnel
        self._head_error = ""  # why on_headers_complete refused a head

    @property
    def tunnel(self) -> bool:
        return self._state == _S_TUNNEL

    # --- asyncio.Protocol --------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        ex = self.exchange
        if ex is None:
            # An idle connection must stay silent; anything else means it is unusable.
            self.abort()
            return
        state = self._state
        if state == _S_LENGTH:
            self._length_body(ex, data)
        elif state == _S_HEAD:
            if not self._head_buf:
                end = data.find(b"\r\n\r\n") + 4
                known = _KNOWN.get(data[:end]) if end > 4 else None
                if known is not None and self._relay_known(ex, data, end, known):
                    return
            self._read_head(ex, data)
        elif state == _S_TUNNEL:
            if self._out is not None:
                self._out.write(data)
        elif state in (_S_CHUNKED, _S_DECHUNK):
            self._chunked_body(ex, data, None, fed=False)
        elif state == _S_UNTIL_CLOSE:
            self._until_close_body(data, None)
        else:
            self._extra = True  # after a complete response

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        ex = self.exchange
        if ex is None:
            self.pool.discard(self)
            return
        state = self._state
        if state == _S_TUNNEL:
            self.exchange = None
            ex.tunnel_closed()
        elif state == _S_UNTIL_CLOSE:
            self._finish_response(ex, False)  # the only way such a body can end
        elif state == _S_HEAD and not ex.head_sent:
            self.exchange = None
            ex.upstream_failed("reset", "the project closed the connection before responding")
        elif state != _S_DONE:
            self.exchange = None
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
        self._state = _S_HEAD
        self._head_buf = b""
        self._head_pos = 0
        self._done = False
        self._extra = False
        self._interim = False
        self.transport.write(head)  # type: ignore[union-attr]

    def start_deferred(self, ex: Exchange, head: bytes) -> None:
        """:meth:`start` for a request without a body: the head is written at the end of this
        round of events (``Listener.defer_upstream``)."""
        self.exchange = ex
        self._out = ex.conn.transport
        self._state = _S_HEAD
        self._head_buf = b""
        self._head_pos = 0
        self._done = False
        self._extra = False
        self._interim = False
        ex.conn.listener.defer_upstream(self.transport, head)  # type: ignore[arg-type]

    def _read_head(self, ex: Exchange, data: bytes) -> None:
        # llhttp gets each piece once (head and body together); the raw head is kept alongside
        # for on_headers_complete, which relays its field block.
        buf = self._head_buf = self._head_buf + data if self._head_buf else data
        try:
            self.parser.feed_data(data)
        except HttpParserUpgrade as exc:
            self._upgraded(ex, data[exc.args[0]:])
            return
        except HttpParserError as exc:
            if self._state == _S_HEAD or not self._done:
                # In the head, or in a body nothing of which reached the client yet (e.g. a trailer
                # llhttp refuses): the response is invalid, not followed by junk.
                if self._state != _S_HEAD:
                    ex.head_sent = False
                reason, self._head_error = self._head_error or str(exc), ""
                self._broken(ex, "protocol", f"invalid response from the project: {reason}")
                return
            self._extra = True  # junk after the response's end: never relayed
        if self.exchange is not ex:
            return  # the exchange ended meanwhile (e.g. the client went away)
        state = self._state
        if state == _S_HEAD:
            if len(buf) > MAX_RESPONSE_HEAD_BYTES:
                self._broken(ex, "protocol", "the project's response head is too large")
            return
        pos = self._head_pos
        rest = buf[pos:] if pos < len(buf) else b""
        self._head_buf = b""
        out = self._out
        if state == _S_LENGTH:
            n = self._remaining
            if len(rest) >= n:
                if len(rest) > n:
                    rest = rest[:n]
                    self._extra = True
                self._remaining = 0
                if out is not None:
                    out.writelines((self._relay, rest))
                self._finish_response(ex, self._keep_alive and not self._extra and ex.request_done)
            else:
                self._remaining = n - len(rest)
                if out is not None:
                    out.writelines((self._relay, rest))
        elif state == _S_DONE:
            if out is not None:
                out.write(self._relay)
            if rest:
                self._extra = True
            self._finish_response(ex, self._keep_alive and not self._extra and ex.request_done)
        elif state == _S_UNTIL_CLOSE:
            self._until_close_body(rest, self._relay)
        else:
            self._chunked_body(ex, rest, self._relay, fed=True)

    def _relay_known(self, ex: Exchange, data: bytes, body_at: int,
                     known: tuple[bytes, int, int, bool]) -> bool:
        """Relay a response whose head is in _KNOWN; False when the exchange or the read needs
        the general path."""
        if not _plain(ex):
            return False
        relay, status, length, keep_alive = known
        if ex.response_extra:
            relay = _with_extra(relay, ex.response_extra)
        size = len(data) - body_at
        if size > length:
            return False  # bytes after the response: the general path drops the connection
        ex.status = status  # what response_starts does for a plain exchange
        ex.head_sent = True
        out = self._out
        if size == length:
            if out is not None:
                conn = ex.conn
                if not conn.queue and conn.parsing is None:
                    conn.listener.defer_response(conn, (relay, data[body_at:]))
                else:
                    out.writelines((relay, data[body_at:]))
            self._finish_response(ex, keep_alive and ex.request_done)
        else:
            self._keep_alive = keep_alive
            self._remaining = length - size
            self._unfed = True
            self._state = _S_LENGTH
            if out is not None:
                out.writelines((relay, data[body_at:]))
        return True

    def _length_body(self, ex: Exchange, data: bytes) -> None:
        n = self._remaining
        size = len(data)
        if size > n:
            data = data[:n]  # bytes after the response: never relayed
            size = n
            self._extra = True
        self._remaining = n = n - size
        if not self._unfed:
            try:
                self.parser.feed_data(data)  # keeps llhttp in step for the next response
            except HttpParserError as exc:
                self._broken(ex, "protocol", f"invalid response from the project: {exc}")
                return
        if self._out is not None:
            self._out.write(data)
        if n == 0:
            self._finish_response(ex, self._keep_alive and not self._extra and ex.request_done)

    def _chunked_body(self, ex: Exchange, data: bytes, head: bytes | None, fed: bool) -> None:
        out = self._out
        if head is not None and out is not None:
            out.write(head)
        if not data:
            return
        try:
            if not fed:
                self.parser.feed_data(data)
            if self._dechunker is not None:
                self._dechunker.feed_data(data)
        except HttpParserError:
            self._broken(ex, "protocol", "invalid chunked body from the project")
            return
        if self._done:
            last = self._last + data if len(data) < 4 else data
            if self._extra or not last.endswith(b"\r\n\r\n"):
                # More than the response arrived; where it ends inside this read is unknown.
                self._broken(ex, "protocol", "the project sent data after its response")
                return
        elif len(data) < 4:
            self._last = (self._last + data)[-4:]
        else:
            self._last = data[-4:]
        if self._dechunker is None and out is not None:
            out.write(data)
        if self._done:
            self._finish_response(ex, self._keep_alive and not self._extra and ex.request_done)

    def _until_close_body(self, data: bytes, head: bytes | None) -> None:
        out = self._out
        if out is None:
            return
        if not self._close_delimited:  # an HTTP/1.1 client: chunk it
            if head is not None:
                if data:
                    out.writelines((head, b"%x\r\n" % len(data), data, _CRLF))
                else:
                    out.write(head)
            elif data:
                out.writelines((b"%x\r\n" % len(data), data, _CRLF))
        else:
            if head is not None:
                out.write(head)
            if data:
                out.write(data)

    # --- llhttp callbacks (no on_status, on_header or on_body: see the class docstring) -------------

    def on_headers_complete(self) -> None:
        ex = self.exchange
        if ex is None or self._state != _S_HEAD:
            self._extra = True
            return
        buf = self._head_buf
        pos = self._head_pos
        while buf.startswith(_CRLF, pos):
            pos += 2
        end = buf.find(b"\r\n\r\n", pos)
        if end < 0:
            raise _BadHead  # a head llhttp accepted with bare LFs: not relayed
        block = buf[buf.find(_CRLF, pos):end + 2]
        self._head_pos = head_end = end + 4
        status = self.parser.get_status_code()
        self._status = status
        if status < 200:
            self._interim = True
            if status == 101:
                self._headers = parse_fields(block)  # kept for the tunnel's 101
            else:
                ex.relay_interim(status, parse_fields(block))
            return
        self._keep_alive = self.parser.should_keep_alive() and ex.upgrade is None
        no_body = ex.is_head or status == 204 or status == 304
        close = ex.closes_after_response()
        try:
            framing, chunked, length, plain = self._relay_head(ex, status, block, no_body, close)
        except FramingError as exc:
            self._head_error = str(exc)
            raise _BadHead from None
        ex.response_starts(status, close)
        self._dechunker = None
        if no_body:
            self._state = _S_DONE
            if ex.is_head and (length or chunked):
                self._stale_parser = True  # llhttp does not know the method: it waits for a body
        elif length is not None:
            self._remaining = length
            self._state = _S_LENGTH if length else _S_DONE
            if framing == FRAME_LENGTH and not chunked and not close and plain and _plain(ex):
                self._learn = (buf[pos:head_end], (plain, status, length, self._keep_alive))
        elif chunked:
            self._last = b""
            if framing == FRAME_CHUNKED:
                self._state = _S_CHUNKED
            else:
                self._state = _S_DECHUNK
                self._dechunker = httptools.HttpResponseParser(_Dechunk(ex.conn.transport))  # type: ignore[arg-type]
                self._dechunker.feed_data(_DECHUNK_HEAD)
        else:
            self._state = _S_UNTIL_CLOSE
            self._close_delimited = framing == FRAME_CLOSE  # relayed as is to an HTTP/1.0 client
        if framing == FRAME_CLOSE:
            ex.close_after = True

    def _relay_head(self, ex: Exchange, status: int, block: bytes, no_body: bool,
                    close: bool) -> tuple[int, bool, int | None, bytes]:
        """Make the client's head (``self._relay``): ``(framing, upstream_chunked, length, plain)``
        where ``plain`` is the head without the exchange's extra fields (for _KNOWN), or empty."""
        extra = ex.response_extra
        if len(block) > _RELAYED_MAX_BLOCK:
            self._relay, framing, chunked, length = relay_raw_response_head(
                status, block, no_body, ex.http11, close, extra
            )
            plain = b""
        else:
            # Consecutive responses of a project often share their whole field block (Date changes
            # once a second), so the rewritten head is remembered.
            key = (block, status, no_body + 2 * ex.http11 + 4 * close)
            relayed = _RELAYED.get(key)
            if relayed is None:
                if len(_RELAYED) >= _RELAYED_SIZE:
                    _RELAYED.clear()
                relayed = _RELAYED[key] = relay_raw_response_head(status, block, no_body, ex.http11, close)
            plain, framing, chunked, length = relayed
            if not extra:
                self._relay = plain
            elif not close and framing in (FRAME_LENGTH, FRAME_NONE):
                self._relay = _with_extra(plain, extra)
            else:
                self._relay, framing, chunked, length = relay_raw_response_head(
                    status, block, no_body, ex.http11, close, extra
                )
        return framing, chunked, length, plain

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False  # a 1xx ended; the final head follows
            return
        if self._done:
            self._extra = True
        self._done = True

    # --- completion --------------------------------------------------------------------------------

    def _finish_response(self, ex: Exchange, reusable: bool) -> None:
        out = self._out
        if self._state == _S_UNTIL_CLOSE and not self._close_delimited and out is not None:
            out.write(_LAST_CHUNK)
        if self._learn is not None:
            if reusable and self._done and not self._extra:  # llhttp ended the body where we did
                if len(_KNOWN) >= _KNOWN_SIZE:
                    _KNOWN.clear()
                _KNOWN[self._learn[0]] = self._learn[1]
            self._learn = None
        self._unfed = False
        self._state = _S_DONE
        self._dechunker = None
        self.exchange = None
        self._out = None
        if self._stale_parser:
            self._stale_parser = False
            self.parser = httptools.HttpResponseParser(self)
        if not self.closed:
            if reusable:
                if self.read_paused:
                    self.resume_reading()
                idle = self.idle_list
                if not idle.dead and not self.pool.waiting and len(idle.conns) < self.pool.max_idle_per_endpoint:
                    self.idle_since = self.pool.now
                    idle.conns.append(self)
                else:
                    self.pool.release(self)
            else:
                self.closed = True
                self.transport.close()  # type: ignore[union-attr]
        ex.upstream = None
        if ex.request_done and ex.task is None and not ex.finished:
            ex.finished = True
            ex.conn.exchange_finished(ex)
        else:
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
        self._state = _S_TUNNEL
        ex.tunnel_open(self._status, headers, upgrade, tail)


def _plain(ex: Exchange) -> bool:
    """Whether the client side of ``ex`` asks nothing of a response head but the gateway's own
    fields: an HTTP/1.1 keep-alive request that is not HEAD, not an upgrade, not waiting for
    100-continue, on a connection that stays open (the head is relayed as _KNOWN remembers it)."""
    return (ex.http11 and ex.keep_alive and not ex.is_head and ex.upgrade is None and not ex.expect_continue
            and not ex.conn.closing)


def _with_extra(relay: bytes, extra: Sequence[tuple[bytes, bytes]]) -> bytes:
    """``relay`` (a head ending in ``Via: ...`` and the blank line: framed by length or without a
    body, connection kept) with the gateway's ``extra`` fields after Via, where
    ``relay_raw_response_head`` puts them."""
    return relay[:-2] + b"".join(name + b": " + value + b"\r\n" for name, value in extra) + b"\r\n"


class _IdleList:
    """Idle connections of one endpoint (most recently used last); ``dead`` once the pool forgot it."""

    __slots__ = ("conns", "dead")

    def __init__(self) -> None:
        self.conns: list[UpstreamConnection] = []
        self.dead = False


class UpstreamPool:
    """Idle keep-alive connections per endpoint (LIFO, bounded), and a bound on connection
    attempts in progress per endpoint.

    The bound matters when many held requests are released at once onto a process that has just
    started: thousands of simultaneous connects would overflow its listen backlog (dropped SYNs
    look like a dead endpoint). Requests beyond it wait for a connection that comes free or for
    their turn to connect, whichever is first. It bounds attempts, not connections: long streams
    never keep other requests waiting.
    """

    def __init__(self, max_idle_per_endpoint: int = 256, idle_timeout_s: float = 30.0,
                 max_connecting_per_endpoint: int = 64) -> None:
        self.max_idle_per_endpoint = max_idle_per_endpoint
        self.idle_timeout_s = idle_timeout_s
        self.max_connecting_per_endpoint = max_connecting_per_endpoint
        self.now = 0.0  # coarse clock, advanced by the owner's sweeper
        self._idle: dict[Endpoint, _IdleList] = {}
        self._connecting: dict[Endpoint, int] = {}
        self.waiting: dict[Endpoint, collections.deque[Exchange]] = {}  # requests waiting for a connection
        self.waited = 0  # requests that had to wait for a connection (all time)
        self._handed_at: dict[Endpoint, float] = {}  # when a free connection last went to a waiting request
        self._stall_timers: dict[Endpoint, asyncio.TimerHandle] = {}

    def may_connect(self, endpoint: Endpoint, ex: Exchange) -> bool:
        """Whether ``ex`` may open a connection now (then :meth:`connect_done` is due); otherwise
        it waits and is served later through ``ex.attach`` or ``ex.start_connect``."""
        n = self._connecting.get(endpoint, 0)
        if n < self.max_connecting_per_endpoint:
            self._connecting[endpoint] = n + 1
            return True
        queue = self.waiting.get(endpoint)
        if queue is None:
            queue = self.waiting[endpoint] = collections.deque()
        queue.append(ex)
        self.waited += 1
        return False

    def connect_done(self, endpoint: Endpoint) -> None:
        """A connection attempt ended (either way): let a waiting request try."""
        n = self._connecting.get(endpoint, 1) - 1
        if n > 0:
            self._connecting[endpoint] = n
        else:
            self._connecting.pop(endpoint, None)
        queue = self.waiting.get(endpoint)
        while queue:
            ex = queue.popleft()
            if ex.finished:
                continue
            up = self.acquire(endpoint) if ex.upgrade is None else None  # a tunnel gets its own
            if up is not None:
                ex.attach(up, True)
            elif ex.upgrade is None and _monotonic() - self._handed_at.get(endpoint, -_STALL_S) < _STALL_S:
                # Connections are coming free and being handed to the waiting requests: they
                # serve the queue without the cost of another connection (a herd released at
                # once would otherwise open one per request).
                queue.appendleft(ex)
                self._watch_stall(endpoint)
                return
            else:
                self._connecting[endpoint] = self._connecting.get(endpoint, 0) + 1
                ex.start_connect(endpoint)
            break
        if queue is not None and not queue:
            del self.waiting[endpoint]

    def _watch_stall(self, endpoint: Endpoint) -> None:
        if endpoint not in self._stall_timers:
            loop = asyncio.get_running_loop()
            self._stall_timers[endpoint] = loop.call_later(_STALL_S, self._stall_check, endpoint)

    def _stall_check(self, endpoint: Endpoint) -> None:
        """Requests still wait: unless a connection came free lately, resume connecting."""
        del self._stall_timers[endpoint]
        queue = self.waiting.get(endpoint)
        if not queue:
            return
        idle_for = _monotonic() - self._handed_at.get(endpoint, -_STALL_S)
        if idle_for < _STALL_S:
            loop = asyncio.get_running_loop()
            self._stall_timers[endpoint] = loop.call_later(_STALL_S - idle_for, self._stall_check, endpoint)
            return
        while queue and self._connecting.get(endpoint, 0) < self.max_connecting_per_endpoint:
            ex = queue.popleft()
            if not ex.finished:
                self._connecting[endpoint] = self._connecting.get(endpoint, 0) + 1
                ex.start_connect(endpoint)
        if not queue:
            del self.waiting[endpoint]

    def _hand_over(self, up: UpstreamConnection) -> bool:
        """Give a connection that came free to a waiting request; False when none waits."""
        queue = self.waiting.get(up.endpoint)
        while queue:
            ex = queue[0]
            if ex.finished:
                queue.popleft()
                continue
            if ex.upgrade is not None:
                return False  # a tunnel gets its own connection (on the next connect_done)
            queue.popleft()
            if not queue:
                del self.waiting[up.endpoint]
            self._handed_at[up.endpoint] = _monotonic()
            ex.attach(up, True)
            return True
        self.waiting.pop(up.endpoint, None)
        return False

    def idle_list(self, endpoint: Endpoint) -> _IdleList:
        """The idle list of ``endpoint``; connections keep a reference to theirs."""
        idle = self._idle.get(endpoint)
        if idle is None:
            idle = self._idle[endpoint] = _IdleList()
        return idle

    def acquire(self, endpoint: Endpoint) -> UpstreamConnection | None:
        """An idle open connection to ``endpoint``, most recently used first, or ``None``."""
        idle = self._idle.get(endpoint)
        if idle is None:
            return None
        conns = idle.conns
        while conns:
            up = conns.pop()
            if not up.closed:
                return up
        return None

    def release(self, up: UpstreamConnection) -> None:
        """Return a connection whose exchange completed cleanly."""
        if self.waiting and self._hand_over(up):
            return
        idle = up.idle_list
        if idle.dead:
            idle = up.idle_list = self.idle_list(up.endpoint)
        if len(idle.conns) >= self.max_idle_per_endpoint:
            up.abort()
            return
        up.idle_since = self.now
        idle.conns.append(up)

    def discard(self, up: UpstreamConnection) -> None:
        """Forget a connection that closed while idle."""
        conns = up.idle_list.conns
        if up in conns:
            conns.remove(up)

    def idle_count(self, endpoint: Endpoint | None = None) -> int:
        """Idle connections to ``endpoint`` (or to all endpoints)."""
        if endpoint is not None:
            idle = self._idle.get(endpoint)
            return 0 if idle is None else len(idle.conns)
        return sum(len(v.conns) for v in self._idle.values())

    def sweep(self, now: float) -> None:
        """Close connections idle for longer than the idle timeout; forget empty endpoints."""
        self.now = now
        for endpoint in [e for e in self._handed_at if e not in self.waiting]:
            del self._handed_at[endpoint]
        limit = now - self.idle_timeout_s
        for endpoint, idle in list(self._idle.items()):
            stale = [up for up in idle.conns if up.closed or up.idle_since <= limit]
            for up in stale:
                idle.conns.remove(up)
                up.abort()
            if not idle.conns:
                idle.dead = True  # connections in use that hold it move to a new list on release
                del self._idle[endpoint]

    def close(self) -> None:
        """Close every idle connection."""
        for timer in self._stall_timers.values():
            timer.cancel()
        self._stall_timers.clear()
        for idle in self._idle.values():
            for up in list(idle.conns):
                up.abort()
            idle.conns.clear()
            idle.dead = True
        self._idle.clear()
