"""Differential tests: the same hostile or edge-case bytes are sent to a real application server
directly (the reference) and through the gateway to the same server. What the application saw
must agree: every request the gateway forwards must be one the reference parsed the same way, in
the same position, and the gateway must never forward a request the reference did not see (no
request smuggling through re-framing). The gateway may refuse more than the reference does, but
only for the reasons listed in ``STRICTER``.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

import httptools
import pytest
from aiohttp import web

from tests.support import DOMAIN, STEP_TIMEOUT_S, AppUpstream, TableBackend, _ResponseSink, running_gateway

H = f"app.{DOMAIN}"


@dataclass(frozen=True)
class Seen:
    method: str
    target: str
    body: bytes
    host: str | None


def reference_app(log: list[Seen]) -> web.Application:
    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        log.append(Seen(request.method, request.raw_path, body, request.headers.get("Host")))
        return web.Response(text=f"saw {request.method} {request.raw_path} {len(body)}")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


SENTINEL_TARGET = "/__end"


async def exchange_raw(port: int, data: bytes) -> bytes:
    """Send ``data`` and a final ``Connection: close`` request; read until the peer closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data + f"GET {SENTINEL_TARGET} HTTP/1.1\r\nHost: {H}\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    chunks = []
    try:
        async with asyncio.timeout(STEP_TIMEOUT_S):
            while data := await reader.read(65536):
                chunks.append(data)
    except ConnectionResetError:
        pass
    finally:
        writer.close()
    return b"".join(chunks)


def statuses(raw: bytes) -> list[int]:
    """Statuses of the responses in ``raw`` (parsed with llhttp; a truncated tail is ignored)."""
    sink = _ResponseSink()
    sink.parser = httptools.HttpResponseParser(sink)
    with contextlib.suppress(httptools.HttpParserError):
        sink.parser.feed_data(raw)
    return [r.status for r in sink.done]


def R(method: str, target: str = "/", headers: str = "", body: bytes = b"", version: str = "1.1") -> bytes:
    return f"{method} {target} HTTP/{version}\r\nHost: {H}\r\n{headers}\r\n".encode() + body


