"""HTTP/1.1 semantics of the data path, over real sockets: a raw client → the gateway → a recording
raw upstream. Each test checks what went over the wire on both sides."""

from __future__ import annotations

import asyncio
import json

import pytest

from gateway.headers import HOP_BY_HOP, request_head
from tests.support import (
    DOMAIN,
    RecordingUpstream,
    SeenRequest,
    TableBackend,
    build_request,
    running_gateway,
    simple_bytes,
)

HOST = f"app.{DOMAIN}"


def gw_backend(up: RecordingUpstream, *more: str) -> TableBackend:
    ups = {"app": up} | {name: RecordingUpstream() for name in more}
    return TableBackend(ups, running=("app",))


# --- routing ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host_header", "status", "words"),
    [
        ("bad host!", 400, "malformed"),
        ("", 400, "Host"),
        ("other.example.org", 404, "not under"),
        (f"a.b.{DOMAIN}", 404, "exactly one label"),
        (f"ghost.{DOMAIN}", 404, "no project named ghost"),
        ("10.0.0.1:8080", 404, "not under"),
        ("[::1]:8080", 404, "IP address"),
    ],
)
async def test_routing_errors_answer_without_waking(host_header: str, status: int, words: str) -> None:
    up = RecordingUpstream()
    backend = TableBackend({"app": up})  # asleep: any wake would show up as a scale call
    async with running_gateway(backend) as gw, gw.client() as c:
        r = await c.request("GET", "/", project=None, headers={"Host": host_header})
        assert r.status == status
        assert words in r.text
        # The connection stays usable after a routing error.
        r2 = await c.request("GET", "/", project=None, headers={"Host": "x"})
        assert r2.status == 404
    assert backend.scale_calls == 0
    assert up.seen == []


async def test_missing_host_is_400() -> None:
    backend = TableBackend({"app": RecordingUpstream()})
    async with running_gateway(backend) as gw, gw.client() as c:
        await c.send(b"GET / HTTP/1.1\r\n\r\n")
        r = await c.response()
        assert r.status == 400
        assert "missing Host" in r.text
    assert backend.scale_calls == 0


async def test_host_is_case_insensitive_with_port_and_trailing_dot() -> None:
    up = RecordingUpstream()
    async with running_gateway(gw_backend(up)) as gw, gw.client() as c:
        for host in (f"APP.{DOMAIN.upper()}", f"app.{DOMAIN}:8080", f"app.{DOMAIN}."):
            r = await c.request("GET", "/", project=None, headers={"Host": host})
            assert r.status == 200, host
    assert len(up.seen) == 3


async def test_unknown_names_come_from_the_negative_cache() -> None:
    backend = TableBackend({"app": RecordingUpstream()})
    async with running_gateway(backend) as gw, gw.client() as c:
        for _ in range(5):
            r = await c.request("GET", "/", project="ghost")
            assert r.status == 404
    assert backend.discovered["ghost"] == 1
    assert backend.scale_calls == 0


async def test_route_header_names_the_project() -> None:
    up = RecordingUpstream()
    async with running_gateway(gw_backend(up), route_header="x-wakegate-project") as gw, gw.client() as c:
        r = await c.request("GET", "/via-header", project=None,
                            headers={"Host": "gateway.internal:8080", "X-Wakegate-Project": "app"})
        assert r.status == 200
        for value, status in (("Bad!", 400), ("nope", 404)):
            r = await c.request("GET", "/", project=None, headers={"Host": "gw.internal", "X-Wakegate-Project": value})
            assert r.status == status
    assert [s.target for s in up.seen] == [b"/via-header"]
    assert up.seen[0].one("X-Wakegate-Project") == b"app"


# --- what the upstream sees ---------------------------------------------------------------------


async def test_method_raw_path_and_query_pass_unchanged() -> None:
    up = RecordingUpstream()
    targets = ["/a%2Fb/../c?x=1&x=2", "/%E2%82%AC/;p=1?q=%20&&=", "/?", "//double//slash", "*"]
    async with running_gateway(gw_backend(up)) as gw, gw.client() as c:
        for target in targets:
            method = "OPTIONS" if target == "*" else "PATCH"
            r = await c.request(method, target)
            assert r.status == 200
    assert [s.target.decode() for s in up.seen] == targets
    assert [s.method for s in up.seen] == [b"PATCH"] * 4 + [b"OPTIONS"]


