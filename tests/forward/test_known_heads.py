"""Response heads the data path has seen before are relayed without llhttp (``Memo.responses``, the
listener's memo: gateway.forward.memo). Each test sends the same head again on a reused upstream
connection and checks that what the client gets, and what the next response on that connection
gets, is what the general path produces."""

from __future__ import annotations

import asyncio

from tests.support import (
    Gateway,
    RawClient,
    RecordingUpstream,
    SeenRequest,
    TableBackend,
    build_request,
    running_gateway,
    simple_bytes,
)

BODY = b"0123456789" * 10
HEAD = b"HTTP/1.1 200 OK\r\nX-Known-Test: %s\r\nContent-Length: 100\r\n\r\n"


def backend(up: RecordingUpstream) -> TableBackend:
    return TableBackend({"app": up}, running=("app",))


def known(gw: Gateway) -> dict[bytes, tuple[bytes, int, int, bool]]:
    """The response heads the gateway's memo knows (each gateway starts with none)."""
    assert gw.server.listener is not None
    return gw.server.listener.memo.responses


def head(tag: bytes) -> bytes:
    return HEAD % tag


async def test_a_repeated_head_is_relayed_as_the_first_one_was() -> None:
    tag = b"repeat"

    async def reply(seen: SeenRequest, w: asyncio.StreamWriter) -> None:
        w.write(head(tag) + BODY)

    up = RecordingUpstream(reply)
    async with running_gateway(backend(up)) as gw, gw.client() as c:
        first = await c.request("GET", "/a")
        assert head(tag) in known(gw)
        again = [await c.request("GET", f"/b{i}") for i in range(3)]
    for r in again:
        assert (r.status, r.headers, r.body) == (first.status, first.headers, first.body)
    assert first.body == BODY
    assert first.header("Via") == "1.1 wakegate"
    assert first.header("X-Known-Test") == "repeat"
    assert up.accepts == 1  # one upstream connection carried all four


async def test_a_known_head_with_its_body_in_pieces_keeps_the_connection_in_step() -> None:
    """The body of a known head arrives over several reads (llhttp sees none of it); the next
    response on the same upstream connection has a new head, which llhttp must parse from a clean
    message start."""
    tag = b"pieces"
    client_got_part = asyncio.Event()

    async def reply(seen: SeenRequest, w: asyncio.StreamWriter) -> None:
        if seen.target == b"/split":
            w.write(head(tag) + BODY[:30])
            await w.drain()
            await asyncio.wait_for(client_got_part.wait(), 10)
            w.write(BODY[30:])
        elif seen.target == b"/other":
            w.write(simple_bytes(404, b"a different head", {"X-Other": "1"}))
        else:
            w.write(head(tag) + BODY)

    up = RecordingUpstream(reply)
    async with running_gateway(backend(up)) as gw, gw.client() as c:
        assert (await c.request("GET", "/learn")).body == BODY
        assert head(tag) in known(gw)
        await c.send(build_request("GET", "/split"))
        assert c.reader is not None
        received = b""
        while not received.endswith(BODY[:30]):
            received += await asyncio.wait_for(c.reader.read(65536), 10)
        client_got_part.set()
        rest = b""
        while len(rest) < 70:
            rest += await asyncio.wait_for(c.reader.read(65536), 10)
        assert rest == BODY[30:]
        assert received.startswith(b"HTTP/1.1 200 OK\r\n")
        assert b"Content-Length: 100\r\n" in received
        other = await c.request("GET", "/other")
        assert (other.status, other.body, other.header("X-Other")) == (404, b"a different head", "1")
        last = await c.request("GET", "/last")
        assert (last.status, last.body) == (200, BODY)
    assert up.accepts == 1


