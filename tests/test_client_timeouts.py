"""--client-keepalive-timeout and --client-header-timeout reach the public listener (real sockets).

Each test sets one timeout short and the other far longer than any wait here, so it shows both that
the short one is applied and that the two are independent. Waits are bounded well below the
defaults (75 s, 30 s): a setting that did not reach the listener fails the wait.
"""

from __future__ import annotations

from tests.support import DOMAIN, RecordingUpstream, TableBackend, running_gateway

SHORT_S = 0.3
LONG_S = 3600.0
BOUND_S = 10.0  # the listener checks once a second; far below either default


async def test_an_idle_keepalive_connection_closes_after_the_configured_timeout() -> None:
    up = RecordingUpstream()
    backend = TableBackend({"app": up}, running=("app",))
    async with running_gateway(backend, client_keepalive_timeout_s=SHORT_S, client_header_timeout_s=LONG_S) as gw, \
            gw.client() as idle, gw.client() as slow:
        assert (await idle.request("GET", "/first")).status == 200
        await slow.send(f"GET /slow HTTP/1.1\r\nHost: app.{DOMAIN}\r\n".encode())
        assert await idle.read_until_closed(limit_s=BOUND_S) == b""  # closed without a response
        # The head that is still arriving is under the (long) header timeout, not the keep-alive one.
        await slow.send(b"\r\n")
        r = await slow.response()
        assert (r.status, r.body) == (200, b"GET /slow")
    assert [s.target for s in up.seen] == [b"/first", b"/slow"]


async def test_a_slow_request_head_gets_408_after_the_configured_timeout() -> None:
    up = RecordingUpstream()
    backend = TableBackend({"app": up}, running=("app",))
    async with running_gateway(backend, client_keepalive_timeout_s=LONG_S, client_header_timeout_s=SHORT_S) as gw, \
            gw.client() as idle, gw.client() as slow:
        assert (await idle.request("GET", "/first")).status == 200
        await slow.send(f"GET /slow HTTP/1.1\r\nHost: app.{DOMAIN}\r\nX-Slow: ".encode())
        r = await slow.response(limit_s=BOUND_S)
        assert r.status == 408
        assert r.header("Connection") == "close"
        assert await slow.read_until_closed(limit_s=BOUND_S) == b""
        # The idle connection is under the (long) keep-alive timeout: it still serves.
        r = await idle.request("GET", "/second")
        assert (r.status, r.body) == (200, b"GET /second")
    assert [s.target for s in up.seen] == [b"/first", b"/second"]
