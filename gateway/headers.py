"""Pure header rules of the proxy, on raw ``(name, value)`` byte pairs as the parser gives them.

- Hop-by-hop fields (RFC 9110 §7.6.1) are removed in both directions: the fixed set below plus every
  field named in ``Connection`` — except the fields in :data:`NEVER_LISTED`, which frame or route the
  message (``Content-Length``, ``Transfer-Encoding``, ``Host``) or which the proxy manages itself (the
  identity fields, ``X-Request-Id``). RFC 9110 §7.6.1 is about hop-by-hop fields, not framing: a
  ``Connection: content-length`` obeyed would forward a body without its length, which the next hop
  would parse as the next request. Such a token is ignored (not rejected): the message stays
  unambiguous, since the proxy frames it by the very field the token names.
- Identity fields (``X-Forwarded-For``/``-Proto``/``-Host``, ``Forwarded``, ``X-Real-IP``) follow one
  rule: from a trusted peer (``trusted``: a known ingress) they are kept and appended to; from any
  other peer they are replaced by the gateway's own, since a client could lie about them.
- Requests gain ``Via``; so do responses. A response's body framing is the forwarder's choice, never
  upstream's; the only transfer coding accepted from upstream is ``chunked`` alone
  (:func:`transfer_coding_ok`).

The builders return a complete message head (start line, fields, blank line) in one pass: they sit
on the hot path of every request.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from http import HTTPStatus

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

# Fields a ``Connection`` token never removes (see the module docstring).
NEVER_LISTED: frozenset[bytes] = frozenset(
    {
        b"host",
        b"content-length",
        b"transfer-encoding",
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"forwarded",
        b"x-real-ip",
        b"x-request-id",
    }
)

_XFF = b"x-forwarded-for"
_XFP = b"x-forwarded-proto"
_XFH = b"x-forwarded-host"
_FORWARDED = b"forwarded"
_XRIP = b"x-real-ip"
_REQUEST_ID = b"x-request-id"
_IDENTITY = frozenset({_XFF, _XFP, _XFH, _FORWARDED, _XRIP})
# A client's X-Request-Id is kept (forwarded and logged) when it is short and of these characters.
_SAFE_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:@/+=-]{1,128}")
_HOST = b"host"
_CONNECTION = b"connection"
_CONTENT_LENGTH = b"content-length"
_EMPTY: frozenset[bytes] = frozenset()

# Reason phrases for the status lines the gateway writes itself.
REASONS: dict[int, bytes] = {
    100: b"Continue",
    101: b"Switching Protocols",
    102: b"Processing",
    103: b"Early Hints",
    200: b"OK",
    201: b"Created",
    202: b"Accepted",
    204: b"No Content",
    206: b"Partial Content",
    301: b"Moved Permanently",
    302: b"Found",
    303: b"See Other",
    307: b"Temporary Redirect",
    308: b"Permanent Redirect",
    304: b"Not Modified",
    400: b"Bad Request",
    401: b"Unauthorized",
    403: b"Forbidden",
    404: b"Not Found",
    405: b"Method Not Allowed",
    408: b"Request Timeout",
    409: b"Conflict",
    413: b"Content Too Large",
    414: b"URI Too Long",
    422: b"Unprocessable Content",
    429: b"Too Many Requests",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    501: b"Not Implemented",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
    505: b"HTTP Version Not Supported",
}


def connection_tokens(headers: Iterable[Header]) -> frozenset[bytes]:
    """The lower-cased field names listed in every ``Connection`` header (``close`` included),
    less :data:`NEVER_LISTED`: the fields those tokens make hop-by-hop."""
    tokens: set[bytes] | None = None
    for name, value in headers:
        if len(name) == 10 and name.lower() == _CONNECTION:
            if tokens is None:
                tokens = set()
            for token in value.split(b","):
                token = token.strip().lower()
                if token and token not in NEVER_LISTED:
                    tokens.add(token)
    return frozenset(tokens) if tokens else _EMPTY


def transfer_coding_ok(value: bytes) -> bool:
    """Whether a (joined) ``Transfer-Encoding`` value is ``chunked`` alone, the only coding the
    proxy relays: any other would reach the next hop still encoded, and a response whose final
    coding is not chunked is delimited by close (RFC 9112 §6.3), not by chunks."""
    return [c.strip(b" \t").lower() for c in value.split(b",")] == [b"chunked"]


def forwarded_element(client_ip: bytes, host: bytes | None, scheme: bytes) -> bytes:
    """The gateway's ``Forwarded`` element (RFC 7239): ``for=...;host="...";proto=...``."""
    node = b'"[' + client_ip + b']"' if b":" in client_ip else client_ip
    out = b"for=" + node
    if host is not None:
        out += b';host="' + host.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    return out + b";proto=" + scheme


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
    """The head to send upstream for a client request (always HTTP/1.1): the readable statement of
    the rules that the forwarder's one-pass parse (:func:`kept_parts`, :func:`request_suffix`)
    applies; tests hold the two equal.

    ``target`` is the request-target in origin-form, passed through byte for byte. ``chunked`` adds
    ``Transfer-Encoding: chunked`` (the forwarder re-chunks a chunked request body); a
    ``Content-Length`` passes through as received. ``upgrade`` (the client's ``Upgrade`` value)
    keeps the connection upgrade for a WebSocket tunnel. ``trust_forwarded``: the peer is a trusted
    proxy, whose identity fields are kept. The first ``X-Request-Id`` is kept when it is a safe token
    (:func:`safe_request_id`), the others are dropped; ``extra`` fields are appended (e.g. a
    generated ``X-Request-Id``). ``connection=False`` skips the scan for ``Connection`` tokens when
    the caller knows the request had no ``Connection`` header.
    """
    tokens = connection_tokens(headers) if connection else _EMPTY
    parts = [method, b" ", target, b" HTTP/1.1\r\n"]
    append = parts.append
    xff: list[bytes] = []
    forwarded: list[bytes] = []
    host: bytes | None = None
    xfp: bytes | None = None
    xfh: bytes | None = None
    xrip: bytes | None = None
    request_id_seen = False
    for name, value in headers:
        lname = name.lower()
        if lname in HOP_BY_HOP or lname in tokens:
            continue
        if lname == _HOST:
            if host is None:
                host = value
        elif lname in _IDENTITY:
            if lname == _XFF:
                xff.append(value)
            elif lname == _FORWARDED:
                forwarded.append(value)
            elif lname == _XFP:
                xfp = value if xfp is None else xfp
            elif lname == _XFH:
                xfh = value if xfh is None else xfh
            elif xrip is None:
                xrip = value
            continue
        elif lname == _REQUEST_ID:
            keep = not request_id_seen and safe_request_id(value)
            request_id_seen = True
            if not keep:
                continue
        append(name)
        append(b": ")
        append(value)
        append(b"\r\n")
    joined_xff = b", ".join(v.strip() for v in xff if v.strip()) or None
    append(request_suffix(client_ip=client_ip, scheme=scheme, xff=joined_xff, xfp=xfp, xfh=xfh, host=host,
                          xrip=xrip, forwarded=b", ".join(forwarded) or None, trust_forwarded=trust_forwarded,
                          extra=extra, upgrade=upgrade, chunked=chunked))
    return b"".join(parts)


