"""Streams, tunnels, failures and the lifecycle side of the data path, over real sockets."""

from __future__ import annotations

import asyncio
import time

import aiohttp
from aiohttp import web

from gateway.backends.base import Endpoint, ProjectSettings
from gateway.lifecycle import State
from tests.support import (
    DOMAIN,
    STEP_TIMEOUT_S,
    AppUpstream,
    RawUpstream,
    RecordingUpstream,
    SeenRequest,
    TableBackend,
    Upstream,
    Watch,
    build_request,
    release_herd,
    running_gateway,
    simple_bytes,
)

HOST = f"app.{DOMAIN}"


# --- SSE ----------------------------------------------------------------------------------------


async def test_sse_events_are_flushed_as_they_arrive() -> None:
    """Lock-step: the upstream sends event n+1 only after the client received event n through the
    gateway, so any buffering would stall the test. Arrival gaps track the send gaps."""
    received: list[asyncio.Event] = [asyncio.Event() for _ in range(5)]
    sent_at: list[float] = []
    gaps_s = [0.05, 0.3, 0.1, 0.4]

    async def sse(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        for i in range(5):
            if i:
                await asyncio.wait_for(received[i - 1].wait(), STEP_TIMEOUT_S)
                await asyncio.sleep(gaps_s[i - 1])
            sent_at.append(time.monotonic())
            await resp.write(f"id: {i}\ndata: event {i}\n\n".encode())
        return resp

    def app() -> web.Application:
        a = web.Application()
        a.router.add_get("/events", sse)
        return a

    backend = TableBackend({"app": AppUpstream(app)}, running=("app",))
    arrived: list[float] = []
    async with running_gateway(backend) as gw, gw.client() as c:
        await c.send(build_request("GET", "/events", headers={"Accept": "text/event-stream"}))
        assert c.reader is not None
        head = await asyncio.wait_for(c.reader.readuntil(b"\r\n\r\n"), STEP_TIMEOUT_S)
        assert b"Transfer-Encoding: chunked" in head
        buf = b""
        for i in range(5):
            while f"data: event {i}\n\n".encode() not in buf:
                buf += await asyncio.wait_for(c.reader.read(4096), STEP_TIMEOUT_S)
            arrived.append(time.monotonic())
            received[i].set()
    for i, gap in enumerate(gaps_s):
        arrival_gap = arrived[i + 1] - arrived[i]
        send_gap = sent_at[i + 1] - sent_at[i]
        assert send_gap >= gap
        assert 0.5 * send_gap <= arrival_gap <= send_gap + 1.0, (i, arrival_gap, send_gap)


# --- WebSocket ----------------------------------------------------------------------------------


def ws_app(closes: list[int | None]) -> web.Application:
    async def ws(request: web.Request) -> web.WebSocketResponse:
        sock = web.WebSocketResponse(protocols=("chat", "superchat"))
        await sock.prepare(request)
        async for msg in sock:
            if msg.type == aiohttp.WSMsgType.TEXT:
                if msg.data == "close-me":
                    await sock.close(code=4001, message=b"bye from upstream")
                    return sock
                await sock.send_str("echo:" + msg.data)
            elif msg.type == aiohttp.WSMsgType.BINARY:
                await sock.send_bytes(msg.data[::-1])
        closes.append(sock.close_code)
        return sock

    a = web.Application()
    a.router.add_get("/ws", ws)
    return a


async def test_websocket_echo_subprotocol_and_close_codes() -> None:
    closes: list[int | None] = []
    backend = TableBackend({"app": AppUpstream(lambda: ws_app(closes))}, running=("app",))
    watch = Watch()
    async with running_gateway(backend, observer=watch) as gw, aiohttp.ClientSession() as session:
        url = f"http://127.0.0.1:{gw.port}/ws"
        # Upstream closes with 4001: the client sees that code.
        async with session.ws_connect(url, headers={"Host": HOST}, protocols=("superchat", "other")) as ws:
            assert ws.protocol == "superchat"
            await ws.send_str("hi")
            assert (await ws.receive(STEP_TIMEOUT_S)).data == "echo:hi"
            await ws.send_bytes(b"\x00\x01\x02" * 50_000)
            assert (await ws.receive(STEP_TIMEOUT_S)).data == (b"\x00\x01\x02" * 50_000)[::-1]
            assert gw.lifecycle.projects["app"].in_flight == 1  # an open tunnel counts
            await ws.send_str("close-me")
            msg = await ws.receive(STEP_TIMEOUT_S)
            assert msg.type == aiohttp.WSMsgType.CLOSE
            assert msg.data == 4001
        # The client closes with 4002: the upstream sees that code.
        async with session.ws_connect(url, headers={"Host": HOST}, protocols=("chat",)) as ws:
            assert ws.protocol == "chat"
            await ws.close(code=4002)
        await watch.until(lambda: len(watch.finished) == 2)  # both tunnels ended
        assert [status for _, status in watch.finished] == [101, 101]
        async with asyncio.timeout(STEP_TIMEOUT_S):
            await asyncio.gather(*[t for t in asyncio.all_tasks() if "ws" in repr(t.get_coro())])
        assert closes == [4002]
        assert gw.lifecycle.projects["app"].in_flight == 0


async def test_upgrade_refused_by_upstream_is_a_normal_response() -> None:
    async def responder(seen: SeenRequest, w: asyncio.StreamWriter) -> None:
        w.write(simple_bytes(426, b"no websockets here"))

    up = RecordingUpstream(responder)
    async with running_gateway(TableBackend({"app": up}, running=("app",))) as gw, gw.client() as c:
        await c.send(build_request("GET", "/ws", headers={"Connection": "Upgrade", "Upgrade": "websocket",
                                                          "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
                                                          "Sec-WebSocket-Version": "13"}))
        r = await c.response()
        assert (r.status, r.body) == (426, b"no websockets here")
        assert r.header("Connection") == "close"
    assert up.seen[0].one("Upgrade") == b"websocket"
    assert up.seen[0].one("Connection") == b"upgrade"


# --- upstream failures --------------------------------------------------------------------------


class DeadUpstream(Upstream):
    """'Starts' a project whose address refuses connections."""

    def __init__(self) -> None:
        self.starts = 0

    async def start(self) -> Endpoint:
        self.starts += 1
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        server.close()
        await server.wait_closed()
        self.endpoint = Endpoint("127.0.0.1", port)
        return self.endpoint

    async def stop(self) -> None:
        pass


async def test_upstream_refused_is_502_with_a_clear_body() -> None:
    dead = DeadUpstream()
    obs = Watch()
    async with running_gateway(TableBackend({"app": dead}, running=("app",)), observer=obs) as gw, gw.client() as c:
        r = await c.request("GET", "/")
        assert r.status == 502
        assert "project app" in r.text and "refused the connection" in r.text
    assert "refused" in obs.errors
    assert dead.starts > 1  # each refusal dropped the endpoint and woke the project again


async def test_upstream_reset_before_response_is_502() -> None:
    async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.transport.abort()

    up = RawUpstream(reset)
    obs = Watch()
    async with running_gateway(TableBackend({"app": up}, running=("app",)), observer=obs) as gw, gw.client() as c:
        r = await c.request("POST", "/not-replayable", body=b"payload")
        assert r.status == 502
        assert "closed the connection before responding" in r.text
        assert up.accepts == 1  # a request with a body is never sent twice
        r = await c.request("GET", "/replayable")
        assert r.status == 502
    assert up.accepts > 2  # idempotent and bodiless: retried on fresh connections
    assert "reset" in obs.errors


async def test_upstream_protocol_error_is_502() -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"SMTP ready\r\n\r\n")
        await writer.drain()
        await reader.read()

    obs = Watch()
    backend = TableBackend({"app": RawUpstream(garbage)}, running=("app",))
    async with running_gateway(backend, observer=obs) as gw, gw.client() as c:
        r = await c.request("GET", "/")
        assert r.status == 502
        assert "invalid response" in r.text
    assert obs.errors == ["protocol"]


