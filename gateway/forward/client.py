"""Client connections: HTTP/1.1 parsing (llhttp), exchanges, flow control, WebSocket tunnels.

One :class:`ClientConnection` per accepted socket parses requests with llhttp and turns each into
an :class:`Exchange`. Exchanges of one connection are served strictly in order (pipelining): the
next one starts when the previous response is complete. A :class:`Handler` (the public server)
decides what to do with each exchange — answer it locally (:meth:`Exchange.respond`) or forward it to
an endpoint (:meth:`Exchange.forward`), synchronously on the warm path or later from a task.

Bodies are never buffered beyond one socket read: the client is not read while its request waits
for an upstream connection, nor while the upstream socket's write buffer is full, and the upstream
is not read while the client's write buffer is full.

The warm path runs once per request, so it is written for few Python calls: each field is
classified and serialised in ``on_header`` (one walk over the head), and the handler forwards
without leaving the parser's callbacks. Its shortcuts (remembered heads, deferred writes and
closes) are the listener's :class:`~gateway.forward.memo.Memo`.

An :class:`Exchange` holds what parsing the request gave and where its transport stands; the
handler keeps its own record of the request in :attr:`Exchange.handling`. The upstream side
reports to the exchange through :class:`~gateway.forward.upstream.ResponseSink`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import fcntl
import ipaddress
import logging
import os
import resource
import time
from collections.abc import Sequence
from typing import Any, Final, Protocol

import httptools

from gateway import logs
from gateway.backends.base import Endpoint
from gateway.forward.memo import KNOWN_REQUEST_MAX_BYTES, KNOWN_REQUEST_MISSES, Memo, ParsedRequest
from gateway.forward.upstream import (
    MODE_CLOSE,
    MODE_HEAD,
    MODE_HTTP10,
    MODE_PLAIN,
    MODE_SWITCH,
    MODE_UPGRADE,
    UpstreamConnection,
    UpstreamPool,
)
from gateway.headers import (
    F_CONNECTION,
    F_EXPECT,
    F_FORWARDED,
    F_HOST,
    F_LENGTH,
    F_REQUEST_ID,
    F_ROUTE,
    F_TE,
    F_UPGRADE,
    F_USER_AGENT,
    F_XFF,
    F_XFH,
    F_XFP,
    F_XRIP,
    kept_parts,
    listed_tokens,
    request_fields_table,
    request_suffix,
    safe_request_id,
    simple_response,
)

HttpParserError: type[Exception] = httptools.HttpParserError
HttpParserUpgrade: type[Exception] = httptools.HttpParserUpgrade

MAX_REQUEST_TARGET_BYTES: Final = 8192
MAX_HEAD_BYTES: Final = 64 * 1024
MAX_HEADER_COUNT: Final = 128
# Descriptors the process's table is sized for up front (grow_fd_table).
FD_TABLE_SIZE: Final = 1 << 16

# Body modes of a request.
BODY_BUFFER: Final = 0  # waiting for an upstream connection; the client is not read meanwhile
BODY_STREAM: Final = 1  # written straight to the upstream connection
BODY_DISCARD: Final = 2  # the response is already complete; the rest of the body is read and dropped

_IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})
_CRLF: Final = b"\r\n"
_LAST_CHUNK: Final = b"0\r\n\r\n"
_PLAIN_CONNECTION = frozenset({b"keep-alive", b"close"})
_KEPT_SPECIAL = frozenset({F_HOST, F_EXPECT, F_USER_AGENT, F_LENGTH, F_ROUTE})

log = logging.getLogger(__name__)


class _LimitExceeded(Exception):
    pass


class Handler(Protocol):
    """What the client side asks of the server policy. All calls happen on the event loop."""

    def handle(self, ex: Exchange) -> None:
        """A request head is complete: answer it or forward it (now or later)."""

    def upstream_failed(self, ex: Exchange, reason: str, message: str) -> None:
        """Forwarding failed before any response byte reached the client (``reason``: refused,
        timeout, reset, protocol). Answer, or forward again (:attr:`Exchange.replayable` says
        whether the request may be sent again)."""

    def finished(self, ex: Exchange) -> None:
        """The exchange is over: response complete, tunnel closed, or aborted."""


class Exchange:
    """One request and its response on a client connection: what parsing the request gave, and where
    its transport stands. The upstream side reports to it (it is the
    :class:`~gateway.forward.upstream.ResponseSink` of its upstream connection).

    Request fields the gateway needs are extracted while parsing (``host``, ``route_value``,
    ``request_id``, ``user_agent``, ``upgrade``); :meth:`header` finds any other. The handler sets
    ``id_field`` and ``response_extra`` (what it adds to the messages) and keeps its own record of
    the request in ``handling``, which the data path never reads.
    """

    # Defaults live on the class: a request sets only what it has (one Exchange per request, so
    # its construction is on the hot path). Every value here is immutable.
    # -- what parsing the request gave
    method = b""
    target = b""
    host: bytes | None = None
    route_value: bytes | None = None
    request_id: bytes | None = None
    user_agent: bytes | None = None
    connection: bytes | None = None  # the Connection field's values, joined
    te: bytes | None = None
    upgrade: bytes | None = None
    xff: bytes | None = None
    xfp: bytes | None = None
    xfh: bytes | None = None
    forwarded: bytes | None = None
    xrip: bytes | None = None
    id_seen = False  # an X-Request-Id field was seen (only the first counts)
    expect_continue = False
    http11 = True
    keep_alive = True
    is_head = False
    has_body = False
    chunked = False
    refusal: tuple[int, bytes] | None = None  # what llhttp let through but the proxy refuses
    special = False  # Transfer-Encoding, Upgrade, identity fields or a Connection naming fields: no fast path
    started = 0.0  # when its head was complete (the listener's clock)
    # -- what the handler adds: fields for the upstream and for the client
    id_field = b""  # a generated ``X-Request-Id: ...\r\n`` line for the upstream
    extra_up: Sequence[tuple[bytes, bytes]] = ()
    response_extra: Sequence[tuple[bytes, bytes]] = ()
    # -- where the transport stands
    got_continue = False
    body_mode = BODY_BUFFER
    buffered: list[bytes] | None = None
    request_done = False
    upstream: UpstreamConnection | None = None
    reused = False
    task: asyncio.Task[None] | None = None  # connecting to the upstream
    head_sent = False
    head_at = 0.0  # when a streamed response's head (or a tunnel's 101) went out; 0: with its end
    status = 0
    close_after = False
    finished = False
    error: str | None = None
    # -- the handler's own record of this request (gateway.server.Request); opaque to the data path
    handling: object = None

    def __init__(self, conn: ClientConnection, headers: Sequence[tuple[bytes, bytes]] | None = None,
                 parts: list[bytes] | None = None) -> None:
        self.conn = conn
        self.headers: list[tuple[bytes, bytes]] = [] if headers is None else list(headers)
        # [request line] + kept fields, serialised (the request line is filled in upstream_head).
        self.parts: list[bytes] = [b""] if parts is None else parts

    # --- what handlers read ------------------------------------------------------------------------

    @property
    def client_ip(self) -> bytes:
        """The TCP peer's address."""
        return self.conn.ip

    @property
    def client_address(self) -> bytes:
        """The client's address: the peer's, or behind a trusted proxy the last hop it names in
        ``X-Forwarded-For`` (the address that proxy saw)."""
        xff = self.xff
        if xff is not None and self.conn.trusted:
            last = xff.rsplit(b",", 1)[-1].strip()
            if last.startswith(b"["):  # [IPv6]:port
                last = last[1:].split(b"]", 1)[0]
            elif last.count(b":") == 1:  # IPv4:port, as Azure Application Gateway writes it
                last = last.split(b":", 1)[0]
            if last:
                return last
        return self.conn.ip

    @property
    def replayable(self) -> bool:
        """Whether the request may be sent upstream again: nothing of its body was consumed, and
        either it is idempotent or it failed on a reused keep-alive connection (which the
        upstream closed before reading it)."""
        return not self.has_body and (self.reused or self.method in _IDEMPOTENT)

    @property
    def rid(self) -> bytes | None:
        """The request id: the client's ``X-Request-Id``, else the one the gateway generated."""
        if self.request_id is not None:
            return self.request_id
        return self.id_field[14:-2] if self.id_field else None

    def header(self, name: bytes) -> bytes | None:
        """The first value of field ``name`` (lower-case), or ``None``; scans the fields."""
        for n, v in self.headers:
            if len(n) == len(name) and n.lower() == name:
                return v
        return None

    def upstream_head(self) -> bytes:
        """The request head sent upstream (rules: :mod:`gateway.headers`)."""
        conn = self.conn
        parts = self.parts
        parts[0] = self.method + b" " + self.target + b" HTTP/1.1\r\n"
        if not self.special and not self.extra_up:
            # The common case: the proxy's fields depend only on the connection and the Host.
            if self.host != conn.suffix_host:
                conn.suffix_host = self.host
                conn.suffix = request_suffix(
                    client_ip=conn.ip, scheme=conn.listener.scheme, xff=None, xfp=None, xfh=None, host=self.host,
                    trust_forwarded=False,
                )[:-2]
            parts.append(conn.suffix + self.id_field + b"\r\n")
        else:
            listener = conn.listener
            extra = self.extra_up
            if self.id_field:
                extra = (*extra, (b"X-Request-Id", self.id_field[14:-2]))
            parts.append(
                request_suffix(
                    client_ip=conn.ip,
                    scheme=listener.scheme,
                    xff=self.xff,
                    xfp=self.xfp,
                    xfh=self.xfh,
                    host=self.host,
                    xrip=self.xrip,
                    forwarded=self.forwarded,
                    trust_forwarded=conn.trusted,
                    extra=extra,
                    upgrade=self.upgrade,
                    chunked=self.chunked,
                )
            )
        head = b"".join(parts)
        parts.pop()
        return head

    # --- answers -----------------------------------------------------------------------------------

    def respond(
        self,
        status: int,
        body: bytes,
        content_type: bytes = b"text/plain; charset=utf-8",
        extra: Sequence[tuple[bytes, bytes]] = (),
        close: bool = False,
    ) -> None:
        """Answer the request from the gateway itself (errors, waiting page, status JSON)."""
        if self.finished or self.head_sent:
            return
        conn = self.conn
        if not self.request_done:
            if self.expect_continue or self.upgrade is not None:
                close = True  # the client may never send the body it announced
            else:
                self._discard_body()
        close = close or not self.keep_alive or conn.listener.draining or conn.closing
        self.status = status
        self.head_sent = True
        self.close_after = close
        if conn.transport is not None and not conn.closed:
            conn.transport.write(
                simple_response(status, body, content_type=content_type, extra=extra, close=close,
                                head_only=self.is_head)
            )
        self._finish()

    def forward(self, endpoint: Endpoint, fresh: bool = False) -> None:
        """Send the request to ``endpoint`` over a pooled connection (or a new one; always a new one
        when ``fresh``) and relay the response. Failures before the response starts come back as
        :meth:`Handler.upstream_failed`."""
        if self.finished:
            return
        conn = self.conn
        listener = conn.listener
        if self.upgrade is None and not fresh:
            up = listener.pool.acquire(endpoint)
            if up is not None:
                if self.request_done and self.buffered is None and not self.special and not conn.write_paused:
                    # The warm path for a request without a body: one write, at the end of this
                    # round of events (Memo.defer_upstream).
                    self.upstream = up
                    self.reused = True
                    up.start(self, self.response_extra, True)
                    listener.memo.defer_upstream(up.transport, self.upstream_head())  # type: ignore[arg-type]
                else:
                    self._attach(up, True)
                return
        if listener.pool.may_connect(endpoint, self, self.upgrade is not None):
            self.start_connect(endpoint)

    def start_connect(self, endpoint: Endpoint) -> None:
        """Open a new upstream connection for this request (the pool allowed it)."""
        self.task = self.conn.listener.loop.create_task(self._connect(endpoint))

    async def _connect(self, endpoint: Endpoint) -> None:
        listener = self.conn.listener
        pool = listener.pool
        try:
            async with asyncio.timeout(listener.connect_timeout_s):
                _, up = await listener.loop.create_connection(
                    lambda: UpstreamConnection(pool, endpoint), endpoint.host, endpoint.port
                )
        except TimeoutError:
            pool.connect_done(endpoint)
            self._connect_failed("timeout", f"connecting to the project timed out after "
                                 f"{listener.connect_timeout_s:g}s")
            return
        except OSError as exc:
            pool.connect_done(endpoint)
            self._connect_failed("refused", f"the project refused the connection ({exc.strerror or exc})")
            return
        except BaseException:
            pool.connect_done(endpoint)
            raise
        if self.finished:
            pool.release(up)  # another request can use it
            pool.connect_done(endpoint)
            return
        pool.connect_done(endpoint)
        self.task = None
        self._attach(up, False)

    def _connect_failed(self, reason: str, message: str) -> None:
        self.task = None
        if not self.finished:
            self.conn.listener.handler.upstream_failed(self, reason, message)

    def attach(self, up: UpstreamConnection, reused: bool) -> None:
        """Serve this request over ``up``."""
        self.task = None
        self._attach(up, reused)

    def _attach(self, up: UpstreamConnection, reused: bool) -> None:
        conn = self.conn
        self.upstream = up
        self.reused = reused
        transport = up.transport
        assert transport is not None
        if self.request_done and not self.buffered and self.upgrade is None and not self.chunked:
            up.start(self, self.response_extra, True)
            conn.listener.memo.defer_upstream(transport, self.upstream_head())  # nothing follows the head
            if conn.write_paused:
                up.pause_reading()
            return
        up.start(self, self.response_extra, self.request_done)
        transport.write(self.upstream_head())
        if conn.write_paused:
            up.pause_reading()
        if self.upgrade is not None:
            return  # bytes after the head wait for the 101 (start_tunnel)
        buffered = self.buffered
        if buffered:
            self.buffered = None
            if self.chunked:
                for chunk in buffered:
                    transport.writelines((b"%x\r\n" % len(chunk), chunk, _CRLF))
            else:
                transport.writelines(buffered)
        if self.request_done:
            if self.chunked:
                transport.write(_LAST_CHUNK)
        else:
            self.body_mode = BODY_STREAM
            conn.sync_reading()

    def _discard_body(self) -> None:
        self.buffered = None
        self.body_mode = BODY_DISCARD
        self.conn.sync_reading()

    # --- what the upstream side reports (upstream.ResponseSink) -----------------------------------

    def upstream_ready(self, endpoint: Endpoint, up: UpstreamConnection | None) -> None:
        """The pool's answer while this request waited: a free connection, or None: connect now."""
        if up is not None:
            self.attach(up, True)
        else:
            self.start_connect(endpoint)

    def response_mode(self) -> int:
        """How the response now arriving is framed for the client (``upstream.MODE_*``)."""
        mode = 0 if self.http11 else MODE_HTTP10
        if self.is_head:
            mode |= MODE_HEAD
        upgrade = self.upgrade
        if upgrade is not None:
            mode |= MODE_UPGRADE | MODE_CLOSE
            if upgrade:
                mode |= MODE_SWITCH
        elif (not self.keep_alive or self.conn.closing
              or (self.expect_continue and not self.got_continue and not self.request_done)):
            mode |= MODE_CLOSE  # the client may still send the body it announced: none follows
        elif self.http11 and not self.is_head and not self.expect_continue:
            mode |= MODE_PLAIN
        return mode

    def response_interim(self, status: int, head: bytes) -> None:
        """Pass a 1xx (e.g. 100 Continue, 103 Early Hints) on to an HTTP/1.1 client."""
        if status == 100:
            self.got_continue = True
        conn = self.conn
        if self.http11 and not self.head_sent and conn.transport is not None and not conn.closed:
            conn.transport.write(head)

    def response_starts(self, status: int, close: bool) -> None:
        """The final response head (closing the connection after it if ``close``) is sent next."""
        self.status = status
        self.head_sent = True
        self.head_at = self.conn.listener.clock()
        self.close_after = close

    def response_data(self, *parts: bytes) -> None:
        """Bytes for the client."""
        transport = self.conn.transport
        if transport is not None:
            if len(parts) == 1:
                transport.write(parts[0])
            else:
                transport.writelines(parts)

    def response_complete(self) -> None:
        """The upstream response has been relayed completely, or the project closed the tunnel."""
        self.upstream = None
        if self.conn.tunnelling is self:
            self.tunnel_closed()
            return
        if not self.request_done:
            self._discard_body()
        self._finish()

    def response_whole(self, status: int, head: bytes, body: bytes) -> None:
        """A whole response arrived in one read (a plain exchange: the connection stays open)."""
        self.status = status
        self.head_sent = True
        self.upstream = None
        conn = self.conn
        conn.listener.memo.write_last(conn, (head, body))  # now, or at the end of the round
        if not self.request_done:
            self._discard_body()
        self._finish()

    def upstream_failed(self, reason: str, message: str) -> None:
        """The upstream failed: before the response head reached the client the handler answers
        (or forwards again); mid-response the client is aborted, so a truncated body never looks
        complete."""
        up = self.upstream
        self.upstream = None
        if up is not None and not up.closed:
            up.abort()
        if self.finished:
            return
        if not self.head_sent:
            self.conn.listener.handler.upstream_failed(self, reason, message)
            return
        self.error = "mid_body"
        transport = self.conn.transport
        if transport is not None:
            transport.abort()
        self._finish()

    def tunnel_open(self, head: bytes, tail: bytes) -> None:
        """Upstream switched protocols: relay its 101 and splice bytes both ways from now on."""
        conn = self.conn
        self.status = 101
        self.head_sent = True
        self.head_at = conn.listener.clock()
        self.close_after = True
        if conn.transport is None or conn.closed:
            self.abort("client_gone")
            return
        conn.transport.write(head)
        if tail:
            conn.transport.write(tail)
        conn.start_tunnel(self)

    def upstream_paused(self, paused: bool) -> None:
        """The upstream connection's write buffer filled or drained: stop or resume reading the client."""
        self.conn.set_upstream_backpressure(paused)

    # --- ending ------------------------------------------------------------------------------------

    def tunnel_closed(self) -> None:
        """One side of the tunnel closed: close the other one (after flushing) and finish."""
        up = self.upstream
        self.upstream = None
        if up is not None:
            up.close()
        conn = self.conn
        if conn.transport is not None and not conn.closed:
            conn.transport.close()
        self._finish()

    def abort(self, error: str) -> None:
        """End the exchange now (client gone, gateway closing): drop the upstream connection."""
        if self.finished:
            return
        self.error = error
        up = self.upstream
        self.upstream = None
        if up is not None:
            up.abort()
        self.close_after = True
        self._finish()

    def _finish(self) -> None:
        """The one way an exchange ends: once, then the connection moves on."""
        if self.finished:
            return
        self.finished = True
        if self.task is not None:
            self._cancel_task()
        self.conn.exchange_finished(self)

    def _cancel_task(self) -> None:
        task = self.task
        self.task = None
        if task is not None and task is not asyncio.current_task():
            task.cancel()