async def test_request_hop_by_hop_fields_are_removed_and_forwarded_fields_set() -> None:
    up = RecordingUpstream()
    sent = {
        "Connection": "keep-alive, X-Hop-Custom",
        "Keep-Alive": "timeout=5",
        "X-Hop-Custom": "secret",
        "TE": "trailers",
        "Trailer": "X-T",
        "Proxy-Authorization": "Basic Zm9vOmJhcg==",
        "Proxy-Connection": "keep-alive",
        "X-Forwarded-For": "203.0.113.9",
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "evil.example",
        "Via": "1.0 edge",
        "X-End-To-End": "kept",
        "X-Request-Id": "req-123",
    }
    async with running_gateway(gw_backend(up)) as gw, gw.client() as c:
        r = await c.request("GET", "/h", headers=sent)
        assert r.status == 200
    seen = up.seen[0]
    names = {n.lower() for n, _ in seen.headers}
    assert not names & {b"keep-alive", b"x-hop-custom", b"te", b"trailer", b"proxy-authorization",
                        b"proxy-connection", b"connection"}
    assert seen.one("X-End-To-End") == b"kept"
    assert seen.one("X-Forwarded-For") == b"127.0.0.1"  # replaced: the peer is not trusted by default
    assert seen.one("X-Forwarded-Proto") == b"http"
    assert seen.one("X-Forwarded-Host") == HOST.encode()
    assert seen.all("Via") == [b"1.0 edge", b"1.1 wakegate"]
    assert seen.one("Host") == HOST.encode()
    assert seen.one("X-Request-Id") == b"req-123"


async def test_trusted_ingress_keeps_forwarded_proto_and_host() -> None:
    up = RecordingUpstream()
    async with running_gateway(gw_backend(up), trust_forwarded=True) as gw, gw.client() as c:
        await c.request("GET", "/", headers={"X-Forwarded-Proto": "https", "X-Forwarded-Host": "app.public.example"})
        await c.request("GET", "/")
    assert up.seen[0].one("X-Forwarded-Proto") == b"https"
    assert up.seen[0].one("X-Forwarded-Host") == b"app.public.example"
    assert up.seen[1].one("X-Forwarded-Proto") == b"http"
    assert up.seen[1].one("X-Forwarded-Host") == HOST.encode()


async def test_a_request_id_is_generated_when_missing_and_unique() -> None:
    up = RecordingUpstream()
    async with running_gateway(gw_backend(up)) as gw, gw.client() as c:
        await c.request("GET", "/1")
        await c.request("GET", "/2")
    ids = [s.one("X-Request-Id") for s in up.seen]
    assert all(ids) and ids[0] != ids[1]


@pytest.mark.parametrize(
    "headers",
    [
        [],
        [("Connection", "close")],
        [("Connection", "X-A, X-B"), ("X-A", "1"), ("X-B", "2"), ("X-C", "3")],
        [("X-Forwarded-For", "1.1.1.1"), ("x-forwarded-for", "2.2.2.2"), ("X-Forwarded-Host", "h")],
        [("Cookie", "a=1"), ("Cookie", "b=2"), ("User-Agent", "t/1"), ("Accept", "*/*")],
        [("Transfer-Encoding", "chunked")],
        [("upgrade", "h2c"), ("HOST-ish", "x")],
    ],
)
async def test_fast_path_head_equals_the_reference_rules(headers: list[tuple[str, str]]) -> None:
    """The forwarder serialises fields while parsing; the result must equal headers.request_head."""
    up = RecordingUpstream()
    fields = [("Host", HOST), ("X-Request-Id", "fixed"), *headers]
    raw = "GET /p?q HTTP/1.1\r\n" + "".join(f"{n}: {v}\r\n" for n, v in fields) + "\r\n"
    chunked = any(n.lower() == "transfer-encoding" for n, _ in headers)
    async with running_gateway(gw_backend(up)) as gw, gw.client() as c:
        await c.send(raw.encode() + (b"0\r\n\r\n" if chunked else b""))
        r = await c.response()
        assert r.status == 200
    expected = request_head(b"GET", b"/p?q", [(n.encode(), v.encode()) for n, v in fields], client_ip=b"127.0.0.1",
                            chunked=chunked)
    exp_fields = [tuple(line.split(b": ", 1)) for line in expected.split(b"\r\n")[1:-2]]
    assert up.seen[0].headers == exp_fields


