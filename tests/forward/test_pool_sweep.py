"""The upstream pool: its idle sweep, and connections for requests released at once."""

from __future__ import annotations

import asyncio

from tests.support import (
    STEP_TIMEOUT_S,
    RecordingUpstream,
    SeenRequest,
    TableBackend,
    Watch,
    build_request,
    release_herd,
    running_gateway,
    simple_bytes,
)


async def test_a_connection_idle_before_the_first_sweep_is_kept_by_it() -> None:
    up = RecordingUpstream()
    async with running_gateway(TableBackend({"app": up}, running=("app",))) as gw, gw.client() as c:
        assert (await c.request("GET", "/")).status == 200
        listener = gw.server.listener
        assert listener is not None
        assert listener.pool.idle_count() == 1
        listener.pool.sweep(listener.loop.time())  # what the first sweep, a second after start, does
        assert listener.pool.idle_count() == 1
        assert (await c.request("GET", "/again")).status == 200
        listener.pool.sweep(listener.loop.time() + listener.pool.idle_timeout_s + 1)
        assert listener.pool.idle_count() == 0
    assert up.accepts == 1


async def test_a_released_herd_reuses_connections_instead_of_opening_one_per_request() -> None:
    up = RecordingUpstream()
    backend = TableBackend({"app": up})
    gate = backend.ready_gate["app"] = asyncio.Event()
    watch = Watch()
    n = 300
    max_connecting = 8
    async with running_gateway(backend, observer=watch, max_held_per_project=n, max_held_total=n) as gw:
        assert gw.server.listener is not None
        pool = gw.server.listener.pool
        pool.max_connecting_per_endpoint = max_connecting
        responses = await release_herd(gw, watch, gate, n)
    assert [r.status for r in responses] == [200] * n
    assert pool.waited > n // 2  # most of the herd found every connection busy (what this test is about)
    # A request that never waited opened at most one connection (or took an idle one), so at least
    # this many connections were opened for requests that waited:
    opened_for_waiting = up.accepts - (n - pool.waited)
    # With the reuse rule, waiting requests get new connections only from attempts that end before
    # the first connection comes free (one round of at most max_connecting; one more allowed for a
    # slow round of events); after that, connections that come free serve them. Without it every
    # attempt that ends opens another while requests wait (about n / 5 here).
    assert opened_for_waiting <= 2 * max_connecting
    assert up.accepts < n // 4  # connections that came free served most of the waiting requests


async def test_waiting_requests_still_connect_when_the_connections_stay_busy() -> None:
    """A herd of quick requests and long ones: once the quick ones are done, no connection comes
    free until every long one has reached the project; the waiting ones must connect anyway."""
    release = asyncio.Event()

    async def reply(seen: SeenRequest, w: asyncio.StreamWriter) -> None:
        if seen.target.startswith(b"/long"):
            await release.wait()
        w.write(simple_bytes(200, seen.target))

    up = RecordingUpstream(reply)
    backend = TableBackend({"app": up})
    gate = backend.ready_gate["app"] = asyncio.Event()
    watch = Watch()
    async with running_gateway(backend, observer=watch) as gw:
        assert gw.server.listener is not None
        gw.server.listener.pool.max_connecting_per_endpoint = 2
        targets = [f"/quick{i}" for i in range(20)] + [f"/long{i}" for i in range(20)]
        clients = [gw.client() for _ in targets]
        for c, target in zip(clients, targets, strict=True):
            await c.connect()
            await c.send(build_request("GET", target))
        await watch.until(lambda: watch.held == len(targets))
        gate.set()
        def all_long_arrived() -> bool:
            return sum(s.target.startswith(b"/long") for s in up.seen) == 20

        async with asyncio.timeout(STEP_TIMEOUT_S), up.arrived:
            await up.arrived.wait_for(all_long_arrived)
        release.set()
        responses = await asyncio.gather(*(c.response() for c in clients))
        for c in clients:
            c.close()
    assert [r.body for r in responses] == [t.encode() for t in targets]