def _plain_request(ex: Exchange) -> bool:
    """Whether a parsed request needs nothing beyond its head: HTTP/1.1 keep-alive, not HEAD or
    CONNECT, no body, no Expect, no hop-by-hop or forwarding fields, nothing refused (the only
    requests Memo.requests remembers)."""
    return (not ex.special and ex.connection is None and ex.keep_alive and ex.http11 and not ex.has_body
            and ex.te is None and ex.upgrade is None and not ex.expect_continue and ex.refusal is None
            and ex.request_done and ex.buffered is None and ex.method != b"HEAD" and ex.method != b"CONNECT"
            and len(ex.headers) <= MAX_HEADER_COUNT)


class ClientConnection(asyncio.Protocol):
    """One client socket: parses requests and serves their exchanges in order.

    A read that is exactly one plain request head seen before on this listener
    (:attr:`Memo.requests`) is not given to llhttp: identical bytes parse identically, and llhttp,
    at a message start, stays there. Only reads that llhttp parsed into exactly one complete plain
    request are remembered.
    """

    def __init__(self, listener: Listener) -> None:
        self.listener = listener
        self.handler = listener.handler
        self.parser: Any = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.ip = b""
        self.current: Exchange | None = None  # being answered
        self.parsing: Exchange | None = None  # whose head or body is being parsed
        self.queue: collections.deque[Exchange] = collections.deque()
        self.closed = False  # connection_lost happened (or the transport was given up)
        self.closing = False  # no exchange after the current one
        self.trusted = False  # the peer is a trusted proxy: its identity fields are kept
        self.write_paused = False
        self.deferred = False  # a complete response waits in the memo (Memo.write_last)
        self.tunnelling: Exchange | None = None  # the exchange whose tunnel this connection carries
        self._memo = memo = listener.memo
        self._known = memo.requests
        self._known_misses = 0 if memo.enabled else KNOWN_REQUEST_MISSES
        self._messages = 0  # messages llhttp began in the current feed
        self._reading = True
        self._upstream_bp = False
        self._in_head = False
        self._head_bytes = 0
        self._chunk_len = 0
        self._fields = listener.fields
        self._clock = listener.clock
        self._error_status = 0
        self._error_message = b""
        self._upgraded = False
        self._upgrade_tail: list[bytes] = []
        self.since = listener.now
        self._read_at = listener.now  # the last read (or resumption of reading): body timeout
        # The proxy's own request fields for the last Host seen on this connection.
        self.suffix_host: bytes | bool | None = False  # never equal to a Host value at first
        self.suffix = b""

    # --- asyncio.Protocol --------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.ip = str(peer[0]).encode() if isinstance(peer, tuple) and peer else b"unknown"
        listener = self.listener
        self.trusted = listener.trust_forwarded or (bool(listener.trusted_proxies) and listener.is_trusted(self.ip))
        listener.connections.add(self)
        self.since = listener.now
        if listener.draining:
            self.closing = True

    def data_received(self, data: bytes) -> None:
        self._read_at = self.listener.now
        if self.deferred:
            self._memo.flush()  # whatever this data leads to is written after that response
        if self.tunnelling is not None:
            up = self.tunnelling.upstream
            if up is not None and up.transport is not None:
                up.transport.write(data)
            return
        if self._upgraded:
            self._upgrade_tail.append(data)
            self._set_reading(False)
            return
        # Nothing in progress: llhttp is at a message start (a request that ends the connection
        # sets closing once answered, so none follows it here).
        idle = self.current is None and self.parsing is None and not self.queue and not self.closing
        if idle and self._known_misses < KNOWN_REQUEST_MISSES and len(data) <= KNOWN_REQUEST_MAX_BYTES:
            known = self._known.get(data)
            if known is not None:
                self._known_misses = 0
                self._serve_known(known)
                return
            self._known_misses += 1
        else:
            idle = False
        self._chunk_len = len(data)
        self._messages = 0
        try:
            self.parser.feed_data(data)
        except HttpParserUpgrade as exc:
            self._upgraded = True
            tail = data[exc.args[0]:]
            if tail:
                self._upgrade_tail.append(tail)
        except HttpParserError as exc:
            self._parse_error(exc)
            return
        if self._in_head:
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES:
                self._error_status = 431
                self._parse_error(None)
                return
        if self.current is None and self.queue:
            if idle and self._messages == 1 and self.parsing is None and _plain_request(self.queue[0]):
                self._remember(data, self.queue[0])
            self._start_next()
        if self.parsing is not None or self.queue or not self._reading or self._upstream_bp:
            self.sync_reading()

    def _remember(self, data: bytes, ex: Exchange) -> None:
        self._memo.remember_request(data, (ex.method, ex.target, ex.host, ex.route_value, ex.request_id,
                                           ex.user_agent, tuple(ex.headers), b"".join(ex.parts)))

    def _serve_known(self, known: ParsedRequest) -> None:
        """Serve a read that is a remembered plain request head (llhttp is not fed)."""
        ex = Exchange(self, known[6], [b"", known[7]])
        ex.method, ex.target, host, route_value, request_id, user_agent = known[:6]
        if host is not None:
            ex.host = host
        if route_value is not None:
            ex.route_value = route_value
        if request_id is not None:
            ex.request_id = request_id
        if user_agent is not None:
            ex.user_agent = user_agent
        ex.request_done = True
        listener = self.listener
        self.since = listener.now
        ex.started = self._clock()
        self.current = ex
        listener.in_flight += 1
        try:
            self.handler.handle(ex)
        except Exception:
            log.exception("request handler failed")
            if not ex.head_sent:
                ex.respond(500, b"internal error in the gateway\n", close=True)
            else:
                ex.abort("handler_error")
        if not self._reading or self._upstream_bp:
            self.sync_reading()

    def eof_received(self) -> bool | None:
        # The client closed its side. Between exchanges, closing the socket is mere cleanup (in
        # kernel time about a third of a held request's cost): it waits while requests are in
        # flight (Memo.close_later). Mid-exchange, the transport closes now (the exchange aborts).
        if (self.current is None and self.parsing is None and not self.queue and not self.deferred
                and self.tunnelling is None and not self._upgraded and not self.closed):
            self.closing = True
            return self._memo.close_later(self, self.listener.in_flight)
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.listener.connections.discard(self)
        ex = self.current
        if ex is not None and not ex.finished:
            if self.tunnelling is ex:
                ex.tunnel_closed()
            else:
                ex.abort("client_gone")
        self.queue.clear()
        self.parsing = None

    def pause_writing(self) -> None:
        self.write_paused = True
        ex = self.current
        if ex is not None and ex.upstream is not None:
            ex.upstream.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        ex = self.current
        if ex is not None and ex.upstream is not None:
            ex.upstream.resume_reading()

    # --- llhttp callbacks --------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.parsing = Exchange(self)
        self._messages += 1
        self._in_head = True
        self._head_bytes = 0
        self.since = self.listener.now

    def on_url(self, url: bytes) -> None:
        ex = self.parsing
        assert ex is not None
        ex.target += url
        if len(ex.target) > MAX_REQUEST_TARGET_BYTES:
            self._error_status = 414
            raise _LimitExceeded

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._in_head:
            return  # trailers of a chunked body are dropped
        ex: Exchange = self.parsing  # type: ignore[assignment]
        ex.headers.append((name, value))
        cls = self._fields.get(name.lower())
        if cls is None:
            ex.parts += (name, b": ", value, _CRLF)
            return
        if cls in _KEPT_SPECIAL:
            ex.parts += (name, b": ", value, _CRLF)
            if cls == F_HOST:
                if ex.host is not None:
                    self._error_status = 400
                    self._error_message = b"more than one Host header field\n"
                    raise _LimitExceeded
                ex.host = value
            elif cls == F_USER_AGENT:
                ex.user_agent = value
            elif cls == F_LENGTH:
                ex.has_body = value != b"0"
            elif cls == F_EXPECT:
                ex.expect_continue = value.lower() == b"100-continue"
            elif cls == F_ROUTE:
                ex.route_value = value
        elif cls == F_REQUEST_ID:
            # The first one, if a safe token, is forwarded and logged; otherwise the gateway's own
            # id replaces it in both places (Handler.handle generates one when request_id is None).
            if not ex.id_seen:
                ex.id_seen = True
                if safe_request_id(value):
                    ex.request_id = value
                    ex.parts += (name, b": ", value, _CRLF)
        elif cls == F_CONNECTION:
            ex.connection = value if ex.connection is None else ex.connection + b"," + value
        elif cls == F_XFF:
            ex.special = True
            if value:
                ex.xff = value if ex.xff is None else ex.xff + b", " + value
        elif cls == F_UPGRADE:
            ex.special = True
            ex.upgrade = value
        elif cls == F_TE:
            ex.special = True
            ex.te = value if ex.te is None else ex.te + b"," + value
        elif cls == F_XFP:
            ex.special = True
            if ex.xfp is None:
                ex.xfp = value
        elif cls == F_XFH:
            ex.special = True
            if ex.xfh is None:
                ex.xfh = value
        elif cls == F_FORWARDED:
            ex.special = True
            ex.forwarded = value if ex.forwarded is None else ex.forwarded + b", " + value
        elif cls == F_XRIP:
            ex.special = True
            if ex.xrip is None:
                ex.xrip = value
        # otherwise F_DROP: hop-by-hop, not forwarded

    def on_headers_complete(self) -> None:
        self._in_head = False
        ex = self.parsing
        assert ex is not None
        if self._head_bytes + self._chunk_len > MAX_HEAD_BYTES and _head_size(ex) > MAX_HEAD_BYTES:
            self._error_status = 431
            raise _LimitExceeded
        parser = self.parser
        ex.method = method = parser.get_method()
        ex.keep_alive = parser.should_keep_alive()
        # HTTP/1.1 GET-like requests in origin-form need no further checks. (The version must be
        # read now: with pipelining the parser moves on before the exchange starts.)
        if ex.special or ex.connection is not None or not ex.keep_alive or method == b"HEAD" \
                or method == b"CONNECT" or len(ex.headers) > MAX_HEADER_COUNT or not ex.target.startswith(b"/"):
            self._unusual_head(ex, method)
        ex.started = self._clock()
        self.queue.append(ex)

    def _unusual_head(self, ex: Exchange, method: bytes) -> None:
        parser = self.parser
        ex.is_head = method == b"HEAD"
        if ex.te is not None:
            ex.chunked = ex.has_body = True
        if ex.upgrade is not None and not parser.should_upgrade():
            ex.upgrade = None
        if ex.connection is not None and ex.connection.lower() not in _PLAIN_CONNECTION:
            tokens = listed_tokens(ex.connection)
            if tokens:
                ex.special = True
                ex.parts[1:] = kept_parts(ex.headers, self._fields, tokens)
        refusal = None
        if ex.connection is not None or ex.te is not None or not ex.keep_alive or method == b"CONNECT" \
                or len(ex.headers) > MAX_HEADER_COUNT:
            refusal = _request_error(ex, parser.get_http_version())
        if refusal is None and not ex.target.startswith(b"/"):
            refusal = _origin_form(ex)
        if refusal is None and ex.upgrade is not None and ex.has_body:
            # llhttp takes the body for the upgraded protocol's first bytes: it would never be sent.
            refusal = 400, b"an Upgrade request cannot carry a body\n"
        ex.refusal = refusal

    def on_body(self, body: bytes) -> None:
        ex = self.parsing
        if ex is None:
            return
        mode = ex.body_mode
        if mode == BODY_STREAM:
            up = ex.upstream
            if up is not None and up.transport is not None:
                if ex.chunked:
                    up.transport.writelines((b"%x\r\n" % len(body), body, _CRLF))
                else:
                    up.transport.write(body)
        elif mode == BODY_BUFFER:
            if ex.buffered is None:
                ex.buffered = [body]
            else:
                ex.buffered.append(body)

    def on_message_complete(self) -> None:
        ex = self.parsing
        if ex is None:
            return
        self.parsing = None
        ex.request_done = True
        if ex.body_mode == BODY_STREAM:
            up = ex.upstream
            if up is not None:
                if ex.chunked and up.transport is not None:
                    up.transport.write(_LAST_CHUNK)
                up.request_sent()

    # --- exchanges ---------------------------------------------------------------------------------

    def _start_next(self) -> None:
        ex = self.queue.popleft()
        self.current = ex
        self.listener.in_flight += 1
        if ex.refusal is not None:
            # A refused HEAD gets an empty answer: it frames the same for a client (or a proxy in
            # front) that did not take the malformed request for a HEAD.
            ex.respond(ex.refusal[0], b"" if ex.is_head else ex.refusal[1], close=True)
            return
        if self.closing:
            ex.keep_alive = False
        try:
            self.handler.handle(ex)
        except Exception:
            log.exception("request handler failed")
            if not ex.head_sent:
                ex.respond(500, b"internal error in the gateway\n", close=True)
            else:
                ex.abort("handler_error")

    def exchange_finished(self, ex: Exchange) -> None:
        """Called once per exchange; starts the next pipelined one or closes the connection."""
        listener = self.listener
        listener.in_flight -= 1
        if self.current is ex:
            self.current = None
        try:
            self.handler.finished(ex)
        except Exception:
            log.exception("request finished hook failed")
        if listener.in_flight == 0:
            if listener.drain_waiter is not None:
                listener.wake_drain()
            if self._memo.to_close:
                self._memo.close_soon()
        if self.closed:
            return
        if ex.close_after or self._upgraded:
            self.closing = True
            self.queue.clear()
            if self.deferred:
                self._memo.flush()
            if ex.error is None and self.transport is not None:
                self.transport.close()
            return
        self.since = listener.now
        if self.queue:
            self._start_next()
        self.sync_reading()

    def sync_reading(self) -> None:
        """Read from the client only when the data has somewhere to go."""
        if self.tunnelling is not None:
            want = not self._upstream_bp
        elif self._upgraded:
            want = False
        else:
            # A body waiting for its upstream connection stays in the socket (TCP backpressure).
            parsing = self.parsing
            want = not (
                self.queue
                or self._upstream_bp
                or (parsing is not None and not self._in_head and parsing.body_mode == BODY_BUFFER)
            )
        if want != self._reading:
            self._set_reading(want)

    def _set_reading(self, want: bool) -> None:
        if want != self._reading and self.transport is not None and not self.closed:
            self._reading = want
            if want:
                self._read_at = self.listener.now  # a body's timeout counts from here
                self.transport.resume_reading()
            else:
                self.transport.pause_reading()

    def set_upstream_backpressure(self, on: bool) -> None:
        self._upstream_bp = on
        self.sync_reading()

    def start_tunnel(self, ex: Exchange) -> None:
        self.tunnelling = ex
        tail = b"".join(self._upgrade_tail)
        self._upgrade_tail = []
        up = ex.upstream
        if tail and up is not None and up.transport is not None:
            up.transport.write(tail)
        self.sync_reading()

    def _parse_error(self, exc: Exception | None) -> None:
        status = self._error_status or 400
        if self._error_message:
            message = self._error_message
        elif status == 414:
            message = b"request target too long (limit %d bytes)\n" % MAX_REQUEST_TARGET_BYTES
        elif status == 431:
            message = b"request header fields too large (limit %d bytes, %d fields)\n" % (
                MAX_HEAD_BYTES, MAX_HEADER_COUNT)
        else:
            detail = str(exc) if exc is not None else "malformed request"
            message = b"invalid HTTP request: " + detail.encode("ascii", "replace") + b"\n"
        logs.event("bad_request", logging.DEBUG, status=status)
        cur = self.current
        # The client reads the answer written now as the answer to its oldest unanswered request,
        # and a HEAD's answer has no body. When that request may be a HEAD, the answer is empty
        # (Content-Length: 0), which frames the same whatever the client took the method to be.
        oldest = cur if cur is not None and not cur.finished else (self.queue[0] if self.queue else self.parsing)
        if oldest is not None and (
                oldest.is_head or (oldest is self.parsing and self._in_head and self.parser.get_method() == b"HEAD")):
            message = b""
        self.closing = True
        self.queue.clear()
        self.parsing = None
        self._in_head = False
        transport = self.transport
        if cur is not None and not cur.finished and cur.head_sent:
            # A response is already on its way: the connection cannot carry an error any more.
            cur.abort("bad_request")
            if transport is not None:
                transport.abort()
            return
        if transport is not None and not self.closed:
            transport.write(simple_response(status, message, close=True))
        if cur is not None and not cur.finished:
            # The request being served (or one pipelined after it) turned out malformed.
            cur.status = status
            cur.head_sent = True
            cur.abort("bad_request")
        if transport is not None:
            transport.close()

    def idle_check(self, now: float) -> None:
        """Close the connection if it has been idle (keep-alive), slow to send a head, or sent
        nothing of a body it is being read for, too long."""
        listener = self.listener
        body = self.parsing
        if (body is not None and not self._in_head and self._reading and not self._upstream_bp
                and body.body_mode != BODY_BUFFER and now - self._read_at > listener.body_timeout_s
                and not self.closed):
            self._body_timeout(body)
            return
        if self.closed or self.current is not None or self.queue or self.tunnelling is not None:
            return
        if self._in_head:
            if now - self.since > listener.header_timeout_s:
                self.closing = True
                if self.transport is not None:
                    self.transport.write(simple_response(408, b"timed out reading the request head\n", close=True))
                    self.transport.close()
        elif self.parsing is None and (now - self.since > listener.keepalive_timeout_s or listener.draining):
            self.close()

    def _body_timeout(self, ex: Exchange) -> None:
        """A request body stalled: answer 408 if nothing was answered yet, and close. The exchange
        ends, so the stalled upload stops counting as the project's activity."""
        logs.event("client_body_timeout", logging.DEBUG, request_id=logs.request_id(ex.rid) if ex.rid else None)
        self.closing = True
        transport = self.transport
        if ex.finished or ex.head_sent:
            ex.abort("body_timeout")  # a response is on its way (or done): it cannot end cleanly
        else:
            up = ex.upstream
            if up is not None:  # it got part of a body: never reused
                ex.upstream = None
                up.abort()
            ex.respond(408, b"timed out reading the request body\n", close=True)
        if transport is not None and not self.closed:
            transport.close()

    def close(self) -> None:
        """Close gracefully (pending writes are flushed)."""
        self.closing = True
        if self.deferred:
            self._memo.flush()
        if self.transport is not None and not self.closed:
            self.transport.close()

    def abort(self) -> None:
        """Drop the connection and everything in flight on it."""
        ex = self.current
        if ex is not None and not ex.finished:
            ex.abort("gateway_closing")
        if self.transport is not None:
            self.transport.abort()
        self.closed = True