async def test_response_hop_by_hop_fields_are_removed_and_via_added() -> None:
    async def responder(seen: SeenRequest, w: asyncio.StreamWriter) -> None:
        w.write(simple_bytes(200, b"body", {
            "Connection": "keep-alive, X-Internal", "X-Internal": "1", "Keep-Alive": "timeout=3",
            "Proxy-Authenticate": "Basic", "Trailer": "X-T", "Upgrade": "h2", "Set-Cookie": "a=1",
            "set-cookie": "b=2", "Via": "1.1 app",
        }))

    up = RecordingUpstream(responder)
    async with running_gateway(gw_backend(up)) as gw, gw.client() as c:
        r = await c.request("GET", "/")
    names = {n.decode().lower() for n, _ in r.headers}
    assert not names & ({h.decode() for h in HOP_BY_HOP} | {"x-internal"})
    assert r.all("Set-Cookie") == ["a=1", "b=2"]
    assert r.all("Via") == ["1.1 app", "1.1 wakegate"]
    assert r.body == b"body"


# --- framing ------------------------------------------------------------------------------------


async def test_chunked_request_is_rechunked_and_trailers_dropped() -> None:
    up = RecordingUpstream()
    async with running_gateway(gw_backend(up)) as gw, gw.client() as c:
        await c.send(build_request("POST", "/up", headers={"Transfer-Encoding": "chunked"}))
        await c.send(b"5;ext=1\r\nhello\r\n")
        await c.send(b"6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n")
        r = await c.response()
        assert r.status == 200
    seen = up.seen[0]
    assert seen.body == b"hello world"
    assert seen.chunked
    assert seen.one("Transfer-Encoding") == b"chunked"
    assert seen.one("Content-Length") is None
    assert seen.one("X-Trailer") is None


async def test_content_length_body_passes_through() -> None:
    up = RecordingUpstream()
    body = bytes(range(256)) * 300
    async with running_gateway(gw_backend(up)) as gw, gw.client() as c:
        r = await c.request("PUT", "/blob", body=body)
        assert r.status == 200
    assert up.seen[0].body == body
    assert up.seen[0].one("Content-Length") == str(len(body)).encode()


async def test_chunked_and_close_delimited_responses_reach_http11_clients_chunked() -> None:
    async def responder(seen: SeenRequest, w: asyncio.StreamWriter) -> None:
        if seen.target == b"/chunked":
            w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\nX-T: 1\r\n\r\n")
        else:
            w.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil-close body")
            await w.drain()
            w.close()

    up = RecordingUpstream(responder)
    async with running_gateway(gw_backend(up)) as gw, gw.client() as c:
        r = await c.request("GET", "/chunked")
        assert (r.status, r.body, r.chunked, r.header("X-T")) == (200, b"abcde", True, None)
        r = await c.request("GET", "/close")
        assert (r.status, r.body, r.chunked) == (200, b"until-close body", True)
        assert r.header("Connection") is None  # the client connection stays open
        r = await c.request("GET", "/chunked")
        assert r.body == b"abcde"


async def test_http10_client_gets_close_delimited_body_and_close() -> None:
    async def responder(seen: SeenRequest, w: asyncio.StreamWriter) -> None:
        w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nold!\r\n0\r\n\r\n")

    up = RecordingUpstream(responder)
    async with running_gateway(gw_backend(up)) as gw, gw.client() as c:
        await c.send(f"GET /old HTTP/1.0\r\nHost: {HOST}\r\n\r\n".encode())
        raw = await c.read_until_closed()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"Transfer-Encoding" not in head
    assert b"Connection: close" in head
    assert body == b"old!"


async def test_head_response_has_no_body_and_connection_is_reused() -> None:
    async def responder(seen: SeenRequest, w: asyncio.StreamWriter) -> None:
        if seen.method == b"HEAD":
            w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 12345\r\n\r\n")
        else:
            w.write(simple_bytes(200, b"after"))

    up = RecordingUpstream(responder)
    async with running_gateway(gw_backend(up)) as gw, gw.client() as c:
        r = await c.request("HEAD", "/")
        assert r.status == 200
        assert r.header("Content-Length") == "12345"
        r = await c.request("GET", "/next")
        assert r.body == b"after"
    assert up.accepts == 1  # the upstream connection survived the HEAD