def safe_request_id(value: bytes) -> bool:
    """Whether a client's ``X-Request-Id`` is safe to forward and to log as it is."""
    return _SAFE_REQUEST_ID.fullmatch(value) is not None


# --- the forwarder's one-pass request parse ---------------------------------------------------------
#
# While llhttp reports a request's fields one by one, the forwarder classifies each lower-cased name
# with this table and serialises the fields it keeps at once, so a request head is walked only once.
# ``request_suffix`` then adds the proxy's own fields. The result equals :func:`request_head`.

F_DROP = 1  # hop-by-hop: never forwarded
F_HOST = 2
F_CONNECTION = 3
F_UPGRADE = 4
F_EXPECT = 5
F_REQUEST_ID = 6  # kept if the first and a safe token (safe_request_id), else dropped
F_USER_AGENT = 7
F_TE = 8
F_LENGTH = 9
F_XFF = 10
F_XFP = 11
F_XFH = 12
F_ROUTE = 13
F_FORWARDED = 14
F_XRIP = 15

# Classes whose fields are forwarded as received (the others are dropped or rewritten).
KEPT_CLASSES = frozenset({F_HOST, F_EXPECT, F_USER_AGENT, F_LENGTH, F_ROUTE})

REQUEST_FIELDS: dict[bytes, int] = {
    **{name: F_DROP for name in HOP_BY_HOP},
    b"host": F_HOST,
    b"connection": F_CONNECTION,
    b"upgrade": F_UPGRADE,
    b"expect": F_EXPECT,
    b"x-request-id": F_REQUEST_ID,
    b"user-agent": F_USER_AGENT,
    b"transfer-encoding": F_TE,
    b"content-length": F_LENGTH,
    b"x-forwarded-for": F_XFF,
    b"x-forwarded-proto": F_XFP,
    b"x-forwarded-host": F_XFH,
    b"forwarded": F_FORWARDED,
    b"x-real-ip": F_XRIP,
}


