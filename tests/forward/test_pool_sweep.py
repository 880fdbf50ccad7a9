"""The upstream pool's idle sweep."""

from __future__ import annotations

from tests.support import RecordingUpstream, TableBackend, running_gateway


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