@pytest.mark.parametrize("status", [204, 304])
async def test_no_content_statuses_carry_no_body(status: int) -> None:
    async def responder(seen: SeenRequest, w: asyncio.StreamWriter) -> None:
        w.write(f"HTTP/1.1 {status} X\r\nETag: \"e\"\r\n\r\n".encode())

    up = RecordingUpstream(responder)
    async with running_gateway(gw_backend(up)) as gw, gw.client() as c:
        r = await c.request("GET", "/")
        assert r.status == status
        assert r.body == b""
        assert r.header("Transfer-Encoding") is None
        assert r.header("ETag") == '"e"'
        r = await c.request("GET", "/again")
        assert r.status == status


async def test_pipelined_requests_are_answered_in_order() -> None:
    release = asyncio.Event()

    async def responder(seen: SeenRequest, w: asyncio.StreamWriter) -> None:
        if seen.target == b"/slow":
            await release.wait()
        w.write(simple_bytes(200, seen.target))

    up = RecordingUpstream(responder)
    async with running_gateway(gw_backend(up)) as gw, gw.client() as c:
        await c.send(build_request("GET", "/slow") + build_request("POST", "/two", body=b"xy")
                     + build_request("GET", "/three"))
        await up.wait_seen(1)
        release.set()
        bodies = [(await c.response()).body for _ in range(3)]
    assert bodies == [b"/slow", b"/two", b"/three"]
    assert up.seen[1].body == b"xy"


async def test_expect_100_continue_is_relayed() -> None:
    async def responder(seen: SeenRequest, w: asyncio.StreamWriter) -> None:
        w.write(simple_bytes(200, b"got " + seen.body))

    # The recording upstream reads bodies without sending 100; an aiohttp upstream answers 100 itself.
    from aiohttp import web

    from tests.support import AppUpstream

    async def echo(request: web.Request) -> web.Response:
        return web.Response(body=b"got " + await request.read())

    def app() -> web.Application:
        a = web.Application()
        a.router.add_post("/e", echo)
        return a

    backend = TableBackend({"app": AppUpstream(app)}, running=("app",))
    async with running_gateway(backend) as gw, gw.client() as c:
        await c.send(build_request("POST", "/e", headers={"Expect": "100-continue", "Content-Length": "5"}))
        interim = await c.reader.readuntil(b"\r\n\r\n")  # type: ignore[union-attr]
        assert interim.startswith(b"HTTP/1.1 100 ")
        await c.send(b"hello")
        r = await c.response()
        assert (r.status, r.body) == (200, b"got hello")
    del responder


# --- invalid input ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"POST / HTTP/1.1\r\nHost: H\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
         400),
        (b"POST / HTTP/1.1\r\nHost: H\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
         400),
        (b"POST / HTTP/1.1\r\nHost: H\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", 400),
        (b"POST / HTTP/1.1\r\nHost: H\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc", 400),
        (b"POST / HTTP/1.1\r\nHost: H\r\nContent-Length: +3\r\n\r\nabc", 400),
        (b"POST / HTTP/1.1\r\nHost: H\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: H\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", 501),
        (b"POST / HTTP/1.1\r\nHost: H\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: H\r\nX-A: b\r\n c\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: H\r\nX-A : b\r\n\r\n", 400),
        (b"GET / HTTP/1.1\nHost: H\n\n", 400),
        (b"GET / HTTP/1.1\r\nHost: H\r\nX: a\x00b\r\n\r\n", 400),
        (b"GET / HTTP/2.0\r\nHost: H\r\n\r\n", 505),
        (b"CONNECT app:443 HTTP/1.1\r\nHost: H\r\n\r\n", 405),
        (b"get / HTTP/1.1\r\nHost: H\r\n\r\n", 400),
    ],
)
async def test_invalid_framing_is_rejected_and_never_forwarded(raw: bytes, status: int) -> None:
    up = RecordingUpstream()
    async with running_gateway(gw_backend(up)) as gw, gw.client() as c:
        await c.send(raw.replace(b"Host: H", f"Host: {HOST}".encode()))
        r = await c.response()
        assert r.status == status, r.text
        assert r.header("Connection") == "close"
        await c.read_until_closed()
    assert up.seen == []