async def test_upstream_crash_mid_body_aborts_the_client_connection() -> None:
    async def crash(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        if b"/chunked" in head:
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        else:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 1000)
        await writer.drain()
        writer.transport.abort()

    obs = Watch()
    async with running_gateway(TableBackend({"app": RawUpstream(crash)}, running=("app",)), observer=obs) as gw:
        for path in ("/length", "/chunked"):
            async with gw.client() as c:
                r = await c.request("GET", path)
                # The head arrived; the body must not look complete.
                assert r.status == 200
                assert not r.complete, path
    assert obs.errors == ["mid_body", "mid_body"]


# --- pooling and isolation ----------------------------------------------------------------------


async def test_upstream_keep_alive_connections_are_reused() -> None:
    up = RecordingUpstream()
    async with running_gateway(TableBackend({"app": up}, running=("app",))) as gw:
        for _ in range(3):
            async with gw.client() as c:
                for i in range(10):
                    r = await c.request("GET", f"/{i}")
                    assert r.status == 200
        assert gw.server.listener is not None
        assert gw.server.listener.pool.idle_count() == 1
    assert len(up.seen) == 30
    assert up.accepts == 1


async def test_a_slow_project_does_not_block_another() -> None:
    release = asyncio.Event()

    async def slow(seen: SeenRequest, w: asyncio.StreamWriter) -> None:
        await release.wait()
        w.write(simple_bytes(200, b"slow done"))

    slow_up, fast_up = RecordingUpstream(slow), RecordingUpstream()
    backend = TableBackend({"slow": slow_up, "fast": fast_up}, running=("slow", "fast"))
    async with running_gateway(backend) as gw, gw.client() as a, gw.client() as b:
        await a.send(build_request("GET", "/", project="slow"))
        await slow_up.wait_seen(1)
        for _ in range(5):
            r = await b.request("GET", "/", project="fast")
            assert r.status == 200
        release.set()
        r = await a.response()
        assert r.body == b"slow done"


