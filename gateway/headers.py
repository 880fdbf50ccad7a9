"""Pure header rules of the proxy, on raw ``(name, value)`` byte pairs as the parser gives them.

- Hop-by-hop fields (RFC 9110 §7.6.1) are removed in both directions: the fixed set below plus every
  field named in ``Connection``.
- Requests gain ``X-Forwarded-For`` (appended to any incoming one), ``X-Forwarded-Proto``,
  ``X-Forwarded-Host`` and ``Via``. Incoming ``X-Forwarded-Proto``/``-Host`` are kept only when the
  gateway sits behind a trusted ingress (``trust_forwarded``); otherwise a client could lie about them.
- Responses gain ``Via``; the body framing header is the forwarder's choice, never upstream's.

The builders return a complete message head (start line, fields, blank line) in one pass: they sit
on the hot path of every request.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

Header = tuple[bytes, bytes]

HOP_BY_HOP: frozenset[bytes] = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)

VIA_VALUE = b"1.1 wakegate"

_XFF = b"x-forwarded-for"
_XFP = b"x-forwarded-proto"
_XFH = b"x-forwarded-host"
_HOST = b"host"
_CONNECTION = b"connection"
_CONTENT_LENGTH = b"content-length"
_EMPTY: frozenset[bytes] = frozenset()

# Reason phrases for the status lines the gateway writes itself.
REASONS: dict[int, bytes] = {
    100: b"Continue",
    101: b"Switching Protocols",
    200: b"OK",
    204: b"No Content",
    304: b"Not Modified",
    400: b"Bad Request",
    404: b"Not Found",
    405: b"Method Not Allowed",
    408: b"Request Timeout",
    413: b"Content Too Large",
    414: b"URI Too Long",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    501: b"Not Implemented",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
    505: b"HTTP Version Not Supported",
}


def connection_tokens(headers: Iterable[Header]) -> frozenset[bytes]:
    """The lower-cased field names listed in every ``Connection`` header (``close`` included)."""
    tokens: set[bytes] | None = None
    for name, value in headers:
        if len(name) == 10 and name.lower() == _CONNECTION:
            if tokens is None:
                tokens = set()
            for token in value.split(b","):
                token = token.strip().lower()
                if token:
                    tokens.add(token)
    return frozenset(tokens) if tokens else _EMPTY


def is_hop_by_hop(lower_name: bytes, tokens: frozenset[bytes] = _EMPTY) -> bool:
    """Whether a (lower-cased) field is hop-by-hop for a message whose Connection lists ``tokens``."""
    return lower_name in HOP_BY_HOP or lower_name in tokens


def strip_hop_by_hop(headers: Sequence[Header]) -> list[Header]:
    """``headers`` without hop-by-hop fields, order and case preserved."""
    tokens = connection_tokens(headers)
    return [(n, v) for n, v in headers if not is_hop_by_hop(n.lower(), tokens)]


def request_head(
    method: bytes,
    target: bytes,
    headers: Sequence[Header],
    *,
    client_ip: bytes,
    scheme: bytes = b"http",
    trust_forwarded: bool = False,
    chunked: bool = False,
    upgrade: bytes | None = None,
    extra: Sequence[Header] = (),
    connection: bool = True,
) -> bytes:
    """The head to send upstream for a client request (always HTTP/1.1).

    ``target`` is the raw request-target, passed through byte for byte. ``chunked`` adds
    ``Transfer-Encoding: chunked`` (the forwarder re-chunks a chunked request body); a
    ``Content-Length`` passes through as received. ``upgrade`` (the client's ``Upgrade`` value)
    keeps the connection upgrade for a WebSocket tunnel. ``extra`` fields are appended (e.g. a
    generated ``X-Request-Id``). ``connection=False`` skips the scan for ``Connection`` tokens when
    the caller knows the request had no ``Connection`` header.
    """
    tokens = connection_tokens(headers) if connection else _EMPTY
    parts = [method, b" ", target, b" HTTP/1.1\r\n"]
    append = parts.append
    xff: list[bytes] | None = None
    host: bytes | None = None
    xfp: bytes | None = None
    xfh: bytes | None = None
    for name, value in headers:
        lname = name.lower()
        if lname in HOP_BY_HOP or lname in tokens:
            continue
        if lname == _HOST:
            if host is None:
                host = value
        elif lname == _XFF:
            if xff is None:
                xff = []
            xff.append(value)
            continue
        elif lname == _XFP:
            if trust_forwarded and xfp is None:
                xfp = value
            continue
        elif lname == _XFH:
            if trust_forwarded and xfh is None:
                xfh = value
            continue
        append(name)
        append(b": ")
        append(value)
        append(b"\r\n")
    if xff:
        xff.append(client_ip)
        append(b"X-Forwarded-For: ")
        append(b", ".join(v.strip() for v in xff if v.strip()))
        append(b"\r\n")
    else:
        append(b"X-Forwarded-For: ")
        append(client_ip)
        append(b"\r\n")
    append(b"X-Forwarded-Proto: ")
    append(xfp if xfp is not None else scheme)
    append(b"\r\n")
    if xfh is None:
        xfh = host
    if xfh is not None:
        append(b"X-Forwarded-Host: ")
        append(xfh)
        append(b"\r\n")
    append(b"Via: 1.1 wakegate\r\n")
    for name, value in extra:
        append(name)
        append(b": ")
        append(value)
        append(b"\r\n")
    if upgrade is not None:
        append(b"Connection: upgrade\r\nUpgrade: ")
        append(upgrade)
        append(b"\r\n")
    if chunked:
        append(b"Transfer-Encoding: chunked\r\n")
    append(b"\r\n")
    return b"".join(parts)


# Response framing chosen by the forwarder.
FRAME_NONE = 0  # no body (HEAD, 1xx, 204, 304): fields pass through, nothing is added
FRAME_LENGTH = 1  # upstream's Content-Length passes through
FRAME_CHUNKED = 2  # the body is (re-)chunked for the client
FRAME_CLOSE = 3  # the body ends when the connection closes (HTTP/1.0 clients)


def response_head(
    status: int,
    reason: bytes,
    headers: Sequence[Header],
    *,
    framing: int,
    close: bool = False,
    upgrade: bytes | None = None,
    extra: Sequence[Header] = (),
    connection: bool = True,
) -> bytes:
    """The head to send the client for an upstream response (always ``HTTP/1.1``).

    Hop-by-hop fields are dropped; ``Via`` and ``extra`` are added. ``framing`` says how the
    forwarder delimits the body: with :data:`FRAME_CHUNKED` it adds ``Transfer-Encoding: chunked``
    and drops any ``Content-Length``; with :data:`FRAME_CLOSE` it drops ``Content-Length``.
    ``close`` adds ``Connection: close``; ``upgrade`` (a 101's ``Upgrade``) keeps the upgrade.
    """
    tokens = connection_tokens(headers) if connection else _EMPTY
    parts = [b"HTTP/1.1 ", str(status).encode(), b" ", reason, b"\r\n"]
    append = parts.append
    drop_length = framing in (FRAME_CHUNKED, FRAME_CLOSE)
    for name, value in headers:
        lname = name.lower()
        if lname in HOP_BY_HOP or lname in tokens:
            continue
        if drop_length and lname == _CONTENT_LENGTH:
            continue
        append(name)
        append(b": ")
        append(value)
        append(b"\r\n")
    append(b"Via: 1.1 wakegate\r\n")
    for name, value in extra:
        append(name)
        append(b": ")
        append(value)
        append(b"\r\n")
    if upgrade is not None:
        append(b"Connection: upgrade\r\nUpgrade: ")
        append(upgrade)
        append(b"\r\n")
    elif close:
        append(b"Connection: close\r\n")
    if framing == FRAME_CHUNKED:
        append(b"Transfer-Encoding: chunked\r\n")
    append(b"\r\n")
    return b"".join(parts)


def simple_response(
    status: int,
    body: bytes,
    *,
    content_type: bytes = b"text/plain; charset=utf-8",
    extra: Sequence[Header] = (),
    close: bool = False,
    head_only: bool = False,
) -> bytes:
    """A complete response the gateway answers itself (errors, the waiting page, status JSON).

    ``head_only`` (a HEAD request) keeps ``Content-Length`` but omits the body.
    """
    parts = [
        b"HTTP/1.1 ",
        str(status).encode(),
        b" ",
        REASONS.get(status, b"Unknown"),
        b"\r\nContent-Type: ",
        content_type,
        b"\r\nContent-Length: ",
        str(len(body)).encode(),
        b"\r\nCache-Control: no-store\r\n",
    ]
    for name, value in extra:
        parts += (name, b": ", value, b"\r\n")
    if close:
        parts.append(b"Connection: close\r\n")
    parts.append(b"\r\n")
    if not head_only:
        parts.append(body)
    return b"".join(parts)