async def test_huge_headers_get_431_and_long_targets_414() -> None:
    up = RecordingUpstream()
    async with running_gateway(gw_backend(up)) as gw:
        async with gw.client() as c:
            await c.send(build_request("GET", "/", headers={"X-Big": "a" * 70_000}))
            r = await c.response()
            assert r.status == 431
        async with gw.client() as c:
            # Sent slowly: the limit holds while the head is still incomplete.
            await c.send(f"GET / HTTP/1.1\r\nHost: {HOST}\r\nX-Big: ".encode())
            for _ in range(20):
                await c.send(b"b" * 5000)
            r = await c.response()
            assert r.status == 431
        async with gw.client() as c:
            await c.send(build_request("GET", "/", headers={f"X-{i}": "v" for i in range(200)}))
            r = await c.response()
            assert r.status == 431
        async with gw.client() as c:
            await c.send(build_request("GET", "/" + "p" * 9000))
            r = await c.response()
            assert r.status == 414
    assert up.seen == []


async def test_local_answer_to_a_request_with_a_body_keeps_the_connection_usable() -> None:
    up = RecordingUpstream()
    async with running_gateway(gw_backend(up)) as gw, gw.client() as c:
        r = await c.request("POST", "/", project="ghost", body=b"x" * 100_000)
        assert r.status == 404
        r = await c.request("GET", "/fine")
        assert r.status == 200
    assert [s.target for s in up.seen] == [b"/fine"]


async def test_status_path_answers_without_waking() -> None:
    up = RecordingUpstream()
    backend = TableBackend({"app": up})
    async with running_gateway(backend) as gw, gw.client() as c:
        r = await c.request("GET", "/__wakegate/status?t=1")
        assert r.status == 200
        assert json.loads(r.body) == {"project": "app", "state": "asleep", "ready": False}
    assert backend.scale_calls == 0


async def test_a_client_closing_its_side_abandons_its_request() -> None:
    """Like nginx, a FIN from the client means it is gone (HTTP/1.1 clients do not half-close)."""
    release = asyncio.Event()

    async def slow(seen: SeenRequest, w: asyncio.StreamWriter) -> None:
        await release.wait()
        w.write(simple_bytes(200, b"late"))

    up = RecordingUpstream(slow)
    async with running_gateway(gw_backend(up)) as gw, gw.client() as c:
        await c.send(build_request("GET", "/1"))
        await up.wait_seen(1)
        assert c.writer is not None
        c.writer.write_eof()
        assert await c.read_until_closed() == b""
        release.set()
        assert gw.server.in_flight == 0


async def test_http10_pipelining_is_cut_after_the_first_answer() -> None:
    """The version is read per request: a pipelined HTTP/1.1 request after an HTTP/1.0 one must
    not make the first look like HTTP/1.1 (found by the differential test)."""
    up = RecordingUpstream()
    async with running_gateway(gw_backend(up)) as gw, gw.client() as c:
        await c.send(f"GET /a HTTP/1.0\r\nHost: {HOST}\r\nConnection: keep-alive\r\n\r\n".encode()
                     + build_request("GET", "/b"))
        raw = await c.read_until_closed()
    assert raw.count(b"HTTP/1.1 200") == 1
    assert b"Connection: close" in raw
    assert [s.target for s in up.seen] == [b"/a"]


async def test_interim_responses_and_split_heads_are_relayed() -> None:
    async def responder(seen: SeenRequest, w: asyncio.StreamWriter) -> None:
        w.write(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n")
        await w.drain()
        for piece in (b"HTTP/1.1 200 OK\r\nContent-", b"Length: 5\r\nX-A: 1\r", b"\n\r\nhel", b"lo"):
            w.write(piece)
            await w.drain()

    up = RecordingUpstream(responder)
    async with running_gateway(gw_backend(up)) as gw, gw.client() as c:
        r = await c.request("GET", "/")
        assert (r.status, r.body, r.interim, r.header("X-A")) == (200, b"hello", [103], "1")
        r = await c.request("GET", "/again")
        assert r.body == b"hello"
    assert up.accepts == 1


async def test_bytes_after_a_response_are_never_relayed() -> None:
    async def responder(seen: SeenRequest, w: asyncio.StreamWriter) -> None:
        if seen.target == b"/length":
            w.write(simple_bytes(200, b"ok") + b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled")
        else:
            w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
                    b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled")

    up = RecordingUpstream(responder)
    async with running_gateway(gw_backend(up)) as gw:
        async with gw.client() as c:
            r = await c.request("GET", "/length")
            assert r.body == b"ok"
            r = await c.request("GET", "/next")  # a new upstream connection: the old one is dropped
            assert r.status == 200 and b"smuggled" not in r.body
        async with gw.client() as c:
            await c.send(build_request("GET", "/chunked"))
            raw = await c.read_until_closed()
            assert b"smuggled" not in raw
    assert up.accepts >= 2
