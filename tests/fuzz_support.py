"""The reference side of the data-path fuzzer (tests/forward/test_fuzz.py): HTTP/1.1 framing by h11.

The gateway parses with llhttp (httptools); so does aiohttp. h11 is a separate, pure-Python
implementation, so where the two disagree about where a message ends, the fuzzer sees it.

:func:`frame_requests` and :func:`frame_responses` cut a byte stream into messages the way h11 does,
one message at a time (a fresh ``h11.Connection`` per message, fed what is left of the stream), and
report where the stream stops being framable: an error (the rest would be refused), a message
whose head arrived but whose body did not (``partial``), bytes left after a message that ends the
connection (``rest``).

These rules are stricter or more lenient than h11, on purpose (each is applied where it says so):

- A message with both ``Content-Length`` and ``Transfer-Encoding`` is an error. h11 lets
  ``Transfer-Encoding`` win (RFC 9112 §6.3 rule 3), but the same section says such a message
  "ought to be handled as an error", and it is the textbook smuggling vector: the reference treats
  it as ambiguous, so a gateway that forwards it in any form is caught.
- A request without ``Host`` (HTTP/1.1) is framed, marked ``valid=False``, and framing goes on.
  h11 refuses it only after its head is complete, for what it means, not for where it ends (its
  body is framed like any other's); the gateway answers it 400 itself and may serve the next one.
  An invalid request must never be forwarded.
- A response that has no body whatever its fields say (to HEAD, or 204/304) is framed even when its
  ``Content-Length``/``Transfer-Encoding`` values are ones h11 refuses: they frame nothing there
  (RFC 9112 §6.3 rule 1), and h11 checks them on every head regardless.
- Empty lines (CRLF, or a bare LF, which h11 also accepts as a line end) before a request line are
  skipped when ``skip_empty_lines`` (RFC 9112 §2.2: a server SHOULD ignore at least one empty line
  before a request-line; llhttp skips them, h11 calls them an error). Only for what a client sent:
  what the gateway itself writes upstream must carry no such padding.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import h11

# h11's own head limit (16 KiB) is below the gateway's (64 KiB): raised so the reference never
# refuses a head only for its size (the gateway refusing more is always allowed; the reverse not).
MAX_HEAD_BYTES = 1 << 20

_EMPTY_LINES = re.compile(rb"(?:\r?\n)*")


class Ambiguous(Exception):
    """A message the reference refuses beyond h11 (see the module docstring)."""


@dataclass(frozen=True)
class Request:
    method: bytes
    target: bytes
    version: bytes
    headers: tuple[tuple[bytes, bytes], ...]  # names lower-cased, values without surrounding OWS (h11)
    body: bytes  # de-chunked
    valid: bool = True  # False: framed, but must be refused (see the module docstring)

    def values(self, name: bytes) -> list[bytes]:
        return [v for n, v in self.headers if n == name]

    @property
    def host(self) -> bytes | None:
        hosts = self.values(b"host")
        return hosts[0] if hosts else None


@dataclass(frozen=True)
class Response:
    status: int
    version: bytes
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes
    interim: tuple[int, ...] = ()  # 1xx statuses before it

    def values(self, name: bytes) -> list[bytes]:
        return [v for n, v in self.headers if n == name]


@dataclass
class Framing:
    """How a byte stream frames. ``messages`` are the complete ones, in order. After them either
    the stream ended cleanly (``error``, ``partial`` both ``None`` and ``rest`` empty), or:

    - ``error``: the next message is malformed (h11's message, or the ambiguity rule's);
    - ``incomplete``: the stream ended inside the next message;
    - ``partial``: in either case, the next message when its head was complete (``body`` holds
      what arrived before the end or the error), else ``None``;
    - ``closed``: the last message ends the connection (``Connection: close``, HTTP/1.0); ``rest``
      holds any bytes after it (never part of a message).
    """

    messages: list[Request | Response] = field(default_factory=list)
    error: str | None = None
    partial: Request | Response | None = None
    incomplete: bool = False
    closed: bool = False
    rest: bytes = b""

    def ends_with(self, step: _Step | _ResponseStep, buf: bytes) -> bool:
        """Take one framing step made at ``buf``; whether the
        stream's framing ends there: the next message is malformed or cut short (``rest`` is
        ``buf``), or the one taken closes the connection (``rest`` is what follows it)."""
        if step.message is None:
            self.error, self.partial, self.incomplete, self.rest = step.error, step.partial, step.error is None, buf
            return True
        self.messages.append(step.message)
        if step.closed:
            self.closed = True
            self.rest = step.rest
            return True
        return False

    @property
    def clean(self) -> bool:
        """Whole messages only: nothing malformed, nothing cut short, nothing left over."""
        return self.error is None and not self.incomplete and not self.rest


def _check_framing_fields(headers: Sequence[tuple[bytes, bytes]]) -> None:
    names = {n for n, _ in headers}
    if b"content-length" in names and b"transfer-encoding" in names:
        raise Ambiguous("both Content-Length and Transfer-Encoding (RFC 9112 §6.3: ought to be an error)")


def frame_requests(data: bytes, *, skip_empty_lines: bool = True) -> Framing:
    """Frame ``data`` as the requests of one client connection (h11 as server)."""
    out = Framing()
    buf = data
    while True:
        if skip_empty_lines:
            buf = buf[_EMPTY_LINES.match(buf).end():]  # type: ignore[union-attr]
        if not buf:
            return out
        step = _next_request(buf)
        if step.error == _MISSING_HOST:
            # Frame it as if it had an (empty) Host, to find where it ends. h11 parsed the request
            # line, so the first line end is the request line's.
            eol = buf.index(b"\n") + 1
            step = _next_request(buf[:eol] + b"Host: \r\n" + buf[eol:], valid=False)
        if out.ends_with(step, buf):
            return out
        buf = step.rest


_MISSING_HOST = "Missing mandatory Host: header"


@dataclass
class _Step:
    message: Request | None = None
    error: str | None = None
    partial: Request | None = None
    rest: bytes = b""
    closed: bool = False


def _next_request(buf: bytes, valid: bool = True) -> _Step:
    """The first request in ``buf``: complete (with the bytes after it), malformed, or cut short."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
    conn.receive_data(buf)
    head: h11.Request | None = None
    body: list[bytes] = []
    try:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:  # the stream ends inside this message
                return _Step(partial=None if head is None else _request(head, body, valid))
            if isinstance(event, h11.Request):
                _check_framing_fields(list(event.headers))
                head = event
            elif isinstance(event, h11.Data):
                body.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                break
            else:  # h11 yields nothing else before EndOfMessage
                raise AssertionError(f"unexpected h11 event {event!r}")
    except (h11.RemoteProtocolError, Ambiguous) as exc:
        return _Step(error=str(exc), partial=None if head is None else _request(head, body, valid))
    assert head is not None
    return _Step(message=_request(head, body, valid), rest=bytes(conn.trailing_data[0]),
                 closed=conn.their_state is h11.MUST_CLOSE)


