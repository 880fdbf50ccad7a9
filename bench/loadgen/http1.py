"""HTTP/1.1 response framing for the load generator: pure functions and state machines over bytes.

Minimal and strict: a status line, headers, then a body delimited by Content-Length, chunked
encoding, or the end of the connection. Anything else raises :class:`ProtocolError` naming the problem.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_HEAD = 64 * 1024


class ProtocolError(ValueError):
    """The peer sent something that is not a well-formed HTTP/1.x response."""


@dataclass(frozen=True, slots=True)
class ResponseHead:
    """A parsed response head; ``length`` is the number of bytes up to and including its blank line."""

    status: int
    length: int
    content_length: int  # -1: not given
    chunked: bool
    closing: bool  # the server closes the connection after this response

    @property
    def bodiless(self) -> bool:
        return self.status < 200 or self.status in (204, 304)


def request_bytes(method: str, path: str, host: str, extra: str = "") -> bytes:
    """The request head the generator sends (``extra``: further header lines, each ending in CRLF)."""
    return (f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: wakegate-bench\r\nAccept: */*\r\n"
            f"{extra}\r\n").encode("latin-1")


def _head_end(data: bytes) -> int:
    """Index just past the blank line ending the head, or -1 (CRLF or bare LF line endings)."""
    crlf = data.find(b"\r\n\r\n")
    lf = data.find(b"\n\n")
    if crlf < 0:
        return -1 if lf < 0 else lf + 2
    if lf < 0 or crlf + 2 < lf:
        return crlf + 4
    return lf + 2


def parse_response_head(data: bytes) -> ResponseHead | None:
    """Parse the head at the start of ``data``; None while it is incomplete."""
    end = _head_end(data)
    if end < 0:
        if len(data) > MAX_HEAD:
            raise ProtocolError(f"response head longer than {MAX_HEAD} bytes")
        return None
    lines = data[:end].split(b"\n")
    parts = lines[0].strip().split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
        raise ProtocolError(f"malformed status line {lines[0][:80]!r}")
    if not parts[1].isdigit() or len(parts[1]) != 3:
        raise ProtocolError(f"malformed status code {parts[1][:20]!r}")
    status = int(parts[1])
    closing = parts[0] == b"HTTP/1.0"
    length, chunked = -1, False
    for raw in lines[1:]:
        line = raw.rstrip(b"\r")
        if not line:
            continue
        name, sep, value = line.partition(b":")
        if not sep or not name or name != name.strip():
            raise ProtocolError(f"malformed header line {line[:80]!r}")
        key = name.lower()
        value = value.strip()
        if key == b"content-length":
            if not value.isdigit():
                raise ProtocolError(f"malformed Content-Length {value[:40]!r}")
            if length >= 0 and int(value) != length:
                raise ProtocolError("conflicting Content-Length headers")
            length = int(value)
        elif key == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
        elif key == b"connection":
            v = value.lower()
            closing = b"close" in v or (closing and b"keep-alive" not in v)
    if chunked:
        length = -1  # Transfer-Encoding wins over Content-Length (RFC 9112 6.3)
    return ResponseHead(status, end, length, chunked, closing)


# Chunked-body states
_SIZE, _DATA, _DATA_END, _TRAILER = range(4)


class BodyReader:
    """Consumes one response body as it arrives; ``feed`` returns how many bytes belonged to it."""

    __slots__ = ("_line", "_remaining", "_state", "done", "mode", "received")

    def __init__(self, head: ResponseHead) -> None:
        self.received = 0  # body bytes (for chunked: the decoded data)
        self._line = b""
        self._state = _SIZE
        self._remaining = 0
        if head.bodiless:
            self.mode, self.done = "none", True
        elif head.chunked:
            self.mode, self.done = "chunked", False
        elif head.content_length >= 0:
            self.mode, self.done = "length", head.content_length == 0
            self._remaining = head.content_length
        else:
            self.mode, self.done = "close", False

    def feed(self, data: bytes | memoryview) -> int:
        if self.done:
            return 0
        if self.mode == "length":
            take = min(self._remaining, len(data))
            self._remaining -= take
            self.received += take
            self.done = self._remaining == 0
            return take
        if self.mode == "close":
            self.received += len(data)
            return len(data)
        return self._feed_chunked(data)

    def eof(self) -> None:
        """The connection ended: completes a body delimited by the close, else raises."""
        if self.mode == "close":
            self.done = True
        elif not self.done:
            raise ProtocolError("connection closed before the response was complete")

    def _feed_chunked(self, data: bytes | memoryview) -> int:
        pos, n = 0, len(data)
        while pos < n and not self.done:
            if self._state == _DATA:
                take = min(self._remaining, n - pos)
                self._remaining -= take
                self.received += take
                pos += take
                if self._remaining == 0:
                    self._state = _DATA_END
                continue
            # a line: a chunk size, the CRLF after chunk data, or a trailer line
            chunk = bytes(data[pos:pos + 1024])
            nl = chunk.find(b"\n")
            if nl < 0:
                self._line += chunk
                pos += len(chunk)
                if len(self._line) > 4096:
                    raise ProtocolError("chunked body: line longer than 4096 bytes")
                continue
            line = (self._line + chunk[:nl]).rstrip(b"\r")
            self._line = b""
            pos += nl + 1
            if self._state == _SIZE:
                size_text = line.split(b";", 1)[0].strip()
                try:
                    size = int(size_text, 16)
                except ValueError:
                    raise ProtocolError(f"chunked body: malformed chunk size {size_text[:20]!r}") from None
                if size < 0 or size_text.startswith((b"-", b"+", b"0x", b"0X")):
                    raise ProtocolError(f"chunked body: malformed chunk size {size_text[:20]!r}")
                if size == 0:
                    self._state = _TRAILER
                else:
                    self._state, self._remaining = _DATA, size
            elif self._state == _DATA_END:
                if line:
                    raise ProtocolError("chunked body: chunk data longer than its size")
                self._state = _SIZE
            elif not line:  # _TRAILER: the blank line ends the body
                self.done = True
        return pos


class ResponseReader:
    """One response at a time on a connection: feed it what arrives until ``feed`` returns True."""

    __slots__ = ("_pending", "body", "head")

    # Identical heads are parsed once (a server's head changes at most with its Date header).
    _memo: dict[bytes, ResponseHead] = {}

    def __init__(self) -> None:
        self.head: ResponseHead | None = None
        self.body: BodyReader | None = None
        self._pending = b""

    def reset(self) -> None:
        self.head, self.body, self._pending = None, None, b""

    def feed(self, data: bytes | memoryview) -> bool:
        """Consume ``data``; True once the response is complete. Bytes past its end are an error
        (the generator never pipelines requests)."""
        body = self.body
        if body is None:
            raw = self._pending + bytes(data) if self._pending else bytes(data)
            end = _head_end(raw)
            head = self._memo.get(raw[:end]) if end > 0 else None
            if head is None:
                head = parse_response_head(raw)
                if head is None:
                    self._pending = raw
                    return False
                if len(self._memo) >= 4096:
                    self._memo.clear()
                self._memo[raw[:head.length]] = head
            self._pending = b""
            self.head = head
            body = self.body = BodyReader(head)
            rest: bytes | memoryview = raw[head.length:]
        else:
            rest = data
        used = body.feed(rest)
        if used < len(rest):
            raise ProtocolError(f"{len(rest) - used} unexpected bytes after the response")
        return body.done

    def eof(self) -> bool:
        """The connection ended: True if that completed the response; raises if it cut it short."""
        if self.body is None:
            raise ProtocolError("connection closed before a response" if not self._pending
                                else "connection closed in the middle of the response head")
        self.body.eof()
        return True