def request_fields_table(route_header: str | None) -> dict[bytes, int]:
    """:data:`REQUEST_FIELDS` plus the ``--route-header`` field (kept, and read for routing)."""
    table = dict(REQUEST_FIELDS)
    if route_header:
        name = route_header.lower().encode("latin-1")
        if name in table:
            raise ValueError(f"--route-header cannot be {route_header!r}: the proxy handles that field itself")
        table[name] = F_ROUTE
    return table


def listed_tokens(connection_value: bytes) -> frozenset[bytes]:
    """Tokens of a ``Connection`` value that name fields beyond the fixed hop-by-hop set (and
    beyond :data:`NEVER_LISTED`, which no token removes)."""
    tokens = {t.strip().lower() for t in connection_value.split(b",")}
    tokens -= HOP_BY_HOP
    tokens -= NEVER_LISTED
    tokens.discard(b"close")
    tokens.discard(b"")
    return frozenset(tokens)


def kept_parts(headers: Sequence[Header], table: dict[bytes, int], tokens: frozenset[bytes]) -> list[bytes]:
    """The serialised fields a request keeps (slow path: ``Connection`` lists extra fields).
    ``tokens`` come from :func:`listed_tokens`; the route header is never dropped by them."""
    parts: list[bytes] = []
    request_id_seen = False
    for name, value in headers:
        lname = name.lower()
        cls = table.get(lname)
        if cls == F_REQUEST_ID:
            keep = not request_id_seen and safe_request_id(value)
            request_id_seen = True
            if keep:
                parts += (name, b": ", value, b"\r\n")
        elif (cls is None and lname not in tokens) or (cls in KEPT_CLASSES and (cls == F_ROUTE or lname not in tokens)):
            parts += (name, b": ", value, b"\r\n")
    return parts


def request_suffix(
    *,
    client_ip: bytes,
    scheme: bytes,
    xff: bytes | None,
    xfp: bytes | None,
    xfh: bytes | None,
    host: bytes | None,
    trust_forwarded: bool,
    xrip: bytes | None = None,
    forwarded: bytes | None = None,
    extra: Sequence[Header] = (),
    upgrade: bytes | None = None,
    chunked: bool = False,
) -> bytes:
    """The fields the proxy adds after a request's kept fields, and the blank line.

    The incoming identity fields — ``xff`` (``X-Forwarded-For`` lines joined with ``", "``),
    ``forwarded`` (``Forwarded`` lines joined), ``xfp``/``xfh``/``xrip`` (the first
    ``X-Forwarded-Proto``/``-Host``/``X-Real-IP``) — are used only when ``trust_forwarded`` (the
    peer is a trusted proxy): appended to (``X-Forwarded-For``, ``Forwarded``) or kept. Otherwise
    the gateway's own values replace them."""
    if not trust_forwarded:
        xff = xfp = xfh = xrip = forwarded = None
    client = xff + b", " + client_ip if xff else client_ip
    if xfp is None:
        xfp = scheme
    if xfh is None:
        xfh = host
    own = forwarded_element(client_ip, host, scheme)
    if xfh is not None:
        out = b"X-Forwarded-For: %s\r\nX-Forwarded-Proto: %s\r\nX-Forwarded-Host: %s\r\n" % (client, xfp, xfh)
    else:
        out = b"X-Forwarded-For: %s\r\nX-Forwarded-Proto: %s\r\n" % (client, xfp)
    out += b"X-Real-IP: %s\r\nForwarded: %s\r\nVia: 1.1 wakegate\r\n" % (
        xrip if xrip is not None else client_ip, forwarded + b", " + own if forwarded else own)
    for name, value in extra:
        out += name + b": " + value + b"\r\n"
    if upgrade is not None:
        out += b"Connection: upgrade\r\nUpgrade: " + upgrade + b"\r\n"
    if chunked:
        out += b"Transfer-Encoding: chunked\r\n"
    return out + b"\r\n"


