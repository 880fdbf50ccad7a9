"""bench/loadgen's response framing: heads, bodies by length, chunked, until close; malformed input."""

from __future__ import annotations

import pytest

from bench.loadgen.http1 import (
    BodyReader,
    ProtocolError,
    ResponseHead,
    ResponseReader,
    parse_response_head,
    request_bytes,
)

OK = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello"


def head(raw: bytes) -> ResponseHead:
    parsed = parse_response_head(raw)
    assert parsed is not None
    return parsed


def test_request_bytes() -> None:
    assert request_bytes("GET", "/x", "a.bench.local") == (
        b"GET /x HTTP/1.1\r\nHost: a.bench.local\r\nUser-Agent: wakegate-bench\r\nAccept: */*\r\n\r\n")
    assert request_bytes("POST", "/upload", "h", "Content-Length: 3\r\n").endswith(b"Content-Length: 3\r\n\r\n")


def test_head_with_content_length() -> None:
    h = head(OK)
    assert (h.status, h.content_length, h.chunked, h.closing) == (200, 5, False, False)
    assert OK[h.length:] == b"hello"


def test_incomplete_head_is_none() -> None:
    for cut in range(len(OK) - 5):
        assert parse_response_head(OK[:cut]) is None, cut


def test_bare_lf_line_endings() -> None:
    h = head(b"HTTP/1.1 204 No Content\nX: y\n\n")
    assert h.status == 204 and h.bodiless and h.length == len(b"HTTP/1.1 204 No Content\nX: y\n\n")


@pytest.mark.parametrize(("raw", "closing"), [
    (b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n", True),
    (b"HTTP/1.1 200 OK\r\nconnection: Keep-Alive, Close\r\n\r\n", True),
    (b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", True),
    (b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n", False),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", False),
])
def test_connection_close(raw: bytes, closing: bool) -> None:
    assert head(raw).closing is closing


def test_chunked_wins_over_length() -> None:
    h = head(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert h.chunked and h.content_length == -1


@pytest.mark.parametrize(("raw", "problem"), [
    (b"HTTP/2 200 OK\r\n\r\n", "status line"),
    (b"ICY 200 OK\r\n\r\n", "status line"),
    (b"HTTP/1.1 2x0 OK\r\n\r\n", "status code"),
    (b"HTTP/1.1 20 OK\r\n\r\n", "status code"),
    (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", "header line"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "Content-Length"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", "conflicting"),
])
def test_malformed_heads(raw: bytes, problem: str) -> None:
    with pytest.raises(ProtocolError, match=problem):
        parse_response_head(raw)


def test_oversized_head() -> None:
    with pytest.raises(ProtocolError, match="longer than"):
        parse_response_head(b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 20000)


def test_length_body_consumes_exactly() -> None:
    body = BodyReader(head(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n"))
    assert body.feed(b"ab") == 2 and not body.done
    assert body.feed(b"cdEXTRA") == 2 and body.done and body.received == 4


def test_bodiless_statuses_ignore_length() -> None:
    for status in (101, 204, 304):
        assert BodyReader(head(f"HTTP/1.1 {status} X\r\nContent-Length: 9\r\n\r\n".encode())).done


def test_close_delimited_body() -> None:
    body = BodyReader(head(b"HTTP/1.1 200 OK\r\n\r\n"))
    assert body.feed(b"abc") == 3 and not body.done
    body.eof()
    assert body.done and body.received == 3


def test_eof_before_length_is_an_error() -> None:
    body = BodyReader(head(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n"))
    body.feed(b"ab")
    with pytest.raises(ProtocolError, match="closed before"):
        body.eof()


CHUNKED = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"5;ext=1\r\nhello\r\n10\r\n0123456789abcdef\r\n0\r\nTrailer: x\r\n\r\n")


def test_chunked_in_every_split() -> None:
    """Split into two pieces at every position, and fed one byte at a time: the same result."""
    h = head(CHUNKED)
    body_bytes = CHUNKED[h.length:]
    for cut in range(len(body_bytes) + 1):
        body = BodyReader(h)
        used = body.feed(body_bytes[:cut]) + body.feed(body_bytes[cut:])
        assert body.done and used == len(body_bytes) and body.received == 21, cut
    body = BodyReader(h)
    for i in range(len(body_bytes)):
        assert not body.done
        assert body.feed(body_bytes[i:i + 1]) == 1
    assert body.done and body.received == 21


def test_chunked_stops_at_its_end() -> None:
    body = BodyReader(head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"))
    data = b"1\r\nx\r\n0\r\n\r\nNEXT"
    assert body.feed(data) == len(data) - 4 and body.done


@pytest.mark.parametrize(("data", "problem"), [
    (b"zz\r\n", "chunk size"),
    (b"-1\r\n", "chunk size"),
    (b"0x5\r\n", "chunk size"),
    (b"2\r\nabc\r\n", "longer than its size"),
    (b"1" * 5000, "line longer"),
])
def test_malformed_chunked(data: bytes, problem: str) -> None:
    body = BodyReader(head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"))
    with pytest.raises(ProtocolError, match=problem):
        body.feed(data)


def test_reader_whole_response_at_once_and_reuse() -> None:
    r = ResponseReader()
    for _ in range(3):  # the second and third head come from the memo
        assert r.feed(OK)
        assert r.head is not None and r.head.status == 200
        r.reset()


def test_reader_head_split_across_reads() -> None:
    r = ResponseReader()
    for i in range(len(OK) - 1):
        assert not r.feed(OK[i:i + 1])
    assert r.feed(OK[-1:])
    assert r.body is not None and r.body.received == 5


def test_reader_rejects_bytes_after_the_response() -> None:
    with pytest.raises(ProtocolError, match="3 unexpected bytes"):
        ResponseReader().feed(OK + b"abc")


def test_reader_eof() -> None:
    r = ResponseReader()
    with pytest.raises(ProtocolError, match="before a response"):
        r.eof()
    r.feed(b"HTTP/1.1 200")
    with pytest.raises(ProtocolError, match="middle of the response head"):
        r.eof()
    r = ResponseReader()
    assert not r.feed(b"HTTP/1.1 200 OK\r\n\r\nuntil close")
    assert r.eof()


def test_dechunk_for_the_watch() -> None:
    from bench.loadgen.watch import dechunk

    stream = b'1d\r\n{"type":"ADDED","object":{}}\n\r\n5;x=y\r\n{}\n{}\r\n0\r\n\r\n'
    for cut in range(len(stream) + 1):
        buf, out = bytearray(stream[:cut]), bytearray()
        ended = dechunk(buf, out)
        buf += stream[cut:]
        ended = dechunk(buf, out) or ended
        assert ended and bytes(out) == b'{"type":"ADDED","object":{}}\n{}\n{}', cut
    with pytest.raises(ProtocolError, match="chunk size"):
        dechunk(bytearray(b"zz\r\n"), bytearray())
