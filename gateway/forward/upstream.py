"""Upstream HTTP/1.1 connections (llhttp response parsing) and their per-endpoint keep-alive pool.

A request owns its upstream connection for its whole exchange (no pipelining upstream), so a slow
project never blocks another one. Idle connections wait in a bounded LIFO list per endpoint and
leave it when they close, misbehave, or idle too long.

Response bodies are re-framed for the client: a ``Content-Length`` passes through; chunked and
close-delimited bodies are (re-)chunked for HTTP/1.1 clients. Whatever one read of the upstream
produces for the client is written with one call.

This side knows nothing of client connections: what it learns of a response it reports to the
:class:`ResponseSink` of the exchange it serves (the client side's
:class:`~gateway.forward.client.Exchange`), and its shortcuts come from the listener's
:class:`~gateway.forward.memo.Memo`.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Sequence
from typing import Any, Final, Protocol

import httptools

from gateway.backends.base import Endpoint
from gateway.forward.memo import KnownResponse, Memo
from gateway.headers import (
    FRAME_CHUNKED,
    FRAME_CLOSE,
    FRAME_LENGTH,
    FRAME_NONE,
    REASONS,
    FramingError,
    parse_fields,
    relay_raw_response_head,
    response_head,
    strip_hop_by_hop,
)

HttpParserError: type[Exception] = httptools.HttpParserError
HttpParserUpgrade: type[Exception] = httptools.HttpParserUpgrade

_CRLF: Final = b"\r\n"
_LAST_CHUNK: Final = b"0\r\n\r\n"
MAX_RESPONSE_HEAD_BYTES: Final = 1024 * 1024
# Requests waiting for a connection to an endpoint: while connections come free more often than
# this, no new connection is opened for them (UpstreamPool.connect_done).
_STALL_S: Final = 0.01
_monotonic = time.monotonic

# What a response must be for its exchange (ResponseSink.response_mode), asked as its head arrives.
MODE_HEAD: Final = 1  # the request was HEAD: no body, whatever the head says
MODE_HTTP10: Final = 2  # an HTTP/1.0 client: bodies are never chunked for it, and it gets no 1xx
MODE_UPGRADE: Final = 4  # the request carries Upgrade: its upstream connection is not kept
MODE_SWITCH: Final = 8  # ... and names a protocol: a 101 may switch to it
MODE_CLOSE: Final = 16  # the client connection closes after this response
MODE_PLAIN: Final = 32  # an HTTP/1.1 keep-alive exchange asking nothing of the head but the gateway's fields


class ResponseSink(Protocol):
    """The client side of one exchange, as its upstream connection and the pool see it. Every call
    happens on the event loop.

    While the request waits for a connection, the pool may call :meth:`upstream_ready`. Then, per
    response: :meth:`response_interim` for each 1xx, :meth:`response_starts`, :meth:`response_data`
    as bytes come, and :meth:`response_complete`; or, for a whole response in one read,
    :meth:`response_whole` alone; or :meth:`tunnel_open`, bytes both ways, and
    :meth:`response_complete` when the project closes the tunnel; or, at any point,
    :meth:`upstream_failed`, after which the connection reports nothing more. :meth:`response_mode`
    is asked as a head arrives.
    """

    finished: bool  # the exchange is over (a request waiting for a connection no longer does)

    def upstream_ready(self, endpoint: Endpoint, up: UpstreamConnection | None) -> None:
        """The pool's answer to a request waiting for a connection to ``endpoint``: one that came
        free (``up``), or ``None``: open a new one now."""

    def response_mode(self) -> int:
        """``MODE_*`` bits: how the response whose head just arrived is framed for the client."""

    def response_interim(self, status: int, head: bytes) -> None:
        """A 1xx response (``head``, as the client would get it), e.g. 100 Continue."""

    def response_starts(self, status: int, close: bool) -> None:
        """The final response head is sent next; the client connection closes after the response
        if ``close``."""

    def response_data(self, *parts: bytes) -> None:
        """Bytes for the client: the response head, its body (framed for the client), a tunnel's bytes."""

    def response_complete(self) -> None:
        """The response was relayed completely (or the project closed the tunnel); the upstream
        connection is back in its pool, or closed."""

    def response_whole(self, status: int, head: bytes, body: bytes) -> None:
        """A whole response (``head`` as the client gets it, and ``body``) arrived in one read, for
        a plain exchange: the client connection stays open. The upstream connection is back in its
        pool, or closed; the client side may hold the bytes to the end of the round
        (:meth:`Memo.write_last`)."""

    def upstream_failed(self, reason: str, message: str) -> None:
        """The upstream connection failed (``reason``: reset, protocol) and is dropped. Before the
        response head was sent the request may be answered or forwarded again; after it, the client
        connection must be aborted so a truncated body never looks complete."""

    def tunnel_open(self, head: bytes, tail: bytes) -> None:
        """The project switched protocols: send ``head`` (its 101) and ``tail`` (bytes after it),
        then splice bytes both ways."""

    def upstream_paused(self, paused: bool) -> None:
        """The upstream connection's write buffer is full (stop reading the client) or drained."""


