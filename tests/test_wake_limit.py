"""The wake rate limits: the pure token buckets exhaustively, then the real gateway applying them
exactly where a public request would start a wake (held requests and the waiting page alike)."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Mapping

import aiohttp
import pytest

from gateway.backends.base import ProjectSettings
from gateway.config import HostPort, Settings
from gateway.service import Service
from gateway.wake_limit import SCOPE_CLIENT, SCOPE_GLOBAL, Limited, TokenBucket, WakeLimiter, client_key
from tests.support import (
    DOMAIN,
    STEP_TIMEOUT_S,
    RawClient,
    RecordingUpstream,
    Response,
    TableBackend,
    Watch,
    build_request,
    running_gateway,
)

A = b"192.0.2.1"
B = b"192.0.2.2"

# --- TokenBucket ------------------------------------------------------------------------------------


def test_bucket_starts_full_with_one_minute_of_tokens() -> None:
    b = TokenBucket(60, now=100.0)
    assert b.capacity == 60 and b.tokens == 60 and b.rate_per_s == 1.0
    assert b.wait_s(100.0) == 0.0


def test_bucket_refills_continuously_up_to_its_capacity() -> None:
    b = TokenBucket(6, now=0.0)  # one token per 10 s
    b.tokens = 0.0
    assert b.refill(5.0) == pytest.approx(0.5)
    assert b.wait_s(5.0) == pytest.approx(5.0)
    assert b.refill(10.0) == pytest.approx(1.0)
    assert b.wait_s(10.0) == 0.0
    assert b.refill(10_000.0) == 6  # never above one minute's worth


def test_bucket_ignores_a_clock_going_backwards() -> None:
    b = TokenBucket(6, now=50.0)
    b.tokens = 0.0
    assert b.refill(40.0) == 0.0 and b.stamp == 50.0
    assert b.refill(60.0) == pytest.approx(1.0)


def test_a_rate_below_one_per_minute_still_allows_a_wake() -> None:
    b = TokenBucket(0.5, now=0.0)
    assert b.capacity == 1.0 and b.wait_s(0.0) == 0.0
    b.tokens = 0.0
    assert b.wait_s(0.0) == pytest.approx(120.0)


@pytest.mark.parametrize("rate", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_rates_are_refused(rate: float) -> None:
    with pytest.raises(ValueError, match="positive number per minute"):
        TokenBucket(rate, now=0.0)
    with pytest.raises(ValueError, match="positive number per minute"):
        WakeLimiter(rate, 10, now=0.0)
    with pytest.raises(ValueError, match="positive number per minute"):
        WakeLimiter(10, rate, now=0.0)


def test_max_clients_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_clients"):
        WakeLimiter(10, 10, now=0.0, max_clients=0)


# --- WakeLimiter ------------------------------------------------------------------------------------


def test_per_client_limit_and_its_retry_after() -> None:
    lim = WakeLimiter(600, 2, now=0.0)
    assert lim.take(A, 0.0) is None
    assert lim.take(A, 0.0) is None
    limited = lim.take(A, 0.0)
    assert isinstance(limited, Limited) and limited.scope == SCOPE_CLIENT
    assert limited.retry_after_s == pytest.approx(30.0)  # 2 per minute: a token every 30 s
    assert lim.take(B, 0.0) is None  # another client is not affected
    assert lim.take(A, 29.0) is not None
    assert lim.take(A, 30.0) is None  # refilled
    assert lim.take(A, 30.0) is not None


def test_global_limit_applies_to_every_client() -> None:
    lim = WakeLimiter(3, 60, now=0.0)
    assert [lim.take(ip, 0.0) for ip in (A, B, b"192.0.2.3")] == [None, None, None]
    limited = lim.take(b"192.0.2.4", 0.0)
    assert limited is not None and limited.scope == SCOPE_GLOBAL
    assert limited.retry_after_s == pytest.approx(20.0)
    assert lim.take(b"192.0.2.4", 20.0) is None


def test_a_refused_wake_takes_no_token_from_either_bucket() -> None:
    lim = WakeLimiter(2, 1, now=0.0)
    assert lim.take(A, 0.0) is None
    g = lim.global_bucket.tokens
    for _ in range(10):
        limited = lim.take(A, 0.0)
        assert limited is not None and limited.scope == SCOPE_CLIENT
    assert lim.global_bucket.tokens == g  # A's refusals left the global token for B
    assert lim.take(B, 0.0) is None
    limited = lim.take(b"192.0.2.9", 0.0)
    assert limited is not None and limited.scope == SCOPE_GLOBAL
    assert len(lim) == 2  # a refused client gets no bucket either


def test_both_empty_names_the_client_and_waits_for_both() -> None:
    lim = WakeLimiter(1, 1, now=0.0)  # both refill one token per 60 s
    assert lim.take(A, 0.0) is None
    lim.global_bucket.tokens = -1.0  # global even further behind (120 s)
    limited = lim.take(A, 0.0)
    assert limited is not None
    assert limited.scope == SCOPE_CLIENT
    assert limited.retry_after_s == pytest.approx(120.0)


def test_the_client_table_is_bounded_least_recently_used_out() -> None:
    lim = WakeLimiter(1e9, 1, now=0.0, max_clients=3)
    for i in range(1000):
        lim.take(f"10.0.{i // 256}.{i % 256}".encode(), 0.0)
        assert len(lim) <= 3
    assert len(lim) == 3
    lim2 = WakeLimiter(1e9, 1, now=0.0, max_clients=2)
    assert lim2.take(A, 0.0) is None
    assert lim2.take(B, 0.0) is None
    assert lim2.take(A, 0.0) is not None  # refused, but A is now the most recently used
    assert lim2.take(b"192.0.2.3", 0.0) is None  # pushes B out, not A
    assert lim2.take(A, 0.0) is not None  # A is still limited
    assert lim2.take(B, 0.0) is None  # B was forgotten: starts again with a full bucket


def test_client_keys() -> None:
    assert client_key(b"192.0.2.1") == b"192.0.2.1"
    assert client_key(b"::ffff:192.0.2.1") == b"192.0.2.1"
    net = ipaddress.IPv6Address("2001:db8:1:2::").packed[:8] + b"/64"
    assert client_key(b"2001:db8:1:2::1") == net
    assert client_key(b"2001:db8:1:2:ffff:ffff:ffff:ffff") == net
    assert client_key(b"fe80::1%eth0") == ipaddress.IPv6Address("fe80::").packed[:8] + b"/64"
    assert client_key(b"2001:db8:1:3::1") != net
    assert client_key(b"unknown") == b"unknown"
    assert client_key(b"not:an:address") == b"not:an:address"


def test_addresses_of_one_ipv6_64_share_a_bucket() -> None:
    lim = WakeLimiter(600, 1, now=0.0)
    assert lim.take(b"2001:db8::1", 0.0) is None
    limited = lim.take(b"2001:db8::2", 0.0)
    assert limited is not None and limited.scope == SCOPE_CLIENT
    assert lim.take(b"2001:db8:0:1::1", 0.0) is None


# --- through the real gateway --------------------------------------------------------------------------

BROWSER = {"Accept": "text/html,application/xhtml+xml;q=0.9,*/*;q=0.8", "Sec-Fetch-Mode": "navigate"}


class ClientFrom(RawClient):
    """A RawClient whose connection comes from another loopback address (another client)."""

    def __init__(self, port: int, source: str) -> None:
        super().__init__(port)
        self.source = source

    async def connect(self) -> None:
        self.reader, self.writer = await asyncio.wait_for(
            asyncio.open_connection(self.host, self.port, local_addr=(self.source, 0)), STEP_TIMEOUT_S)
        self._new_parser()


def backend_of(names: tuple[str, ...], *, running: tuple[str, ...] = (),
               settings: Mapping[str, ProjectSettings] | None = None) -> TableBackend:
    return TableBackend({n: RecordingUpstream() for n in names}, settings, running=running)


def assert_limited(r: Response, scope_text: str, per_min: int) -> None:
    assert r.status == 429
    retry = r.header("Retry-After")
    assert retry is not None and 1 <= int(retry) <= 60 // per_min  # a token every 60/per_min s
    assert scope_text in r.text
    assert "request id: " in r.text


async def test_the_per_client_limit_refuses_a_third_wake_but_never_a_ready_or_waking_project() -> None:
    backend = backend_of(("a", "b", "c", "slow", "warm"), running=("warm",))
    backend.ready_gate["slow"] = asyncio.Event()
    watch = Watch()
    async with running_gateway(backend, observer=watch, wake_rate_per_client_per_min=2) as gw:
        async with gw.client() as c, gw.client() as waiting:
            await waiting.send(build_request("GET", "/", "slow"))  # wake 1: stays waking
            await watch.until(lambda: watch.held == 1)
            assert (await c.request("GET", "/", "a")).status == 200  # wake 2
            r = await c.request("GET", "/", "c")  # wake 3 from the same address
            assert_limited(r, "per client address (2 per minute)", 2)
            assert backend.scale_ups["c"] == 0 and gw.lifecycle.projects["c"].state.value == "asleep"
            # Ready projects and wakes in progress are never limited.
            assert (await c.request("GET", "/again", "a")).status == 200
            assert (await c.request("GET", "/", "warm")).status == 200
            await c.send(build_request("GET", "/joins", "slow"))
            await watch.until(lambda: watch.held == 2)
            backend.ready_gate["slow"].set()
            assert (await c.response()).status == 200
            assert (await waiting.response()).status == 200
        # Another client address may still wake c.
        async with ClientFrom(gw.port, "127.0.0.2") as other:
            assert (await other.request("GET", "/", "c")).status == 200
        assert backend.scale_ups == {"slow": 1, "a": 1, "c": 1}
    assert watch.rejected == ["rate_limited"]


@pytest.mark.parametrize("trusted", [True, False])
async def test_behind_a_trusted_proxy_the_client_is_the_address_it_forwards(trusted: bool) -> None:
    backend = backend_of(("a", "b"))
    proxies = ("127.0.0.1/32",) if trusted else ()
    async with running_gateway(backend, wake_rate_per_client_per_min=1, trusted_proxies=proxies) as gw, \
            gw.client() as ingress:
        first = await ingress.request("GET", "/", "a", headers={"X-Forwarded-For": "6.6.6.6, 203.0.113.1"})
        second = await ingress.request("GET", "/", "b", headers={"X-Forwarded-For": "203.0.113.2"})
    assert first.status == 200
    # Trusted: two clients with a wake each. Untrusted: the forwarded addresses mean nothing, so
    # both requests come from the one peer, whose single wake is spent.
    assert second.status == (200 if trusted else 429)


async def test_the_global_limit_refuses_every_client() -> None:
    backend = backend_of(("a", "b", "c"))
    watch = Watch()
    async with running_gateway(backend, observer=watch, wake_rate_per_min=2) as gw:
        async with gw.client() as c:
            assert (await c.request("GET", "/", "a")).status == 200
        async with ClientFrom(gw.port, "127.0.0.2") as c:
            assert (await c.request("GET", "/", "b")).status == 200
        async with ClientFrom(gw.port, "127.0.0.3") as c:
            r = await c.request("GET", "/", "c")
            assert_limited(r, "the gateway's wake rate limit (2 per minute)", 2)
            assert (await c.request("GET", "/", "a")).status == 200  # ready: served
        assert backend.scale_ups["c"] == 0
    assert watch.rejected == ["rate_limited"]


async def test_the_waiting_page_obeys_the_wake_rate_limit() -> None:
    backend = backend_of(("a", "b"))
    backend.ready_gate["a"] = asyncio.Event()
    watch = Watch()
    async with running_gateway(backend, observer=watch, wake_rate_per_client_per_min=1) as gw, gw.client() as c:
        r = await c.request("GET", "/", "a", BROWSER)
        assert r.status == 503 and "a is starting" in r.text  # the page; a wakes
        r = await c.request("GET", "/", "a", BROWSER)  # a is waking: the page again, not limited
        assert r.status == 503 and "a is starting" in r.text
        r = await c.request("GET", "/", "b", BROWSER)
        assert_limited(r, "per client address (1 per minute)", 1)
        assert (r.header("Content-Type") or "").startswith("text/plain")
        assert backend.scale_ups == {"a": 1}
        assert gw.lifecycle.projects["b"].state.value == "asleep"
    assert watch.rejected == ["rate_limited"]


async def test_the_waiting_page_obeys_the_hold_bounds_and_draining() -> None:
    backend = backend_of(("a", "b"), settings={"a": ProjectSettings(hold_timeout_s=30.0)})
    backend.ready_gate["a"] = asyncio.Event()
    watch = Watch()
    async with running_gateway(backend, observer=watch, max_held_per_project=1) as gw, \
            gw.client() as held, gw.client() as c:
        await held.send(build_request("GET", "/api", "a"))
        await watch.until(lambda: watch.held == 1)
        r = await c.request("GET", "/", "a", BROWSER)
        assert r.status == 503 and r.header("Retry-After") == "3"
        assert "project a is starting and too many requests are already waiting" in r.text
        assert (r.header("Content-Type") or "").startswith("text/plain")
        gw.lifecycle.draining = True
        r = await c.request("GET", "/", "b", BROWSER)
        assert r.status == 503 and r.header("Retry-After") == "1"
        assert "the gateway is shutting down" in r.text
        assert backend.scale_ups == {"a": 1}  # b was not woken
        gw.lifecycle.draining = False
        backend.ready_gate["a"].set()
        assert (await held.response()).status == 200
    assert watch.rejected == ["overflow", "draining"]


async def test_admin_activations_are_never_limited() -> None:
    backend = backend_of(("a", "b"))
    settings = Settings(domain=DOMAIN, listen=HostPort("127.0.0.1", 0), admin_listen=HostPort("127.0.0.1", 0),
                        reap_interval_s=3600.0, wake_rate_per_min=1)
    service = Service(settings, backend=backend)
    await service.start()
    try:
        assert service.port is not None
        async with RawClient(service.port) as c:
            assert (await c.request("GET", "/", "a")).status == 200
            assert (await c.request("GET", "/", "b")).status == 429
        url = f"http://127.0.0.1:{service.admin_port}/api/v1/projects/b/activate?wait=true"
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=STEP_TIMEOUT_S)) as http, \
                http.post(url) as resp:
            assert resp.status == 200
        assert backend.scale_ups == {"a": 1, "b": 1}
        async with RawClient(service.port) as c:
            assert (await c.request("GET", "/", "b")).status == 200  # ready now: served
        text = (await service.metrics.render()).decode()
        assert 'wakegate_held_rejected_total{reason="rate_limited"} 1.0' in text
    finally:
        await service.stop()



async def test_a_forwarded_address_with_a_port_counts_as_that_address() -> None:
    # Azure Application Gateway writes X-Forwarded-For as address:port: a client's connections have
    # different ports but one address, so they share one client's wakes.
    backend = backend_of(("a", "b", "c"))
    async with running_gateway(backend, wake_rate_per_client_per_min=1, trusted_proxies=("127.0.0.1/32",)) as gw, \
            gw.client() as ingress:
        first = await ingress.request("GET", "/", "a", headers={"X-Forwarded-For": "203.0.113.7:50112"})
        second = await ingress.request("GET", "/", "b", headers={"X-Forwarded-For": "203.0.113.7:50113"})
        other = await ingress.request("GET", "/", "c", headers={"X-Forwarded-For": "[2001:db8::7]:443"})
    assert (first.status, second.status, other.status) == (200, 429, 200)