def _request(head: h11.Request, body: list[bytes], valid: bool = True) -> Request:
    return Request(bytes(head.method), bytes(head.target), bytes(head.http_version),
                   tuple((bytes(n), bytes(v)) for n, v in head.headers), b"".join(body), valid)


def frame_responses(data: bytes, methods: Sequence[bytes], *, eof: bool) -> Framing:
    """Frame ``data`` as the responses to requests with ``methods`` (in order) on one connection
    (h11 as client). ``eof``: the server closed after ``data`` (ends close-delimited bodies).
    Bytes after ``len(methods)`` responses are left in ``rest`` (nobody asked for them)."""
    out = Framing()
    buf = data
    for method in methods:
        if not buf:
            return out  # no (further) response
        step = _next_response(buf, method, eof)
        if step.head is not None and _names_framing_field(step.error) and (
                method == b"HEAD" or _status(buf[step.head[0]:step.head[1]]) in (204, 304)):
            # A response without a body whatever its fields say (RFC 9112 §6.3 rule 1): its
            # Content-Length and Transfer-Encoding frame nothing, so their values are not
            # checked (h11 checks them anyway, on every head). Framed again without them.
            start, end = step.head
            step = _next_response(buf[:start] + _without_framing_fields(buf[start:end]) + buf[end:], method, eof)
        if out.ends_with(step, buf):
            return out
        buf = step.rest
    out.rest = buf  # bytes after the responses asked for: never part of one
    return out