# --- waking and holding -------------------------------------------------------------------------


async def test_a_cold_request_is_held_and_gets_the_cold_start_header() -> None:
    up = RecordingUpstream()
    backend = TableBackend({"app": up})
    gate = backend.ready_gate["app"] = asyncio.Event()
    watch = Watch()
    async with running_gateway(backend, observer=watch) as gw, gw.client() as c1, gw.client() as c2:
        await c1.send(build_request("POST", "/one", body=b"held body"))
        await c2.send(build_request("GET", "/two"))
        sent = time.monotonic()
        await watch.until(lambda: watch.held == 2)
        await asyncio.sleep(0.05)  # the wake takes at least this long
        gate.set()
        r1, r2 = await c1.response(), await c2.response()
        elapsed = time.monotonic() - sent
        assert (r1.status, r2.status) == (200, 200)
        for r in (r1, r2):
            held = float(r.header("X-Wakegate-Cold-Start") or "nan")
            assert 0.05 <= held <= elapsed
        r3 = await c1.request("GET", "/warm")
        assert r3.header("X-Wakegate-Cold-Start") is None
    assert backend.scale_ups["app"] == 1  # concurrent cold requests coalesced
    assert {s.target: s.body for s in up.seen}[b"/one"] == b"held body"


async def test_hold_timeout_is_504_naming_the_project() -> None:
    backend = TableBackend({"app": RecordingUpstream()})
    backend.ready_gate["app"] = asyncio.Event()  # never set
    async with running_gateway(backend, hold_timeout_s=0.3) as gw, gw.client() as c:
        r = await c.request("GET", "/")
        assert r.status == 504
        assert "project app is not ready after 0.3s" in r.text


async def test_overflow_is_503_with_retry_after() -> None:
    backend = TableBackend({"app": RecordingUpstream()})
    backend.ready_gate["app"] = asyncio.Event()
    watch = Watch()
    async with running_gateway(backend, observer=watch, max_held_per_project=1, max_held_total=5) as gw, \
            gw.client() as c1, gw.client() as c2:
        await c1.send(build_request("GET", "/held"))
        await watch.until(lambda: watch.held == 1)
        r = await c2.request("GET", "/overflow")
        assert r.status == 503
        assert r.header("Retry-After") is not None and int(r.header("Retry-After") or 0) >= 1
        assert "too many requests" in r.text
        backend.ready_gate["app"].set()
        assert (await c1.response()).status == 200


async def test_a_request_racing_a_scale_down_is_served() -> None:
    """The endpoint dies under a request that already picked it (refused → dropped → held →
    woken again), and a request arriving while the scale-down runs is held, then served."""
    up = RecordingUpstream()
    backend = TableBackend({"app": up}, running=("app",))
    async with running_gateway(backend) as gw, gw.client() as c:
        assert (await c.request("GET", "/warm")).status == 200
        p = gw.lifecycle.projects["app"]
        # The process dies behind the lifecycle's back; the project still looks ready.
        await up.stop()
        assert p.state is State.READY
        r = await c.request("GET", "/after-death")
        assert r.status == 200
        assert r.header("X-Wakegate-Cold-Start") is not None
        assert backend.scale_ups["app"] == 1
        # A request arriving while a scale-down is in progress.
        sleeping = asyncio.ensure_future(gw.lifecycle.sleep(p, reason="deactivate"))
        await asyncio.sleep(0)  # the sleep has begun: state is asleep, scale_down runs
        assert p.state is State.ASLEEP
        r = await c.request("GET", "/during-sleep")
        assert r.status == 200
        assert await sleeping
        assert backend.scale_downs["app"] == 1
        assert backend.scale_ups["app"] == 2
    assert [s.target for s in up.seen] == [b"/warm", b"/after-death", b"/during-sleep"]