def _head_size(ex: Exchange) -> int:
    return len(ex.target) + sum(len(n) + len(v) + 4 for n, v in ex.headers)


def _request_error(ex: Exchange, version: str) -> tuple[int, bytes] | None:
    """What llhttp lets through but the proxy must refuse: other HTTP versions, non-chunked
    transfer codings (the body would reach the project still encoded), CONNECT, too many fields."""
    if version == "1.0":
        ex.http11 = False
        ex.keep_alive = False  # HTTP/1.0 keep-alive is not worth its framing rules
    elif version != "1.1":
        ex.http11 = False
        ex.keep_alive = False
        return 505, b"HTTP version not supported (use HTTP/1.1)\n"
    if len(ex.headers) > MAX_HEADER_COUNT:
        return 431, b"too many header fields (limit %d)\n" % MAX_HEADER_COUNT
    if ex.te is not None:
        codings = [c.strip().lower() for c in ex.te.split(b",")]
        if codings != [b"chunked"]:
            return 501, b"unsupported transfer coding (only chunked is accepted)\n"
    if ex.method == b"CONNECT":
        return 405, b"CONNECT is not supported\n"
    return None


def _origin_form(ex: Exchange) -> tuple[int, bytes] | None:
    """Rewrite an absolute-form target (``http://host/path``) to origin-form, or refuse it.

    RFC 9112 §3.2.2: the target's authority wins over Host. The gateway routes by Host, so the two
    must name the same host (else 400): a project never receives a target naming another one.
    ``OPTIONS *`` passes as it is; other forms (authority-form) are refused."""
    target = ex.target
    if target == b"*":
        return None if ex.method == b"OPTIONS" else (400, b"the request target * is only valid for OPTIONS\n")
    lowered = target.lower()
    if lowered.startswith(b"http://"):
        rest = target[7:]
    elif lowered.startswith(b"https://"):
        rest = target[8:]
    else:
        return 400, b"invalid request target (expected a path, or an absolute http URL)\n"
    end = len(rest)
    for sep in (b"/", b"?", b"#"):
        at = rest.find(sep)
        if 0 <= at < end:
            end = at
    authority, path = rest[:end], rest[end:]
    if not authority or b"@" in authority:
        return 400, b"invalid authority in the request target\n"
    if ex.host is None or authority.lower() != ex.host.lower():
        return 400, b"the request target names a different host than the Host header\n"
    ex.target = path if path.startswith(b"/") else b"/" + path
    return None