CASES: dict[str, bytes] = {
    "simple": R("GET"),
    "pipelined": R("GET", "/1") + R("POST", "/2", "Content-Length: 3\r\n", b"abc") + R("GET", "/3"),
    "chunked with extensions and trailers": R("POST", "/c", "Transfer-Encoding: chunked\r\n",
                                              b"3;a=b\r\nabc\r\n0\r\nX-T: 1\r\n\r\n"),
    "chunked then pipelined": R("POST", "/c", "Transfer-Encoding: chunked\r\n", b"1\r\na\r\n0\r\n\r\n")
    + R("GET", "/n"),
    "smuggle: CL then TE": R("POST", "/s", "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n",
                             b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"),
    "smuggle: TE then CL": R("POST", "/s", "Transfer-Encoding: chunked\r\nContent-Length: 4\r\n",
                             b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"),
    "smuggle: TE with trailing garbage": R("POST", "/s", "Transfer-Encoding: chunkedx\r\n",
                                           b"0\r\n\r\nGET /smuggled HTTP/1.1\r\n\r\n"),
    "smuggle: TE comma list": R("POST", "/s", "Transfer-Encoding: identity, chunked\r\n", b"0\r\n\r\n"),
    "smuggle: two TE lines": R("POST", "/s", "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n",
                               b"0\r\n\r\n"),
    "smuggle: space before colon": R("POST", "/s", "Transfer-Encoding : chunked\r\nContent-Length: 3\r\n",
                                     b"0\r\n\r\n"),
    "smuggle: obs-fold TE": R("POST", "/s", "X: y\r\n Transfer-Encoding: chunked\r\n", b"0\r\n\r\n"),
    "duplicate CL equal": R("POST", "/d", "Content-Length: 3\r\nContent-Length: 3\r\n", b"abc"),
    "duplicate CL different": R("POST", "/d", "Content-Length: 3\r\nContent-Length: 5\r\n", b"abcde"),
    "CL with sign": R("POST", "/d", "Content-Length: +3\r\n", b"abc"),
    "CL leading zeros": R("POST", "/d", "Content-Length: 003\r\n", b"abc"),
    "chunk size overflow": R("POST", "/c", "Transfer-Encoding: chunked\r\n", b"fffffffffffffffff1\r\nab\r\n0\r\n\r\n"),
    "chunk size not hex": R("POST", "/c", "Transfer-Encoding: chunked\r\n", b"xyz\r\nab\r\n0\r\n\r\n"),
    "chunk missing CRLF": R("POST", "/c", "Transfer-Encoding: chunked\r\n", b"2\r\nabcd0\r\n\r\n") + R("GET", "/n"),
    "bare LF": b"GET /lf HTTP/1.1\nHost: " + H.encode() + b"\n\n",
    "NUL in header": R("GET", "/nul", "X: a\x00b\r\n"),
    "CTL in target": b"GET /a\x01b HTTP/1.1\r\nHost: " + H.encode() + b"\r\n\r\n",
    "space in target": b"GET /a b HTTP/1.1\r\nHost: " + H.encode() + b"\r\n\r\n",
    "leading CRLF": b"\r\n" + R("GET", "/after-crlf"),
    "absolute form": R("GET", f"http://{H}/abs?x=1"),
    "absolute form naming another project": R("GET", f"http://other.{DOMAIN}/abs"),
    "smuggle: Connection lists Content-Length": R("POST", "/s", "Connection: keep-alive, Content-Length\r\n"
                                                  "Content-Length: 35\r\n",
                                                  b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"),
    "smuggle: Connection lists Host": R("GET", "/h", "Connection: host\r\n"),
    "Upgrade with a body": R("GET", "/ws", "Connection: Upgrade\r\nUpgrade: websocket\r\nContent-Length: 5\r\n",
                             b"hello"),
    "asterisk form": R("OPTIONS", "*"),
    "raw path and query": R("GET", "/a%2Fb/../c?x=1&x=2&y=%00"),
    "body on GET": R("GET", "/g", "Content-Length: 2\r\n", b"hi"),
    "expect continue with body": R("PUT", "/e", "Expect: 100-continue\r\nContent-Length: 2\r\n", b"hi"),
    "unknown method": R("FOO", "/m"),
    "lower-case method": R("get", "/m"),
    "HTTP/1.0 keep-alive pipelined": R("GET", "/10a", "Connection: keep-alive\r\n", version="1.0") + R("GET", "/10b"),
    "HTTP/2.0 line": R("GET", "/h2", version="2.0"),
    "two Host lines": R("GET", "/hh", "Host: other.example\r\n"),
    "long header value": R("GET", "/long", "X-Long: " + "v" * 8000 + "\r\n"),
    "empty header value": R("GET", "/empty", "X-Empty:\r\n"),
    "body shorter than its length": R("POST", "/short", "Content-Length: 10\r\n", b"abc"),
}

# Refusals the gateway makes on purpose where a lenient server may accept.
STRICTER = {
    "two Host lines",  # RFC 9112 §3.2: 400
    "HTTP/2.0 line",  # not HTTP/1.x
    "smuggle: TE comma list",  # a coding other than chunked would reach the project still encoded
    "HTTP/1.0 keep-alive pipelined",  # HTTP/1.0 connections close after one response
    "unknown method",  # llhttp knows the registered methods only
    "absolute form naming another project",  # RFC 9112 3.2.2: the authority wins; it must equal Host
    "Upgrade with a body",  # llhttp would take the body for the upgraded protocol's bytes
}


def origin_form(target: str) -> str:
    """The gateway forwards absolute-form targets in origin-form (RFC 9112 3.2.2)."""
    for scheme in ("http://", "https://"):
        if target.lower().startswith(scheme):
            rest = target[len(scheme):]
            cut = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
            path = rest[cut:]
            return path if path.startswith("/") else "/" + path
    return target


@pytest.fixture
async def servers() -> tuple[int, int, list[Seen], list[Seen]]:  # type: ignore[misc]
    ref_log: list[Seen] = []
    gw_log: list[Seen] = []
    ref = AppUpstream(lambda: reference_app(ref_log))
    ref_ep = await ref.start()
    backend = TableBackend({"app": AppUpstream(lambda: reference_app(gw_log))}, running=("app",))
    async with running_gateway(backend) as gw:
        yield ref_ep.port, gw.port, ref_log, gw_log
    await ref.stop()


@pytest.mark.parametrize("name", sorted(CASES))
async def test_gateway_agrees_with_the_reference(name: str, servers: tuple[int, int, list[Seen], list[Seen]]) -> None:
    ref_port, gw_port, ref_log, gw_log = servers
    data = CASES[name]
    ref_raw = await exchange_raw(ref_port, data)
    gw_raw = await exchange_raw(gw_port, data)
    ref_seen = [(s.method, origin_form(s.target), s.body) for s in ref_log]
    gw_seen = [(s.method, s.target, s.body) for s in gw_log]
    # Never more, never different: what passed the gateway is a prefix of what the reference saw.
    assert gw_seen == ref_seen[: len(gw_seen)], (name, gw_seen, ref_seen)
    if name not in STRICTER:
        assert gw_seen == ref_seen, (name, gw_seen, ref_seen)
    gw_statuses, ref_statuses = statuses(gw_raw), statuses(ref_raw)
    if name not in STRICTER:
        # Same requests seen, same answers given (refusals may differ in detail: 400 vs 501).
        assert [c // 100 for c in gw_statuses] == [c // 100 for c in ref_statuses], (name, gw_raw[:400])
    else:
        assert gw_statuses and all(c >= 400 for c in gw_statuses[len(gw_seen):]), (name, gw_raw[:400])
    for s in gw_log:
        assert s.host == H  # the project sees the Host it was routed by


async def test_smuggled_requests_never_reach_the_project(servers: tuple[int, int, list[Seen], list[Seen]]) -> None:
    _, gw_port, _, gw_log = servers
    for name, data in CASES.items():
        if name.startswith("smuggle"):
            await exchange_raw(gw_port, data)
    assert all(s.target != "/smuggled" for s in gw_log)