class FramingError(ValueError):
    """An upstream response head the proxy cannot frame unambiguously for its client."""


UNSUPPORTED_CODING = "the project answered with a transfer coding other than chunked"

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


_PLAIN_CONNECTION = frozenset({b"keep-alive", b"close"})
_STATUS_LINES: dict[int, bytes] = {code: b"HTTP/1.1 %d %s\r\n" % (code, reason) for code, reason in REASONS.items()}


def status_line(status: int) -> bytes:
    """``HTTP/1.1 <status> <standard reason>\\r\\n`` (upstream reason phrases are not relayed)."""
    line = _STATUS_LINES.get(status)
    if line is None:
        line = b"HTTP/1.1 %d %s\r\n" % (status, _reason(status))
    return line


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b"Unknown"


def relay_response_head(
    status: int,
    headers: Sequence[Header],
    *,
    no_body: bool,
    http11: bool,
    close: bool,
    extra: Sequence[Header] = (),
) -> tuple[bytes, int, bool]:
    """The client's head for an upstream response, in one pass, with the framing the forwarder
    must use: ``(head, framing, upstream_chunked)``.

    ``no_body``: a HEAD request or a 204/304 (fields pass through; nothing is added). Otherwise a
    ``Content-Length`` passes through; without one the body is chunked for HTTP/1.1 clients and
    close-delimited for HTTP/1.0 ones. ``close`` adds ``Connection: close`` (always for
    close-delimited bodies). Raises :class:`FramingError` for a transfer coding other than chunked.
    """
    parts = [status_line(status)]
    length = False
    te: bytes | None = None
    connection: bytes | None = None
    for name, value in headers:
        lname = name.lower()
        if lname in HOP_BY_HOP:
            if lname == b"transfer-encoding":
                te = value if te is None else te + b"," + value
            elif lname == b"connection":
                connection = value if connection is None else connection + b"," + value
            continue
        if lname == _CONTENT_LENGTH:
            length = True
        parts += (name, b": ", value, b"\r\n")
    if connection is not None and connection.lower() not in _PLAIN_CONNECTION:
        tokens = listed_tokens(connection)
        if tokens:
            parts = [parts[0]]
            for name, value in headers:
                lname = name.lower()
                if lname not in HOP_BY_HOP and lname not in tokens:
                    parts += (name, b": ", value, b"\r\n")
    if te is not None and not no_body and not transfer_coding_ok(te):
        raise FramingError(UNSUPPORTED_CODING)
    chunked = te is not None
    if no_body:
        framing = FRAME_NONE
    elif length:
        framing = FRAME_LENGTH
    elif http11:
        framing = FRAME_CHUNKED
    else:
        framing = FRAME_CLOSE
        close = True
    parts.append(b"Via: 1.1 wakegate\r\n")
    for name, value in extra:
        parts += (name, b": ", value, b"\r\n")
    if close:
        parts.append(b"Connection: close\r\n")
    if framing == FRAME_CHUNKED:
        parts.append(b"Transfer-Encoding: chunked\r\n\r\n")
    else:
        parts.append(b"\r\n")
    return b"".join(parts), framing, chunked


# For the raw response-head fast path (on the lower-cased ``\\r\\nname: value`` lines).
_HOP_FIELD = re.compile(
    rb"\r\n(connection|keep-alive|proxy-connection|proxy-authenticate|proxy-authorization|te|trailer"
    rb"|transfer-encoding|upgrade):")
_CUTTABLE = frozenset({b"connection", b"keep-alive", b"transfer-encoding"})


def parse_fields(block: bytes) -> list[Header]:
    """``(name, value)`` pairs of a raw field block (``\\r\\nName: value\\r\\n...``) that llhttp
    already validated."""
    pairs = []
    for line in block.split(b"\r\n"):
        if line:
            name, _, value = line.partition(b":")
            pairs.append((name, value.strip(b" \t")))
    return pairs