async def test_a_known_head_with_bytes_after_its_body_drops_the_upstream_connection() -> None:
    tag = b"extra"

    async def reply(seen: SeenRequest, w: asyncio.StreamWriter) -> None:
        if seen.target == b"/extra":
            w.write(head(tag) + BODY + b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        else:
            w.write(head(tag) + BODY)

    up = RecordingUpstream(reply)
    async with running_gateway(backend(up)) as gw, gw.client() as c:
        await c.request("GET", "/learn")
        r = await c.request("GET", "/extra")
        assert (r.status, r.body) == (200, BODY)
        after = await c.request("GET", "/after")
        assert (after.status, after.body) == (200, BODY)
    assert up.accepts == 2  # the connection that sent too much was not reused


async def test_a_known_head_answering_head_and_http10_requests_takes_the_general_path() -> None:
    tag = b"head-and-1.0"

    async def reply(seen: SeenRequest, w: asyncio.StreamWriter) -> None:
        w.write(head(tag) if seen.method == b"HEAD" else head(tag) + BODY)

    up = RecordingUpstream(reply)
    async with running_gateway(backend(up)) as gw:
        async with gw.client() as c:
            await c.request("GET", "/learn")
            assert head(tag) in known(gw)
            r = await c.request("HEAD", "/h")
            assert (r.status, r.body, r.header("Content-Length")) == (200, b"", "100")
            assert (await c.request("GET", "/again")).body == BODY
        async with gw.client() as old:
            await old.send(b"GET /old HTTP/1.0\r\nHost: app.example.test\r\n\r\n")
            raw = await old.read_until_closed()
        assert raw.startswith(b"HTTP/1.1 200 OK\r\n")
        assert b"Connection: close\r\n" in raw
        assert raw.endswith(b"\r\n\r\n" + BODY)


async def test_a_cold_start_answer_with_a_known_head_carries_the_cold_start_field() -> None:
    tag = b"cold"

    async def reply(seen: SeenRequest, w: asyncio.StreamWriter) -> None:
        w.write(head(tag) + BODY)

    up = RecordingUpstream(reply)
    async with running_gateway(backend(up)) as gw, gw.client() as c:
        assert head(tag) not in known(gw)
        await c.request("GET", "/learn")
        assert head(tag) in known(gw)
        await gw.backend.scale_down("app")
        r = await c.request("GET", "/cold")  # held, woken, then forwarded with the extra field
        assert (r.status, r.body) == (200, BODY)
        assert r.header("X-Wakegate-Cold-Start") is not None
        warm = await c.request("GET", "/warm")
        assert warm.header("X-Wakegate-Cold-Start") is None
        assert warm.body == BODY


async def test_pipelined_requests_answered_in_order_around_deferred_writes() -> None:
    """Warm-path writes wait for the end of the round of events; responses of one connection
    still go out in request order, whether proxied (known head) or answered by the gateway."""
    tag = b"pipelined"

    async def reply(seen: SeenRequest, w: asyncio.StreamWriter) -> None:
        w.write(head(tag) + seen.target.ljust(100, b"."))

    up = RecordingUpstream(reply)
    async with running_gateway(backend(up)) as gw, gw.client() as c:
        await c.request("GET", "/learn")
        assert head(tag) in known(gw)
        batch = b""
        for i in range(6):
            batch += build_request("GET", f"/p{i}")
            batch += build_request("GET", "/", project=None, headers={"Host": "bad host!"})  # answered at once: 400
        await c.send(batch)
        got = [await c.response() for _ in range(12)]
        for i in range(6):
            assert (got[2 * i].status, got[2 * i].body) == (200, f"/p{i}".encode().ljust(100, b"."))
            assert got[2 * i + 1].status == 400
        # One request at a time again: each answer deferred, then the next request arrives.
        for i in range(5):
            r = await c.request("GET", f"/s{i}")
            assert r.body == f"/s{i}".encode().ljust(100, b".")


async def test_a_deferred_response_is_written_before_a_draining_gateway_closes_the_connection() -> None:
    tag = b"drain"

    async def reply(seen: SeenRequest, w: asyncio.StreamWriter) -> None:
        w.write(head(tag) + BODY)

    up = RecordingUpstream(reply)
    async with running_gateway(backend(up)) as gw, gw.client() as c:
        await c.request("GET", "/learn")
        await c.send(build_request("GET", "/last"))
        await up.wait_seen(2)
        await gw.server.stop_accepting()
        r = await c.response()
        assert (r.status, r.body) == (200, BODY)
        assert await gw.server.drain(5.0)


async def test_a_request_arriving_with_a_deferred_response_is_answered_after_it() -> None:
    """The upstream's answer and the client's next request become readable in the same round of
    events: the answer is deferred, the request is answered by the gateway at once; the client
    must still get them in order."""
    tag = b"same-round"
    clients: list[RawClient] = []

    async def reply(seen: SeenRequest, w: asyncio.StreamWriter) -> None:
        w.write(head(tag) + BODY)
        if seen.target.startswith(b"/a"):
            writer = clients[0].writer
            assert writer is not None
            writer.write(build_request("GET", "/", project=None, headers={"Host": "bad host!"}))

    up = RecordingUpstream(reply)
    async with running_gateway(backend(up)) as gw, gw.client() as c:
        clients.append(c)
        await c.request("GET", "/learn")
        for i in range(10):
            await c.send(build_request("GET", f"/a{i}"))
            first, second = await c.response(), await c.response()
            assert (first.status, first.body) == (200, BODY)
            assert second.status == 400
