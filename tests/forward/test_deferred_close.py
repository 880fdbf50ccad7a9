"""A client that closes its connection between exchanges while other requests are in flight: the
gateway closes its side once nothing is in flight (or after CLOSE_LATER_S), so a released herd's
responses go out before the cleanup of the connections already answered. Real sockets throughout."""

from __future__ import annotations

import asyncio

from gateway.forward.client import Listener
from gateway.forward.memo import CLOSE_BATCH
from tests.support import (
    DOMAIN,
    Gateway,
    RawClient,
    RecordingUpstream,
    SeenRequest,
    TableBackend,
    build_request,
    running_gateway,
    simple_bytes,
)


def _upstream(release: asyncio.Event) -> RecordingUpstream:
    async def handler(seen: SeenRequest, w: asyncio.StreamWriter) -> None:
        if seen.target == b"/slow":
            await release.wait()
        w.write(simple_bytes(200, seen.target))

    return RecordingUpstream(handler)


async def _after_the_eof(gw: Gateway, listener: Listener) -> None:
    """A request on another connection, answered once the gateway read the FIN sent before it (on
    loopback the FIN is readable before that request is even sent); then the close is deferred."""
    async with gw.client() as probe:
        r = await probe.request("GET", "/probe")
        assert r.status == 200
    assert len(listener.memo.to_close) == 1


async def _quick_client_closes_while_slow_in_flight(gw: Gateway, up: RecordingUpstream, slow: RawClient,
                                                     quick: RawClient) -> Listener:
    """/slow in flight on ``slow``; /quick answered on ``quick``, whose client then sends its FIN;
    returns the listener once it has deferred that close."""
    listener = gw.server.listener
    assert listener is not None
    await slow.send(build_request("GET", "/slow"))
    await up.wait_seen(1)
    r = await quick.request("GET", "/quick")
    assert (r.status, r.body) == (200, b"/quick")
    assert quick.writer is not None
    quick.writer.write_eof()  # the client is done with the connection
    await _after_the_eof(gw, listener)
    return listener


async def test_a_closed_idle_connection_is_closed_once_nothing_is_in_flight() -> None:
    release = asyncio.Event()
    up = _upstream(release)
    backend = TableBackend({"app": up}, running=("app",))
    async with running_gateway(backend) as gw, gw.client() as slow, gw.client() as quick:
        listener = await _quick_client_closes_while_slow_in_flight(gw, up, slow, quick)
        kept = listener.memo.to_close[0]
        assert kept in listener.connections and not kept.closed  # its close waits for /slow
        assert gw.server.in_flight == 1
        release.set()
        r = await slow.response()
        assert (r.status, r.body) == (200, b"/slow")
        assert await quick.read_until_closed() == b""  # closed once nothing was in flight
        assert listener.memo.to_close == []
        assert kept.closed
        # The connection that stayed open still serves requests.
        r = await slow.request("GET", "/again")
        assert (r.status, r.body) == (200, b"/again")


async def test_a_deferred_close_happens_even_while_a_request_stays_in_flight() -> None:
    release = asyncio.Event()
    up = _upstream(release)
    backend = TableBackend({"app": up}, running=("app",))
    async with running_gateway(backend) as gw, gw.client() as slow, gw.client() as quick:
        listener = await _quick_client_closes_while_slow_in_flight(gw, up, slow, quick)
        assert await quick.read_until_closed() == b""  # CLOSE_LATER_S bounds the wait
        assert gw.server.in_flight == 1
        assert listener.memo.to_close == []
        release.set()
        r = await slow.response()
        assert (r.status, r.body) == (200, b"/slow")


async def test_a_client_closing_mid_request_still_abandons_it() -> None:
    release = asyncio.Event()
    up = _upstream(release)
    backend = TableBackend({"app": up}, running=("app",))
    async with running_gateway(backend) as gw, gw.client() as other, gw.client() as c:
        await other.send(build_request("GET", "/slow"))
        await c.send(build_request("GET", "/slow", headers={"Host": f"app.{DOMAIN}"}))
        await up.wait_seen(2)
        assert c.writer is not None
        c.writer.write_eof()
        assert await c.read_until_closed() == b""  # not deferred: the exchange is aborted
        assert gw.server.in_flight == 1
        release.set()
        r = await other.response()
        assert r.status == 200


async def test_many_deferred_closes_all_happen_over_several_rounds() -> None:
    release = asyncio.Event()
    up = _upstream(release)
    backend = TableBackend({"app": up}, running=("app",))
    n = CLOSE_BATCH + 6  # more than one round's worth
    async with running_gateway(backend) as gw, gw.client() as slow:
        listener = gw.server.listener
        assert listener is not None
        await slow.send(build_request("GET", "/slow"))
        await up.wait_seen(1)
        clients = [gw.client() for _ in range(n)]
        try:
            for c in clients:
                await c.connect()
                r = await c.request("GET", "/quick")
                assert r.status == 200
                assert c.writer is not None
                c.writer.write_eof()
            async with gw.client() as probe:  # answered after the gateway read every FIN above
                assert (await probe.request("GET", "/probe")).status == 200
            assert len(listener.memo.to_close) == n
            release.set()
            assert (await slow.response()).status == 200
            for c in clients:
                assert await c.read_until_closed() == b""
            assert listener.memo.to_close == []
        finally:
            for c in clients:
                c.close()