@dataclass
class _ResponseStep:
    message: Response | None = None
    error: str | None = None
    partial: Response | None = None
    rest: bytes = b""
    closed: bool = False
    head: tuple[int, int] | None = None  # where the final head h11 refused lies in the buffer


def _next_response(buf: bytes, method: bytes, eof: bool) -> _ResponseStep:
    """The first response (1xx included) in ``buf``: complete, malformed, or cut short."""
    conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD_BYTES)
    conn.send(h11.Request(method=method, target="/", headers=[("Host", "reference.test")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(buf)
    if eof:
        conn.receive_data(b"")
    interim: list[int] = []
    head: h11.Response | None = None
    body: list[bytes] = []
    consumed = 0
    try:
        while True:
            consumed = len(buf) - len(conn.trailing_data[0])
            event = conn.next_event()
            if event is h11.NEED_DATA:  # the stream ends inside this message
                return _ResponseStep(partial=None if head is None else _response(head, body, interim))
            if isinstance(event, h11.InformationalResponse):
                interim.append(event.status_code)
            elif isinstance(event, h11.Response):
                _check_framing_fields(list(event.headers))
                head = event
            elif isinstance(event, h11.Data):
                body.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                break
            elif isinstance(event, h11.ConnectionClosed):  # EOF where a response should begin
                return _ResponseStep(error="connection closed before a response")
            else:
                raise AssertionError(f"unexpected h11 event {event!r}")
    except (h11.RemoteProtocolError, Ambiguous) as exc:
        partial = None if head is None else _response(head, body, interim)
        if "closed connection" in str(exc):  # h11's words for an EOF inside a head or a body
            return _ResponseStep(partial=partial)
        if partial is not None:
            return _ResponseStep(error=str(exc), partial=partial)
        return _ResponseStep(error=str(exc), head=(consumed, len(buf) - len(conn.trailing_data[0])))
    assert head is not None
    return _ResponseStep(message=_response(head, body, interim), rest=bytes(conn.trailing_data[0]),
                         closed=conn.their_state is h11.MUST_CLOSE)


def _names_framing_field(error: str | None) -> bool:
    return error is not None and ("Content-Length" in error or "Transfer-Encoding" in error)


def _status(head: bytes) -> int:
    m = re.match(rb"HTTP/[0-9]\.[0-9] ([0-9]{3})", head)
    return int(m.group(1)) if m else -1


_FRAMING_FIELD_LINE = re.compile(rb"(?im)^(?:content-length|transfer-encoding):[^\n]*\n")


def _without_framing_fields(head: bytes) -> bytes:
    return _FRAMING_FIELD_LINE.sub(b"", head)


def _response(head: h11.Response, body: list[bytes], interim: list[int]) -> Response:
    return Response(head.status_code, bytes(head.http_version),
                    tuple((bytes(n), bytes(v)) for n, v in head.headers), b"".join(body), tuple(interim))


def origin_form(target: bytes) -> bytes | None:
    """The origin-form of an absolute-form ``target`` (``http://host/p?q`` → ``/p?q``, an empty
    path → ``/``), or ``None`` when ``target`` is not absolute-form."""
    m = re.fullmatch(rb"[A-Za-z][A-Za-z0-9+.-]*://([^/?#]*)([^#]*)", target)
    if m is None:
        return None
    rest = m.group(2)
    if not rest.startswith(b"/"):
        rest = b"/" + rest
    return rest


def authority_host(target: bytes) -> bytes | None:
    """The host of an absolute-form ``target``, normalised like :func:`host_name`."""
    m = re.fullmatch(rb"[A-Za-z][A-Za-z0-9+.-]*://(?:[^@/?#]*@)?([^/?#]*)[^#]*", target)
    return host_name(m.group(1)) if m else None


def host_name(value: bytes) -> bytes:
    """A Host value's name: lower-cased, without port or trailing dot."""
    name = value.strip().lower()
    if name.startswith(b"["):
        return name.split(b"]", 1)[0] + b"]"
    return name.rsplit(b":", 1)[0].rstrip(b".") if b":" in name else name.rstrip(b".")