def grow_fd_table(limit: int = FD_TABLE_SIZE) -> None:
    """Have the kernel size the process's descriptor table for ``limit`` descriptors (or the
    open-file limit, if lower) now. It grows by doubling as descriptors are allocated, and in a
    multi-threaded process (libuv's workers) each growth waits for an RCU grace period: ~10 ms
    during which the event loop stands still, in the middle of a herd of connections."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    top = min(limit, soft if soft != resource.RLIM_INFINITY else limit) - 1
    if top < 1024:
        return
    fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    try:
        # The lowest free descriptor >= top (never one in use), closed again: the table stays.
        os.close(fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, top))
    except OSError:
        pass  # the table grows on demand as before
    finally:
        os.close(fd)


class Listener:
    """The public socket: client connections, the upstream pool, the memo, timeouts and drain."""

    def __init__(
        self,
        handler: Handler,
        *,
        scheme: bytes = b"http",
        trust_forwarded: bool = False,
        trusted_proxies: Sequence[str] = (),
        connect_timeout_s: float = 5.0,
        keepalive_timeout_s: float = 75.0,
        header_timeout_s: float = 30.0,
        body_timeout_s: float = 60.0,
        route_header: str | None = None,
        pool: UpstreamPool | None = None,
        memo: Memo | None = None,
    ) -> None:
        self.handler = handler
        self.scheme = scheme
        self.trust_forwarded = trust_forwarded  # every peer is trusted
        self.trusted_proxies = tuple(ipaddress.ip_network(n, strict=False) for n in trusted_proxies)
        self.connect_timeout_s = connect_timeout_s
        self.keepalive_timeout_s = keepalive_timeout_s
        self.header_timeout_s = header_timeout_s
        self.body_timeout_s = body_timeout_s
        # The warm path's shortcuts (gateway.forward.memo), shared with the pool's connections.
        self.memo = memo if memo is not None else Memo()
        self.pool = pool or UpstreamPool()
        self.pool.memo = self.memo
        self.fields = request_fields_table(route_header)
        self.connections: set[ClientConnection] = set()
        self.in_flight = 0
        self.draining = False
        self.drain_waiter: asyncio.Future[None] | None = None
        self.loop = asyncio.get_running_loop()
        self.clock = time.monotonic  # for durations (uvloop's loop.time() has millisecond steps)
        self.now = self.loop.time()
        self.pool.now = self.now  # connections idle before the first sweep are not stale
        self.port: int | None = None
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.TimerHandle | None = None

    def is_trusted(self, ip: bytes) -> bool:
        """Whether a peer address is inside one of the trusted proxies' networks."""
        try:
            addr = ipaddress.ip_address(ip.decode("ascii"))
        except ValueError:
            return False
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        return any(addr in net for net in self.trusted_proxies)

    async def start(self, host: str, port: int) -> None:
        """Bind and start accepting."""
        grow_fd_table()
        self._server = await self.loop.create_server(
            lambda: ClientConnection(self), host, port, reuse_address=True, backlog=1024
        )
        server: Any = self._server  # uvloop's sockets are a list, typeshed says tuple (compiled code checks)
        self.port = server.sockets[0].getsockname()[1]
        self._sweeper = self.loop.call_later(1.0, self._sweep)

    def _sweep(self) -> None:
        self.now = now = self.loop.time()
        self.pool.sweep(now)
        for conn in list(self.connections):
            conn.idle_check(now)
        self._sweeper = self.loop.call_later(1.0, self._sweep)

    async def stop_accepting(self) -> None:
        """Stop accepting connections; idle keep-alive connections close, busy ones after their
        current exchange."""
        self.draining = True
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.closing = True
            if conn.current is None and conn.parsing is None and not conn.queue:
                conn.close()

    async def drain(self, timeout_s: float) -> bool:
        """Wait until no exchange is in flight; False when ``timeout_s`` passes first."""
        try:
            async with asyncio.timeout(timeout_s):
                while self.in_flight > 0:
                    self.drain_waiter = self.loop.create_future()
                    await self.drain_waiter
            return True
        except TimeoutError:
            return False
        finally:
            self.drain_waiter = None

    def wake_drain(self) -> None:
        waiter = self.drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def close(self) -> None:
        """Abort every connection and close the pool."""
        self.memo.flush()
        self.memo.close_deferred()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.abort()
        self.connections.clear()
        self.pool.close()

    async def wait_closed(self) -> None:
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