def relay_raw_response_head(
    status: int,
    block: bytes,
    no_body: bool,
    http11: bool,
    close: bool,
    extra: Sequence[Header] = (),
) -> tuple[bytes, int, bool, int | None]:
    """:func:`relay_response_head` on the raw field block of an upstream response (from the CRLF
    ending the status line to the CRLF ending the last field), also returning upstream's
    ``Content-Length`` (``None`` without one): ``(head, framing, upstream_chunked, length)``.

    The block is relayed as it came, minus any ``Connection`` (plain ``keep-alive``/``close``),
    ``Keep-Alive`` and ``Transfer-Encoding`` lines, which spares a walk over the fields; any other
    hop-by-hop field takes the general path.
    """
    lowered = block.lower()
    at = lowered.find(b"\r\ncontent-length:")
    length = int(lowered[at + 17:lowered.find(b"\r\n", at + 17)]) if at >= 0 else None
    chunked = False
    m = _HOP_FIELD.search(lowered)
    if m is None:
        pass
    elif (
        lowered.startswith(b" keep-alive\r\n", m.end())
        and m.group(1) == b"connection"
        and _HOP_FIELD.search(lowered, m.end()) is None
    ):
        block = block[:m.start()] + block[m.end() + 11:]  # the usual lone "Connection: keep-alive"
    else:
        cut = _cut_hop_by_hop(block, lowered, m)
        if cut is None:
            return _relay_parsed(status, block, no_body, http11, close, extra)
        block, chunked = cut
    if no_body:
        framing = FRAME_NONE
    elif length is not None:
        framing = FRAME_LENGTH
    elif http11:
        framing = FRAME_CHUNKED
    else:
        framing = FRAME_CLOSE
        close = True
    tail = _TAILS[framing][close] if not extra else _tail(framing, close, extra)
    return (_STATUS_LINES.get(status) or status_line(status)) + block[2:] + tail, framing, chunked, length


def _tail(framing: int, close: bool, extra: Sequence[Header]) -> bytes:
    tail = b"Via: 1.1 wakegate\r\n"
    for name, value in extra:
        tail += name + b": " + value + b"\r\n"
    if close:
        tail += b"Connection: close\r\n"
    if framing == FRAME_CHUNKED:
        tail += b"Transfer-Encoding: chunked\r\n"
    return tail + b"\r\n"


_TAILS = tuple((_tail(f, False, ()), _tail(f, True, ())) for f in range(4))


def _cut_hop_by_hop(block: bytes, lowered: bytes, m: re.Match[bytes] | None) -> tuple[bytes, bool] | None:
    """``block`` without its Connection, Keep-Alive and Transfer-Encoding lines, and whether it
    had a Transfer-Encoding; ``None`` when other hop-by-hop fields are present or Connection
    names fields. ``m`` is the first hop-by-hop match in ``lowered``."""
    chunked = False
    pieces = []
    start = 0
    while m is not None:
        name = m.group(1)
        if name not in _CUTTABLE:
            return None
        eol = lowered.find(b"\r\n", m.end())
        if name == b"connection" and lowered[m.end():eol].strip(b" \t") not in _PLAIN_CONNECTION:
            return None
        if name == b"transfer-encoding":
            if chunked:
                return None  # more than one line: the general path joins them
            chunked = True
            if not transfer_coding_ok(lowered[m.end():eol]):
                return None  # the general path refuses it
        pieces.append(block[start:m.start()])
        start = eol
        m = _HOP_FIELD.search(lowered, eol)
    pieces.append(block[start:])
    return b"".join(pieces), chunked


def _relay_parsed(status: int, block: bytes, no_body: bool, http11: bool, close: bool,
                  extra: Sequence[Header]) -> tuple[bytes, int, bool, int | None]:
    fields = parse_fields(block)
    length = next((int(v) for n, v in fields if n.lower() == _CONTENT_LENGTH), None)
    head, framing, chunked = relay_response_head(status, fields, no_body=no_body, http11=http11, close=close,
                                                 extra=extra)
    return head, framing, chunked, length


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