async def test_ignored_requests_never_wake_nor_count() -> None:
    up = RecordingUpstream()
    backend = TableBackend({"app": up})
    async with running_gateway(backend, ignore_paths=("/healthz",)) as gw, gw.client() as c:
        r = await c.request("GET", "/", headers={"User-Agent": "kube-probe/1.30"})
        assert r.status == 503 and r.header("Retry-After")
        r = await c.request("GET", "/healthz")
        assert r.status == 503
        assert backend.scale_calls == 0
        r = await c.request("GET", "/wake-me")
        assert r.status == 200
        p = gw.lifecycle.projects["app"]
        before = p.last_activity_mono
        r = await c.request("GET", "/healthz/deep")
        assert r.status == 200  # proxied while the project is up…
        assert p.last_activity_mono == before  # …but not counted as activity
    assert [s.target for s in up.seen] == [b"/wake-me", b"/healthz/deep"]


async def test_a_browser_gets_the_waiting_page_and_a_wake() -> None:
    backend = TableBackend({"app": RecordingUpstream()})
    backend.ready_gate["app"] = asyncio.Event()
    async with running_gateway(backend) as gw, gw.client() as c:
        r = await c.request("GET", "/", headers={"Accept": "text/html,*/*", "Sec-Fetch-Mode": "navigate"})
        assert r.status == 503
        assert (r.header("Content-Type") or "").startswith("text/html")
        assert r.all("Cache-Control") == ["no-store"]
        assert r.header("Retry-After") is not None
        assert "app" in r.text and "<html" in r.text
        assert backend.scale_ups["app"] == 1


async def test_project_strategy_block_never_shows_the_page() -> None:
    backend = TableBackend({"app": RecordingUpstream()}, {"app": ProjectSettings(strategy="block")})
    async with running_gateway(backend) as gw, gw.client() as c:
        r = await c.request("GET", "/", headers={"Accept": "text/html"})
        assert r.status == 200
        assert r.header("X-Wakegate-Cold-Start") is not None


# --- drain --------------------------------------------------------------------------------------


async def test_drain_waits_for_requests_in_flight() -> None:
    release = asyncio.Event()

    async def slow(seen: SeenRequest, w: asyncio.StreamWriter) -> None:
        if seen.target == b"/slow":
            await release.wait()
        w.write(simple_bytes(200, b"finished"))

    up = RecordingUpstream(slow)
    async with running_gateway(TableBackend({"app": up}, running=("app",))) as gw, gw.client() as c, \
            gw.client() as idle:
        await idle.request("GET", "/")  # an idle keep-alive connection
        await c.send(build_request("GET", "/slow"))
        await up.wait_seen(2)
        await gw.server.stop_accepting()
        assert gw.server.in_flight == 1
        assert not await gw.server.drain(0.05)
        await idle.read_until_closed()  # idle connections are closed at once
        release.set()
        assert await gw.server.drain(STEP_TIMEOUT_S)
        r = await c.response()
        assert r.body == b"finished"
        assert r.header("Connection") == "close"


async def test_a_released_herd_connects_a_bounded_number_at_a_time() -> None:
    """Hundreds of held requests released at once onto a fresh process: connection attempts are
    bounded per endpoint, the rest wait for a free connection, all are answered, one wake."""
    up = RecordingUpstream()
    backend = TableBackend({"app": up})
    gate = backend.ready_gate["app"] = asyncio.Event()
    watch = Watch()
    n = 200
    async with running_gateway(backend, observer=watch) as gw:
        assert gw.server.listener is not None
        pool = gw.server.listener.pool
        pool.max_connecting_per_endpoint = 4
        responses = await release_herd(gw, watch, gate, n)
        assert [r.status for r in responses] == [200] * n
        assert pool.waited > 0
        assert not pool.waiting
    assert backend.scale_ups["app"] == 1
    assert len(up.seen) == n
