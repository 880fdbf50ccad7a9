"""Request heads the data path has parsed before are served without llhttp
(``Memo.requests``, the listener's memo). Each test repeats a request byte for byte and checks what the
upstream and the client see, and that llhttp stays in step for whatever comes next."""

from __future__ import annotations

import asyncio

from tests.support import STEP_TIMEOUT_S, RecordingUpstream, TableBackend, build_request, running_gateway

HOST = b"app.example.test"


def backend(up: RecordingUpstream) -> TableBackend:
    return TableBackend({"app": up}, running=("app",))


async def test_a_repeated_request_head_is_forwarded_as_the_first_one_was() -> None:
    up = RecordingUpstream()
    raw = build_request("GET", "/same?q=1", headers={"User-Agent": "repeat/1", "Accept": "*/*"})
    async with running_gateway(backend(up)) as gw, gw.client() as c:
        listener = gw.server.listener
        assert listener is not None
        for _ in range(4):
            await c.send(raw)
            r = await c.response()
            assert (r.status, r.body) == (200, b"GET /same?q=1")
        assert raw in listener.memo.requests
    first, *again = up.seen
    ids = {s.one("X-Request-Id") for s in up.seen}
    assert len(ids) == 4  # each request still gets its own id
    for s in again:
        assert (s.method, s.target) == (first.method, first.target)
        assert [(n, v) for n, v in s.headers if n.lower() != b"x-request-id"] == \
            [(n, v) for n, v in first.headers if n.lower() != b"x-request-id"]
    assert first.one("Host") == HOST
    assert first.one("User-Agent") == b"repeat/1"
    assert first.one("X-Forwarded-For") == b"127.0.0.1"


async def test_a_client_request_id_in_a_remembered_head_is_kept() -> None:
    up = RecordingUpstream()
    raw = build_request("GET", "/traced", headers={"X-Request-Id": "trace-7"})
    async with running_gateway(backend(up)) as gw, gw.client() as c:
        for _ in range(3):
            await c.send(raw)
            assert (await c.response()).status == 200
    assert [s.one("X-Request-Id") for s in up.seen] == [b"trace-7"] * 3


async def test_llhttp_stays_in_step_around_remembered_heads() -> None:
    """Remembered heads, a request with a body, a pipelined pair, then the remembered head again:
    every request reaches the upstream intact and in order."""
    up = RecordingUpstream()
    get = build_request("GET", "/g")
    post = build_request("POST", "/p", body=b"x" * 10)
    async with running_gateway(backend(up)) as gw, gw.client() as c:
        listener = gw.server.listener
        assert listener is not None
        for _ in range(2):
            await c.send(get)
            assert (await c.response()).body == b"GET /g"
        await c.send(post)
        assert (await c.response()).body == b"POST /p"
        assert post not in listener.memo.requests  # a body: never remembered
        for _ in range(2):
            await c.send(get + get)  # two in one read: llhttp parses them, never remembered
            assert [(await c.response()).body for _ in range(2)] == [b"GET /g"] * 2
        assert get + get not in listener.memo.requests
        await c.send(get[:10])  # a head in pieces
        await c.send(get[10:])
        assert (await c.response()).body == b"GET /g"
        await c.send(get)
        assert (await c.response()).body == b"GET /g"
    assert [(s.method, s.target, s.body) for s in up.seen] == (
        [(b"GET", b"/g", b"")] * 2 + [(b"POST", b"/p", b"x" * 10)] + [(b"GET", b"/g", b"")] * 6)


async def test_requests_that_need_more_than_their_head_are_never_remembered() -> None:
    up = RecordingUpstream()
    unusual = [
        build_request("HEAD", "/h"),
        build_request("GET", "/c", headers={"Connection": "close"}),
        build_request("GET", "/e", headers={"Expect": "100-continue"}),
        build_request("GET", "/x", headers={"X-Forwarded-For": "10.0.0.1"}),
        b"GET /old HTTP/1.0\r\nHost: app.example.test\r\n\r\n",
    ]
    async with running_gateway(backend(up)) as gw:
        listener = gw.server.listener
        assert listener is not None
        for raw in unusual:
            for _ in range(2):
                async with gw.client() as c:
                    await c.send(raw)
                    r = await c.response(head_only=raw.startswith(b"HEAD"))
                    assert r.status == 200
            assert raw not in listener.memo.requests
    # The client's X-Forwarded-For is handled the same both times (replaced: the peer is not trusted).
    xff = [s.one("X-Forwarded-For") for s in up.seen if s.target == b"/x"]
    assert xff == [b"127.0.0.1"] * 2


async def test_a_remembered_head_arriving_while_a_request_is_answered_goes_through_llhttp() -> None:
    """Pipelined behind a request in progress, a remembered head is queued by llhttp, in order."""
    up = RecordingUpstream()
    get = build_request("GET", "/g")
    async with running_gateway(backend(up)) as gw, gw.client() as c:
        listener = gw.server.listener
        assert listener is not None
        await c.send(get)
        await c.response()
        assert get in listener.memo.requests
        await c.send(build_request("GET", "/first") + get)
        assert [(await c.response()).body for _ in range(2)] == [b"GET /first", b"GET /g"]


async def test_route_header_listeners_keep_their_own_memo() -> None:
    """The same bytes route by Host on one gateway and by the route header on another."""
    up_a, up_b = RecordingUpstream(), RecordingUpstream()
    raw = build_request("GET", "/r", headers={"X-Project": "b"})
    async with running_gateway(TableBackend({"app": up_a, "b": up_b}, running=("app", "b"))) as plain, \
            running_gateway(TableBackend({"app": RecordingUpstream(), "b": up_b}, running=("app", "b")),
                            route_header="X-Project") as routed:
        for gw in (plain, routed, plain, routed):
            async with gw.client() as c:
                await c.send(raw)
                assert (await c.response()).status == 200
    assert [s.target for s in up_a.seen] == [b"/r", b"/r"]
    assert [s.target for s in up_b.seen] == [b"/r", b"/r"]


async def test_a_remembered_head_completing_a_partial_request_is_parsed_as_part_of_it() -> None:
    up = RecordingUpstream()
    get = build_request("GET", "/g")
    async with running_gateway(backend(up)) as gw, gw.client() as c:
        await c.send(get)
        assert (await c.response()).body == b"GET /g"
        await c.send(b"GET /prefix")
        listener = gw.server.listener
        assert listener is not None
        # Until llhttp is inside that request line (nothing signals it: yield to the loop until then).
        async with asyncio.timeout(STEP_TIMEOUT_S):
            while not any(conn.parsing is not None for conn in listener.connections):  # noqa: ASYNC110
                await asyncio.sleep(0)
        await c.send(get)  # "GET /prefixGET /g HTTP/1.1": malformed
        r = await c.response()
        assert r.status == 400
    assert [s.target for s in up.seen] == [b"/g"]
