"""The warm path's memory, and the work it puts off: every shortcut of the data path, in one place.

One :class:`Memo` per :class:`~gateway.forward.client.Listener` (its upstream pool and connections use
the same one). Nothing here changes a byte that is sent or relayed: with ``Memo(enabled=False)``
every request and response takes the general path and every write happens at once, and
``tests/forward/test_memo.py`` checks on real sockets that both send the upstream and the client
exactly the same bytes. The invariants each shortcut relies on:

**Request heads** (:attr:`Memo.requests`: the read -> what llhttp made of it, :data:`ParsedRequest`).

- Remembered only from a read that llhttp parsed, from a message start, into exactly one complete
  *plain* request (``client._plain_request``: HTTP/1.1 keep-alive, no body, not HEAD or CONNECT, no
  ``Expect``, no ``Connection``, ``Transfer-Encoding``, ``Upgrade`` or forwarding fields, nothing
  refused) and nothing else. Such a request leaves llhttp at a message start again.
- Looked up only for a whole read that arrives while its connection is at a message start (nothing
  parsed, queued or answered, not closing). Identical bytes parse identically, and llhttp, not fed,
  stays at its message start: serving the read from memory is what feeding it would have done.
- Per listener, as its field table (the route header) decides how fields are classified. At most
  :data:`KNOWN_REQUESTS` entries of at most :data:`KNOWN_REQUEST_MAX_BYTES` each (cleared when
  full). A connection stops looking after :data:`KNOWN_REQUEST_MISSES` misses in a row (a miss costs
  hashing the read).

**Response heads** (:attr:`Memo.responses`: head bytes -> :data:`KnownResponse`).

- Remembered only when llhttp accepted the head, it frames its body by ``Content-Length`` (not
  chunked, not close-delimited), its exchange was plain (``MODE_PLAIN``: an HTTP/1.1 keep-alive
  client, not HEAD, no upgrade or ``100-continue``, a connection that stays open) and needed no
  extra fields, and llhttp completed the body exactly where the gateway's own count did, with
  nothing after it, on a connection that goes back to the pool.
- Used only for a read that *starts* with the head, on an upstream connection waiting for a head
  with nothing buffered, for a plain exchange, and never for a read holding more than the body
  (those take the general path, which drops the connection). llhttp is fed neither the head nor the
  body; left at a message start, it is where feeding them would have left it.
- The client's head is the remembered one (plus the exchange's extra fields after ``Via``, where
  :func:`~gateway.headers.relay_raw_response_head` puts them). At most :data:`KNOWN_RESPONSES`.

**Relayed heads** (:attr:`Memo.relayed`): :func:`~gateway.headers.relay_raw_response_head` is a pure
function of its arguments, so its result for a field block (of at most :data:`RELAYED_MAX_BLOCK`
bytes) is remembered by (block, status, flags). At most :data:`RELAYED_HEADS` entries.

**Deferred writes** (:meth:`Memo.defer_upstream`, :meth:`Memo.write_last`): written at the end of
the current round of I/O events (:meth:`Memo.flush` runs as the next ready callback), so the peers
are woken once per round rather than once per request.

- Upstream: only a request head with nothing after it (its response cannot start before it is sent).
- Client: only the last bytes of a complete response, and only when nothing else is due on that
  connection before its next request arrives (nothing queued or being parsed). Whatever may write
  to the connection next flushes first: its ``data_received``, ``close`` and the end of an exchange
  that closes it (``ClientConnection.deferred`` says a write is waiting).
- At most :data:`MAX_DEFERRED_WRITES` wait (then all are written at once); a transport that is
  closing by then is skipped.

**Deferred closes** (:meth:`Memo.close_later`): a connection its client closed *between* exchanges
(nothing in flight on it, nothing deferred) is closed once no request is in flight on the listener,
or after :data:`CLOSE_LATER_S`; at most :data:`MAX_CLOSE_LATER` wait, and :data:`CLOSE_BATCH` are
closed per round of the loop. Closing it is mere cleanup, which waits while a herd is answered.

Not here: the per-connection suffix of the gateway's own request fields (``ClientConnection.suffix``
for the last ``Host``; a pure function of peer, scheme and Host) and the server's routing caches.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Final

from gateway.headers import relay_raw_response_head

if TYPE_CHECKING:
    from gateway.forward.client import ClientConnection

# Request heads remembered per listener, the longest read remembered, and the misses in a row after
# which a connection stops looking (its requests differ from each other, e.g. cookies that change).
KNOWN_REQUESTS: Final = 1024
KNOWN_REQUEST_MAX_BYTES: Final = 4096
KNOWN_REQUEST_MISSES: Final = 16
KNOWN_RESPONSES: Final = 512
RELAYED_HEADS: Final = 512
RELAYED_MAX_BLOCK: Final = 4096  # bigger field blocks are rewritten each time (bounds the memory held)
MAX_DEFERRED_WRITES: Final = 64  # flushed at once beyond this
MAX_CLOSE_LATER: Final = 4096
CLOSE_LATER_S: Final = 0.25
CLOSE_BATCH: Final = 64  # closed per round of the event loop

# What llhttp made of a plain request head: method, target, Host, route-header value, X-Request-Id,
# User-Agent, the fields, the kept fields serialised.
ParsedRequest = tuple[bytes, bytes, bytes | None, bytes | None, bytes | None, bytes | None,
                      tuple[tuple[bytes, bytes], ...], bytes]
# What a remembered response head means for a plain exchange: the client's head, status,
# Content-Length, keep-alive.
KnownResponse = tuple[bytes, int, int, bool]
# relay_raw_response_head's result: (head, framing, upstream_chunked, length).
RelayedHead = tuple[bytes, int, bool, int | None]


class Memo:
    """The warm path's memory and deferred work for one listener (invariants: the module docstring)."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.requests: dict[bytes, ParsedRequest] = {}
        self.responses: dict[bytes, KnownResponse] = {}
        self.relayed: dict[tuple[bytes, int, int], RelayedHead] = {}
        self.to_close: list[ClientConnection] = []  # waiting for close_soon
        self._loop: asyncio.AbstractEventLoop | None = None
        self._up_out: list[tuple[asyncio.Transport, bytes]] = []
        self._client_out: list[tuple[ClientConnection, tuple[bytes, bytes]]] = []
        self._flush_due = False
        self._close_timer: asyncio.TimerHandle | None = None
        self._close_next: asyncio.Handle | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        return loop

    # --- request and response heads ------------------------------------------------------------------

    def remember_request(self, data: bytes, parsed: ParsedRequest) -> None:
        """Remember what llhttp made of ``data``, a read that was exactly one plain request head."""
        if not self.enabled:
            return
        known = self.requests
        if len(known) >= KNOWN_REQUESTS:
            known.clear()
        known[data] = parsed

    def remember_response(self, head: bytes, known: KnownResponse) -> None:
        """Remember a response head whose body llhttp completed where the gateway's count did."""
        if not self.enabled:
            return
        responses = self.responses
        if len(responses) >= KNOWN_RESPONSES:
            responses.clear()
        responses[head] = known

    def relayed_head(self, block: bytes, status: int, no_body: bool, http11: bool, close: bool) -> RelayedHead | None:
        """:func:`relay_raw_response_head` of ``block`` without extra fields, remembered; ``None``
        when it is not remembered (disabled, or a block too big): the caller computes it."""
        if not self.enabled or len(block) > RELAYED_MAX_BLOCK:
            return None
        # Consecutive responses of a project often share their whole field block (Date changes
        # once a second).
        key = (block, status, no_body + 2 * http11 + 4 * close)
        relayed = self.relayed.get(key)
        if relayed is None:
            if len(self.relayed) >= RELAYED_HEADS:
                self.relayed.clear()
            relayed = self.relayed[key] = relay_raw_response_head(status, block, no_body, http11, close)
        return relayed

    # --- deferred writes -----------------------------------------------------------------------------

    def defer_upstream(self, transport: asyncio.Transport, head: bytes) -> None:
        """Write ``head``, a request head with nothing after it, to an upstream connection at the end
        of this round."""
        if not self.enabled:
            transport.write(head)
            return
        if not self._flush_due:
            self._flush_due = True
            self.loop.call_soon(self.flush)
        out = self._up_out
        out.append((transport, head))
        if len(out) >= MAX_DEFERRED_WRITES:
            self.flush()

    def write_last(self, conn: ClientConnection, parts: tuple[bytes, bytes]) -> None:
        """Write the last bytes of a complete response to ``conn``: at the end of this round when
        nothing else is due on ``conn`` before its next request arrives, else now."""
        transport = conn.transport
        if transport is None:
            return
        if not self.enabled or conn.queue or conn.parsing is not None:
            transport.writelines(parts)
            return
        if not self._flush_due:
            self._flush_due = True
            self.loop.call_soon(self.flush)
        conn.deferred = True
        out = self._client_out
        out.append((conn, parts))
        if len(out) >= MAX_DEFERRED_WRITES:
            self.flush()

    def flush(self) -> None:
        """Write everything deferred (transports closed meanwhile are skipped)."""
        self._flush_due = False
        up_out = self._up_out
        if up_out:
            self._up_out = []
            for transport, head in up_out:
                if not transport.is_closing():
                    transport.write(head)
        client_out = self._client_out
        if client_out:
            self._client_out = []
            for conn, parts in client_out:
                conn.deferred = False
                t = conn.transport
                if t is not None and not t.is_closing():
                    t.writelines(parts)

    # --- deferred closes -----------------------------------------------------------------------------

    def close_later(self, conn: ClientConnection, in_flight: int) -> bool:
        """Close ``conn`` (its client closed its side between exchanges) once no request is in
        flight or within CLOSE_LATER_S; False: close it now (nothing in flight, too many wait)."""
        if not self.enabled or in_flight == 0 or len(self.to_close) >= MAX_CLOSE_LATER:
            return False
        self.to_close.append(conn)
        if self._close_timer is None and self._close_next is None:
            self._close_timer = self.loop.call_later(CLOSE_LATER_S, self.close_soon)
        return True

    def close_soon(self) -> None:
        """Start closing the connections :meth:`close_later` kept (from the next callback on)."""
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None
        if self._close_next is None and self.to_close:
            self._close_next = self.loop.call_soon(self._close_some)

    def _close_some(self) -> None:
        # CLOSE_BATCH per round of the loop: a long list closed at once would stall that round.
        self._close_next = None
        conns = self.to_close
        if len(conns) > CLOSE_BATCH:
            conns, self.to_close = conns[:CLOSE_BATCH], conns[CLOSE_BATCH:]
            self._close_next = self.loop.call_soon(self._close_some)
        else:
            self.to_close = []
        _close_all(conns)

    def close_deferred(self) -> None:
        """Close every connection :meth:`close_later` kept, now."""
        for handle in (self._close_timer, self._close_next):
            if handle is not None:
                handle.cancel()
        self._close_timer = self._close_next = None
        conns, self.to_close = self.to_close, []
        _close_all(conns)


def _close_all(conns: list[ClientConnection]) -> None:
    for conn in conns:
        t = conn.transport
        if t is not None and not conn.closed:
            t.close()
