"""PublicServer as a component: its API, timeouts, client disconnects, logs and observer calls."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest

from gateway import logs
from gateway.backends.base import ProjectInfo
from tests.support import (
    DOMAIN,
    RawUpstream,
    RecordingUpstream,
    SeenRequest,
    TableBackend,
    Watch,
    build_request,
    running_gateway,
    simple_bytes,
)


async def test_start_binds_port_zero_and_stop_accepting_refuses_new_connections() -> None:
    up = RecordingUpstream()
    async with running_gateway(TableBackend({"app": up}, running=("app",))) as gw:
        assert gw.port > 0
        async with gw.client() as c:
            assert (await c.request("GET", "/")).status == 200
        await gw.server.stop_accepting()
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", gw.port)
        assert await gw.server.drain(1.0)


async def test_close_aborts_open_streams() -> None:
    async def endless(seen: SeenRequest, w: asyncio.StreamWriter) -> None:
        w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\ntick\r\n")
        await w.drain()
        await asyncio.Event().wait()

    up = RecordingUpstream(endless)
    async with running_gateway(TableBackend({"app": up}, running=("app",))) as gw, gw.client() as c:
        await c.send(build_request("GET", "/stream"))
        r = await c.response(head_only=True)
        assert r.status == 200
        assert gw.server.in_flight == 1
        assert not await gw.server.drain(0.05)
        gw.server.close()
        await c.read_until_closed()
        assert gw.server.in_flight == 0
        assert gw.lifecycle.projects["app"].in_flight == 0


async def test_a_client_leaving_while_held_releases_its_place() -> None:
    backend = TableBackend({"app": RecordingUpstream()})
    backend.ready_gate["app"] = asyncio.Event()
    watch = Watch()
    async with running_gateway(backend, observer=watch) as gw:
        async with gw.client() as c:
            await c.send(build_request("GET", "/held"))
            await watch.until(lambda: watch.held == 1)
        await watch.until(lambda: watch.held == 0)
        assert watch.finished == [("app", 499)]
        assert gw.server.in_flight == 0
        assert gw.lifecycle.projects["app"].in_flight == 0


async def test_a_client_leaving_mid_download_frees_the_upstream_connection() -> None:
    closed = asyncio.Event()

    async def stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000000\r\n\r\n")
        try:
            while True:
                writer.write(b"x" * 65536)
                await writer.drain()
        except ConnectionError:
            closed.set()

    watch = Watch()
    backend = TableBackend({"app": RawUpstream(stream)}, running=("app",))
    async with running_gateway(backend, observer=watch) as gw:
        async with gw.client() as c:
            await c.send(build_request("GET", "/big"))
            assert c.reader is not None
            await c.reader.readexactly(100_000)
        await asyncio.wait_for(closed.wait(), 10)
        await watch.until(lambda: len(watch.finished) == 1)
        assert gw.lifecycle.projects["app"].in_flight == 0
        assert watch.inflight == 0
        assert gw.server.listener is not None and gw.server.listener.pool.idle_count() == 0


async def test_a_stale_keep_alive_connection_is_retried_on_a_fresh_one() -> None:
    """The upstream closes an idle keep-alive connection just as a request is sent on it."""

    async def once_per_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(simple_bytes(200, b"first"))
        await writer.drain()
        await reader.readuntil(b"\r\n\r\n")  # the next request on this connection: drop it
        writer.transport.abort()

    up = RawUpstream(once_per_connection)
    async with running_gateway(TableBackend({"app": up}, running=("app",))) as gw, gw.client() as c:
        for _ in range(3):
            r = await c.request("POST", "/no-body", headers={"Content-Length": "0"})
            assert (r.status, r.body) == (200, b"first")
    assert up.accepts == 3


async def test_slow_heads_get_408_and_idle_connections_close() -> None:
    up = RecordingUpstream()
    async with running_gateway(TableBackend({"app": up}, running=("app",))) as gw:
        listener = gw.server.listener
        assert listener is not None
        listener.header_timeout_s = 0.5
        listener.keepalive_timeout_s = 0.5
        async with gw.client() as slow, gw.client() as idle:
            assert (await idle.request("GET", "/")).status == 200
            await slow.send(f"GET / HTTP/1.1\r\nHost: app.{DOMAIN}\r\nX-Slow: ".encode())
            r = await slow.response()
            assert r.status == 408
            assert await idle.read_until_closed() == b""
    assert len(up.seen) == 1


async def test_access_log_and_request_ids(caplog: pytest.LogCaptureFixture) -> None:
    up = RecordingUpstream()
    caplog.set_level(logging.INFO, logger=logs.LOGGER_NAME)
    async with running_gateway(TableBackend({"app": up}, running=("app",)), access_log=True) as gw, \
            gw.client() as c:
        await c.request("GET", "/path?token=secret", headers={"X-Request-Id": "abc-123"})
        await c.request("GET", "/second", headers={"Authorization": "Bearer hunter2"})
        await c.request("GET", "/", project="ghost")
    access = [r for r in caplog.records if getattr(r, "event", None) == "access"]
    assert [(getattr(r, "project", None), getattr(r, "status", None)) for r in access] == [
        ("app", 200), ("app", 200), ("ghost", 404)]
    assert getattr(access[0], "request_id", None) == "abc-123"
    assert getattr(access[0], "path", None) == "/path"
    generated = getattr(access[1], "request_id", None)
    assert generated and generated.encode() == up.seen[1].one("X-Request-Id")
    text = "\n".join(json.dumps(vars(r), default=str) for r in caplog.records)
    assert "secret" not in text and "hunter2" not in text


async def test_observer_sees_every_request_once() -> None:
    watch = Watch()
    up = RecordingUpstream()
    async with running_gateway(TableBackend({"app": up}, running=("app",)), observer=watch) as gw, \
            gw.client() as c:
        await c.request("GET", "/")
        await c.request("GET", "/", project="ghost")
        await c.request("GET", "/", project=None, headers={"Host": "bad host"})
        await watch.until(lambda: len(watch.finished) == 3)
    assert watch.finished == [("app", 200), ("ghost", 404), (None, 400)]
    assert watch.inflight == 0


class BrokenDiscovery(TableBackend):
    """A backend with a bug: looking up an unknown name raises something no one expects."""

    async def discover(self, name: str) -> ProjectInfo | None:
        raise RuntimeError("a bug in the backend")


async def test_a_handler_that_raises_answers_500_and_the_gateway_serves_on(caplog: pytest.LogCaptureFixture) -> None:
    backend = BrokenDiscovery({"a": RecordingUpstream()})
    async with running_gateway(backend) as gw, gw.client() as c:
        r = await c.request("GET", "/", "unknown")
        assert r.status == 500 and r.text == "internal error in the gateway\n"
        assert "a bug in the backend" not in r.text
        assert "request handler failed" in caplog.text and "RuntimeError: a bug in the backend" in caplog.text
    async with running_gateway(BrokenDiscovery({"a": RecordingUpstream()})) as gw, gw.client() as c:
        assert (await c.request("GET", "/", "a")).status == 200  # known projects are served as ever