class _BadHead(Exception):
    pass


# Where an upstream response stands.
_S_HEAD: Final = 0  # reading a head (1xx heads included)
_S_LENGTH: Final = 1  # a Content-Length body, relayed as it comes and counted
_S_CHUNKED: Final = 2  # a chunked body relayed as it comes to an HTTP/1.1 client (llhttp checks the framing)
_S_DECHUNK: Final = 3  # a chunked body de-chunked for an HTTP/1.0 client
_S_UNTIL_CLOSE: Final = 4  # a body that ends when the upstream closes
_S_DONE: Final = 5  # the response is complete (or has no body)
_S_TUNNEL: Final = 6  # switched protocols: bytes are spliced both ways

_DECHUNK_HEAD: Final = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"


class _Dechunk:
    """Feeds the data of a chunked body to the client (HTTP/1.0 clients only)."""

    def __init__(self, sink: ResponseSink) -> None:
        self.sink = sink

    def on_body(self, body: bytes) -> None:
        self.sink.response_data(body)


class UpstreamConnection(asyncio.Protocol):
    """One connection to a project endpoint; serves one exchange at a time.

    llhttp sees every response head (validation, status, keep-alive) and the body bytes of
    length-delimited and chunked bodies (so it stays in step and checks chunk framing), but no
    Python callback runs per field or per body piece: heads are relayed from their raw field
    block, and bodies are relayed as they arrive — chunked bodies keep their chunking. A head the
    memo knows (:attr:`Memo.responses`) is relayed without llhttp, and so is its body.
    """

    def __init__(self, pool: UpstreamPool, endpoint: Endpoint) -> None:
        self.pool = pool
        self.memo = pool.memo
        self.endpoint = endpoint
        self.idle_list = pool.idle_list(endpoint)
        self.transport: asyncio.Transport | None = None
        self.parser: Any = httptools.HttpResponseParser(self)
        self.sink: ResponseSink | None = None  # the exchange being served
        self.closed = False
        self.idle_since = 0.0
        self.read_paused = False
        self._response_extra: Sequence[tuple[bytes, bytes]] = ()  # the gateway's fields for the client
        self._request_done = False  # the request was sent completely (the connection may be kept)
        self._mode = 0  # the sink's MODE_* bits for the current head
        self._state = _S_DONE
        self._head_buf = b""  # a head still incomplete
        self._head_pos = 0  # where the next head (or the body) starts in _head_buf
        self._relay: bytes = b""  # the head to send the client, made in on_headers_complete
        self._close_after = False  # the client connection closes after this response
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
        self._learn: tuple[bytes, KnownResponse] | None = None  # a head for Memo.responses
        self._headers: list[tuple[bytes, bytes]] = []  # a 101's fields, for the tunnel
        self._head_error = ""  # why on_headers_complete refused a head

    @property
    def tunnel(self) -> bool:
        return self._state == _S_TUNNEL

    # --- asyncio.Protocol --------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        sink = self.sink
        if sink is None:
            # An idle connection must stay silent; anything else means it is unusable.
            self.abort()
            return
        state = self._state
        if state == _S_LENGTH:
            self._length_body(sink, data)
        elif state == _S_HEAD:
            if not self._head_buf:
                end = data.find(b"\r\n\r\n") + 4
                known = self.memo.responses.get(data[:end]) if end > 4 else None
                if known is not None and self._relay_known(sink, data, end, known):
                    return
            self._read_head(sink, data)
        elif state == _S_TUNNEL:
            sink.response_data(data)
        elif state in (_S_CHUNKED, _S_DECHUNK):
            self._chunked_body(sink, data, None, fed=False)
        elif state == _S_UNTIL_CLOSE:
            self._until_close_body(sink, data, None)
        else:
            self._extra = True  # after a complete response

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        sink = self.sink
        if sink is None:
            self.pool.discard(self)
            return
        state = self._state
        if state == _S_UNTIL_CLOSE:
            self._finish_response(sink, False)  # the only way such a body can end
        elif state == _S_TUNNEL:
            self.sink = None
            sink.response_complete()
        elif state == _S_HEAD:
            self.sink = None
            sink.upstream_failed("reset", "the project closed the connection before responding")
        elif state != _S_DONE:
            self.sink = None
            sink.upstream_failed("reset", "the project closed the connection mid-response")

    def pause_writing(self) -> None:
        sink = self.sink
        if sink is not None:
            sink.upstream_paused(True)

    def resume_writing(self) -> None:
        sink = self.sink
        if sink is not None:
            sink.upstream_paused(False)

    # --- flow control and ending, from the client side ---------------------------------------------

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
        self.sink = None
        if self.transport is not None:
            self.transport.abort()

    def close(self) -> None:
        """Close the connection once its pending writes are sent (a tunnel's end); never reused."""
        if not self.closed:
            self.closed = True
            self.sink = None
            if self.transport is not None:
                self.transport.close()

    # --- exchange ----------------------------------------------------------------------------------

    def start(self, sink: ResponseSink, response_extra: Sequence[tuple[bytes, bytes]], request_done: bool) -> None:
        """Serve ``sink``'s exchange: the caller sends its request head (and any body: then
        :meth:`request_sent`). ``response_extra``: the gateway's own fields for the client's head."""
        self.sink = sink
        self._response_extra = response_extra
        self._request_done = request_done
        self._state = _S_HEAD
        self._head_buf = b""
        self._head_pos = 0
        self._done = False
        self._extra = False
        self._interim = False

    def request_sent(self) -> None:
        """The request body was sent completely: after its response the connection may be kept."""
        self._request_done = True

    def _read_head(self, sink: ResponseSink, data: bytes) -> None:
        # llhttp gets each piece once (head and body together); the raw head is kept alongside
        # for on_headers_complete, which relays its field block.
        buf = self._head_buf = self._head_buf + data if self._head_buf else data
        try:
            self.parser.feed_data(data)
        except HttpParserUpgrade as exc:
            self._upgraded(sink, data[exc.args[0]:])
            return
        except HttpParserError as exc:
            if self._state == _S_HEAD or not self._done:
                # In the head, or in a body nothing of which reached the client yet (e.g. a trailer
                # llhttp refuses; the head is reported only below): the response is invalid, not
                # followed by junk.
                reason, self._head_error = self._head_error or str(exc), ""
                self._broken(sink, "protocol", f"invalid response from the project: {reason}")
                return
            self._extra = True  # junk after the response's end: never relayed
        if self.sink is not sink:
            return  # the exchange ended meanwhile (e.g. the client went away)
        state = self._state
        if state == _S_HEAD:
            if len(buf) > MAX_RESPONSE_HEAD_BYTES:
                self._broken(sink, "protocol", "the project's response head is too large")
            return
        sink.response_starts(self._status, self._close_after)
        pos = self._head_pos
        rest = buf[pos:] if pos < len(buf) else b""
        self._head_buf = b""
        if state == _S_LENGTH:
            n = self._remaining
            if len(rest) >= n:
                if len(rest) > n:
                    rest = rest[:n]
                    self._extra = True
                self._remaining = 0
                sink.response_data(self._relay, rest)
                self._finish_response(sink, self._keep_alive and not self._extra)
            else:
                self._remaining = n - len(rest)
                sink.response_data(self._relay, rest)
        elif state == _S_DONE:
            sink.response_data(self._relay)
            if rest:
                self._extra = True
            self._finish_response(sink, self._keep_alive and not self._extra)
        elif state == _S_UNTIL_CLOSE:
            self._until_close_body(sink, rest, self._relay)
        else:
            self._chunked_body(sink, rest, self._relay, fed=True)

    def _relay_known(self, sink: ResponseSink, data: bytes, body_at: int, known: KnownResponse) -> bool:
        """Relay a response whose head the memo knows; False when the exchange or the read needs
        the general path."""
        if not sink.response_mode() & MODE_PLAIN:
            return False
        relay, status, length, keep_alive = known
        extra = self._response_extra
        if extra:
            relay = _with_extra(relay, extra)
        size = len(data) - body_at
        if size > length:
            return False  # bytes after the response: the general path drops the connection
        if size == length:
            self._release(keep_alive)
            sink.response_whole(status, relay, data[body_at:])
        else:
            sink.response_starts(status, False)  # plain: the client connection stays open
            self._keep_alive = keep_alive
            self._remaining = length - size
            self._unfed = True
            self._state = _S_LENGTH
            sink.response_data(relay, data[body_at:])
        return True

    def _length_body(self, sink: ResponseSink, data: bytes) -> None:
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
                self._broken(sink, "protocol", f"invalid response from the project: {exc}")
                return
        sink.response_data(data)
        if n == 0:
            self._finish_response(sink, self._keep_alive and not self._extra)

    def _chunked_body(self, sink: ResponseSink, data: bytes, head: bytes | None, fed: bool) -> None:
        if head is not None:
            sink.response_data(head)
        if not data:
            return
        try:
            if not fed:
                self.parser.feed_data(data)
            if self._dechunker is not None:
                self._dechunker.feed_data(data)
        except HttpParserError:
            self._broken(sink, "protocol", "invalid chunked body from the project")
            return
        if self._done:
            last = self._last + data if len(data) < 4 else data
            if self._extra or not last.endswith(b"\r\n\r\n"):
                # More than the response arrived; where it ends inside this read is unknown.
                self._broken(sink, "protocol", "the project sent data after its response")
                return
        elif len(data) < 4:
            self._last = (self._last + data)[-4:]
        else:
            self._last = data[-4:]
        if self._dechunker is None:
            sink.response_data(data)
        if self._done:
            self._finish_response(sink, self._keep_alive and not self._extra)

    def _until_close_body(self, sink: ResponseSink, data: bytes, head: bytes | None) -> None:
        if not self._close_delimited:  # an HTTP/1.1 client: chunk it
            if head is not None:
                if data:
                    sink.response_data(head, b"%x\r\n" % len(data), data, _CRLF)
                else:
                    sink.response_data(head)
            elif data:
                sink.response_data(b"%x\r\n" % len(data), data, _CRLF)
        else:
            if head is not None:
                sink.response_data(head)
            if data:
                sink.response_data(data)

    # --- llhttp callbacks (no on_status, on_header or on_body: see the class docstring) -------------

    def on_headers_complete(self) -> None:
        sink = self.sink
        if sink is None or self._state != _S_HEAD:
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
        mode = self._mode = sink.response_mode()
        if status < 200:
            self._interim = True
            if status == 101:
                self._headers = parse_fields(block)  # kept for the tunnel's 101
            else:
                sink.response_interim(status, _interim_head(status, block))
            return
        self._keep_alive = self.parser.should_keep_alive() and not mode & MODE_UPGRADE
        is_head = bool(mode & MODE_HEAD)
        no_body = is_head or status == 204 or status == 304
        close = bool(mode & MODE_CLOSE)
        try:
            framing, chunked, length, plain = self._relay_head(status, block, no_body, not mode & MODE_HTTP10, close)
        except FramingError as exc:
            self._head_error = str(exc)
            raise _BadHead from None
        # Reported to the sink once llhttp took the whole read (_read_head).
        self._close_after = close or framing == FRAME_CLOSE
        self._dechunker = None
        if no_body:
            self._state = _S_DONE
            if is_head and (length or chunked):
                self._stale_parser = True  # llhttp does not know the method: it waits for a body
        elif length is not None:
            self._remaining = length
            self._state = _S_LENGTH if length else _S_DONE
            if framing == FRAME_LENGTH and not chunked and not close and plain and mode & MODE_PLAIN:
                self._learn = (buf[pos:head_end], (plain, status, length, self._keep_alive))
        elif chunked:
            self._last = b""
            if framing == FRAME_CHUNKED:
                self._state = _S_CHUNKED
            else:
                self._state = _S_DECHUNK
                self._dechunker = httptools.HttpResponseParser(_Dechunk(sink))
                self._dechunker.feed_data(_DECHUNK_HEAD)
        else:
            self._state = _S_UNTIL_CLOSE
            self._close_delimited = framing == FRAME_CLOSE  # relayed as is to an HTTP/1.0 client

    def _relay_head(self, status: int, block: bytes, no_body: bool, http11: bool,
                    close: bool) -> tuple[int, bool, int | None, bytes]:
        """Make the client's head (``self._relay``): ``(framing, upstream_chunked, length, plain)``
        where ``plain`` is the head without the exchange's extra fields (for Memo.responses), or empty."""
        extra = self._response_extra
        relayed = self.memo.relayed_head(block, status, no_body, http11, close)
        if relayed is None:
            self._relay, framing, chunked, length = relay_raw_response_head(
                status, block, no_body, http11, close, extra
            )
            return framing, chunked, length, b""
        plain, framing, chunked, length = relayed
        if not extra:
            self._relay = plain
        elif not close and framing in (FRAME_LENGTH, FRAME_NONE):
            self._relay = _with_extra(plain, extra)
        else:
            self._relay, framing, chunked, length = relay_raw_response_head(
                status, block, no_body, http11, close, extra
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

    def _finish_response(self, sink: ResponseSink, reusable: bool) -> None:
        if self._state == _S_UNTIL_CLOSE and not self._close_delimited:
            sink.response_data(_LAST_CHUNK)
        self._release(reusable)
        sink.response_complete()

    def _release(self, reusable: bool) -> None:
        """The response is over: remember its head if it may be, then back to the pool (``reusable``
        and the request was sent whole) or closed."""
        reusable = reusable and self._request_done
        if self._learn is not None:
            if reusable and self._done and not self._extra:  # llhttp ended the body where we did
                self.memo.remember_response(self._learn[0], self._learn[1])
            self._learn = None
        self._unfed = False
        self._state = _S_DONE
        self._dechunker = None
        self.sink = None
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

    def _broken(self, sink: ResponseSink, reason: str, message: str) -> None:
        self.abort()
        sink.upstream_failed(reason, message)

    def _upgraded(self, sink: ResponseSink, tail: bytes) -> None:
        headers = self._headers
        self._headers = []
        upgrade = next((v for n, v in headers if n.lower() == b"upgrade"), None)
        if self._status != 101 or not self._mode & MODE_SWITCH or upgrade is None:
            self._broken(sink, "protocol", "the project switched protocols unasked")
            return
        self._state = _S_TUNNEL
        sink.tunnel_open(response_head(101, REASONS[101], headers, framing=FRAME_NONE, upgrade=upgrade,
                                       extra=self._response_extra), tail)


def _interim_head(status: int, block: bytes) -> bytes:
    """A 1xx head for the client (its hop-by-hop fields dropped)."""
    parts = [b"HTTP/1.1 %d %s\r\n" % (status, REASONS.get(status, b"Informational"))]
    for name, value in strip_hop_by_hop(parse_fields(block)):
        parts += (name, b": ", value, _CRLF)
    parts.append(_CRLF)
    return b"".join(parts)


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
                 max_connecting_per_endpoint: int = 64, memo: Memo | None = None) -> None:
        self.max_idle_per_endpoint = max_idle_per_endpoint
        self.idle_timeout_s = idle_timeout_s
        self.max_connecting_per_endpoint = max_connecting_per_endpoint
        self.now = 0.0  # coarse clock, advanced by the owner's sweeper
        self.memo = memo if memo is not None else Memo()  # the listener's (its connections use it)
        self._idle: dict[Endpoint, _IdleList] = {}
        self._connecting: dict[Endpoint, int] = {}
        # Requests waiting for a connection, and whether each needs one of its own (a tunnel).
        self.waiting: dict[Endpoint, collections.deque[tuple[ResponseSink, bool]]] = {}
        self.waited = 0  # requests that had to wait for a connection (all time)
        self._handed_at: dict[Endpoint, float] = {}  # when a free connection last went to a waiting request
        self._stall_timers: dict[Endpoint, asyncio.TimerHandle] = {}

    def may_connect(self, endpoint: Endpoint, sink: ResponseSink, tunnel: bool) -> bool:
        """Whether a request may open a connection now (then :meth:`connect_done` is due); otherwise
        it waits and is served later through ``sink.upstream_ready``. A ``tunnel`` never gets a
        connection that served another request."""
        n = self._connecting.get(endpoint, 0)
        if n < self.max_connecting_per_endpoint:
            self._connecting[endpoint] = n + 1
            return True
        queue = self.waiting.get(endpoint)
        if queue is None:
            queue = self.waiting[endpoint] = collections.deque()
        queue.append((sink, tunnel))
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
            waiter = queue.popleft()
            sink, tunnel = waiter
            if sink.finished:
                continue
            up = self.acquire(endpoint) if not tunnel else None  # a tunnel gets its own
            if up is not None:
                sink.upstream_ready(endpoint, up)
            elif not tunnel and _monotonic() - self._handed_at.get(endpoint, -_STALL_S) < _STALL_S:
                # Connections are coming free and being handed to the waiting requests: they
                # serve the queue without the cost of another connection (a herd released at
                # once would otherwise open one per request).
                queue.appendleft(waiter)
                self._watch_stall(endpoint)
                return
            else:
                self._connecting[endpoint] = self._connecting.get(endpoint, 0) + 1
                sink.upstream_ready(endpoint, None)
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
            sink, _ = queue.popleft()
            if not sink.finished:
                self._connecting[endpoint] = self._connecting.get(endpoint, 0) + 1
                sink.upstream_ready(endpoint, None)
        if not queue:
            del self.waiting[endpoint]

    def _hand_over(self, up: UpstreamConnection) -> bool:
        """Give a connection that came free to a waiting request; False when none waits."""
        queue = self.waiting.get(up.endpoint)
        while queue:
            sink, tunnel = queue[0]
            if sink.finished:
                queue.popleft()
                continue
            if tunnel:
                return False  # a tunnel gets its own connection (on the next connect_done)
            queue.popleft()
            if not queue:
                del self.waiting[up.endpoint]
            self._handed_at[up.endpoint] = _monotonic()
            sink.upstream_ready(up.endpoint, up)
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
