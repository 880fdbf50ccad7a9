"""Metrics: exact names and values after scripted scenarios, read back by parsing the exposition."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gateway.config import Settings
from gateway.lifecycle import HoldRejected, Lifecycle, State
from gateway.metrics import REQUEST_BUCKETS_S, Metrics, code_class, count_states
from tests.ops_support import GatewayProcess, ScriptedBackend, write_projects

SETTINGS = Settings(domain="test.example", hold_timeout_s=5.0, idle_timeout_s=60.0, reap_interval_s=3600.0)


def parse(text: bytes | str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample as {(name, sorted labels): value}, ``_created`` samples left out."""
    raw = text.decode() if isinstance(text, bytes) else text
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(raw):
        for s in family.samples:
            if not s.name.endswith("_created"):
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def strip_process(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> dict[
        tuple[str, tuple[tuple[str, str], ...]], float]:
    return {k: v for k, v in samples.items() if not k[0].startswith("process_")}


def types(text: bytes) -> dict[str, str]:
    return {f.name: f.type for f in text_string_to_metric_families(text.decode())}


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


class Rig:
    def __init__(self, backend: ScriptedBackend, settings: Settings = SETTINGS) -> None:
        self.backend = backend
        self.metrics = Metrics()
        self.lifecycle = Lifecycle(backend, settings, self.metrics)
        self.metrics.attach(self.lifecycle)

    async def scrape(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        return parse(await self.metrics.render())


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    r = Rig(ScriptedBackend(["alpha", "beta", "gamma"], fail=["beta"], never_ready=["gamma"], ready_delay_s=0.05))
    await r.lifecycle.start()
    yield r
    await r.lifecycle.close()


async def test_every_required_metric_is_exposed_with_its_type(rig: Rig) -> None:
    body = await rig.metrics.render()
    t = types(body)
    assert t["wakegate_requests"] == "counter"
    assert t["wakegate_request_duration_seconds"] == "histogram"
    assert t["wakegate_wakeups"] == "counter"
    assert t["wakegate_wakeup_duration_seconds"] == "histogram"
    assert t["wakegate_held_requests"] == "gauge"
    assert t["wakegate_held_rejected"] == "counter"
    assert t["wakegate_scale_operations"] == "counter"
    assert t["wakegate_projects"] == "gauge"
    assert t["wakegate_inflight_requests"] == "gauge"
    assert t["wakegate_upstream_errors"] == "counter"
    assert t["wakegate_project_requests"] == "counter"
    assert t["wakegate_project_wakeups"] == "counter"
    s = parse(body)
    for cls in ("1xx", "2xx", "3xx", "4xx", "5xx"):
        assert value(s, "wakegate_requests_total", code_class=cls) == 0
        assert value(s, "wakegate_request_duration_seconds_bucket", code_class=cls, le="0.0001") == 0
    for result in ("ready", "timeout", "failed"):
        assert value(s, "wakegate_wakeups_total", result=result) == 0
    assert value(s, "wakegate_wakeup_duration_seconds_bucket", le="0.1") == 0
    assert value(s, "wakegate_wakeup_duration_seconds_bucket", le="600.0") == 0
    for reason in ("overflow", "timeout", "failed", "unavailable", "removed", "draining", "rate_limited"):
        assert value(s, "wakegate_held_rejected_total", reason=reason) == 0
    for direction in ("up", "down"):
        for result in ("ok", "error"):
            assert value(s, "wakegate_scale_operations_total", direction=direction, result=result) == 0
    assert value(s, "wakegate_projects", state="asleep") == 3
    assert value(s, "wakegate_held_requests") == 0
    assert value(s, "wakegate_inflight_requests") == 0
    # A single gateway on a backend without a control plane: reachable, and it runs the reaper.
    assert t["wakegate_backend_reachable"] == t["wakegate_reaper_leader"] == "gauge"
    assert value(s, "wakegate_backend_reachable") == 1 and value(s, "wakegate_reaper_leader") == 1
    # No project label on histograms.
    assert not any(name.startswith("wakegate_request_duration") and "project" in dict(labels) for name, labels in s)


async def test_scenario_cold_wake_requests_and_reap(rig: Rig) -> None:
    n = 7
    lc, m = rig.lifecycle, rig.metrics
    p = lc.projects["alpha"]
    # One cold wake through a held request, then n proxied requests.
    held = await lc.hold(p)
    assert held.endpoint == p.endpoints[0]
    for i in range(n):
        m.inflight_changed(1)
        lc.begin(p)
        lc.end(p)
        m.inflight_changed(-1)
        m.request_finished("alpha", 404 if i == 0 else 200, 0.0002 + i * 0.001)
    s = await rig.scrape()
    assert value(s, "wakegate_projects", state="ready") == 1
    assert value(s, "wakegate_projects", state="asleep") == 2
    # One reap: the idle timeout has passed for alpha.
    assert p.last_activity_wall is not None
    lc.projects["alpha"].idle_timeout_s = 0.001
    p.last_activity_wall -= 1
    assert lc.reap_once() == ["alpha"]
    await asyncio.wait_for(_sleep_done(lc, "alpha"), 10)

    s = await rig.scrape()
    assert value(s, "wakegate_requests_total", code_class="2xx") == n - 1
    assert value(s, "wakegate_requests_total", code_class="4xx") == 1
    assert value(s, "wakegate_request_duration_seconds_count", code_class="2xx") == n - 1
    assert value(s, "wakegate_request_duration_seconds_bucket", code_class="4xx", le="0.00025") == 1
    assert value(s, "wakegate_request_duration_seconds_bucket", code_class="2xx", le="0.0025") == 2
    assert value(s, "wakegate_wakeups_total", result="ready") == 1
    assert value(s, "wakegate_wakeups_total", result="failed") == 0
    assert value(s, "wakegate_wakeup_duration_seconds_count") == 1
    assert value(s, "wakegate_wakeups_started_total") == 1
    assert value(s, "wakegate_scale_operations_total", direction="up", result="ok") == 1
    assert value(s, "wakegate_scale_operations_total", direction="down", result="ok") == 1
    assert value(s, "wakegate_scale_operations_total", direction="down", result="error") == 0
    assert value(s, "wakegate_project_requests_total", project="alpha") == n
    assert value(s, "wakegate_project_wakeups_total", project="alpha") == 1
    assert value(s, "wakegate_project_requests_total", project="beta") is None  # never used: no series
    assert value(s, "wakegate_projects", state="asleep") == 3
    assert value(s, "wakegate_held_requests") == 0
    assert value(s, "wakegate_inflight_requests") == 0


async def _sleep_done(lc: Lifecycle, name: str) -> None:
    # The reaper's sleep task is the lifecycle's; await it rather than poll.
    await lc._tasks.join()
    assert lc.projects[name].state is State.ASLEEP


async def test_failed_and_timed_out_wakes(rig: Rig) -> None:
    lc = rig.lifecycle
    with pytest.raises(HoldRejected) as failed:
        await lc.hold(lc.projects["beta"])
    assert failed.value.status == 502
    gamma = lc.projects["gamma"]
    gamma.hold_timeout_s = 0.2
    with pytest.raises(HoldRejected) as timed_out:
        await lc.hold(gamma)
    assert timed_out.value.reason == "timeout"
    if gamma.state is State.WAKING:  # the wake's own deadline is a moment behind the hold's
        assert not await lc.wait_ready(gamma, 5)  # returns when that deadline fails the wake
    assert gamma.state is State.FAILED
    s = await rig.scrape()
    assert value(s, "wakegate_wakeups_total", result="failed") == 1
    assert value(s, "wakegate_scale_operations_total", direction="up", result="error") == 1
    assert value(s, "wakegate_held_rejected_total", reason="timeout") == 1
    assert value(s, "wakegate_held_rejected_total", reason="failed") == 1  # beta's request: once
    assert value(s, "wakegate_project_wakeups_total", project="beta") == 1
    assert value(s, "wakegate_wakeups_total", result="timeout") == 1  # gamma's wake passed its deadline
    assert value(s, "wakegate_projects", state="failed") == 2


async def test_held_requests_failed_by_the_wake_deadline_count_as_timeouts_once_each() -> None:
    r = Rig(ScriptedBackend(["gamma"], never_ready=["gamma"]), dataclasses.replace(SETTINGS, hold_timeout_s=0.3))
    await r.lifecycle.start()
    try:
        p = r.lifecycle.projects["gamma"]
        first = asyncio.ensure_future(r.lifecycle.hold(p))
        await asyncio.wait_for(r.backend.scaled_up.wait(), 5)  # the wake runs: its deadline is armed
        later = [asyncio.ensure_future(r.lifecycle.hold(p)) for _ in range(4)]
        results = await asyncio.wait_for(asyncio.gather(first, *later, return_exceptions=True), 5)
        assert [(e.status, e.reason) for e in results if isinstance(e, HoldRejected)] == [(504, "timeout")] * 5
        s = await r.scrape()
        assert value(s, "wakegate_held_rejected_total", reason="timeout") == 5
        assert value(s, "wakegate_held_rejected_total", reason="failed") == 0
        assert value(s, "wakegate_wakeups_total", result="timeout") == 1
        assert value(s, "wakegate_held_requests") == 0
    finally:
        await r.lifecycle.close()


async def test_wake_timeout_is_counted_when_the_wake_deadline_passes() -> None:
    r = Rig(ScriptedBackend(["gamma"], never_ready=["gamma"]), dataclasses.replace(SETTINGS, hold_timeout_s=0.2))
    await r.lifecycle.start()
    try:
        p = r.lifecycle.projects["gamma"]
        assert not await r.lifecycle.wait_ready(p, 2)
        s = await r.scrape()
        assert value(s, "wakegate_wakeups_total", result="timeout") == 1
        assert value(s, "wakegate_projects", state="failed") == 1
    finally:
        await r.lifecycle.close()


async def test_held_gauge_and_overflow() -> None:
    settings = dataclasses.replace(SETTINGS, max_held_per_project=1)
    r = Rig(ScriptedBackend(["gamma"], never_ready=["gamma"]), settings)
    await r.lifecycle.start()
    try:
        p = r.lifecycle.projects["gamma"]
        first = asyncio.create_task(r.lifecycle.hold(p))
        await asyncio.wait_for(r.backend.scaled_up.wait(), 5)  # the first request is parked
        assert value(await r.scrape(), "wakegate_held_requests") == 1
        with pytest.raises(HoldRejected) as overflow:
            await r.lifecycle.hold(p)
        assert overflow.value.reason == "overflow"
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        s = await r.scrape()
        assert value(s, "wakegate_held_rejected_total", reason="overflow") == 1
        assert value(s, "wakegate_held_requests") == 0
    finally:
        await r.lifecycle.close()


async def test_removed_project_loses_its_series(rig: Rig) -> None:
    m = rig.metrics
    m.request_finished("alpha", 200, 0.001)
    m.request_finished("gamma", 200, 0.001)
    m.wake_finished("alpha", "ready", 1.0)
    rig.backend.remove("alpha")
    s = await rig.scrape()
    assert value(s, "wakegate_project_requests_total", project="alpha") is None
    assert value(s, "wakegate_project_wakeups_total", project="alpha") is None
    assert value(s, "wakegate_project_requests_total", project="gamma") == 1
    # A request that finishes after the removal does not bring the series back.
    m.request_finished("alpha", 200, 0.001)
    assert value(await rig.scrape(), "wakegate_project_requests_total", project="alpha") is None
    assert value(s, "wakegate_requests_total", code_class="2xx") == 2


async def test_request_observer_hooks() -> None:
    m = Metrics()
    m.request_finished(None, 400, 0.00005)  # routing failed: no project
    m.request_finished("x", 0, 0.1)  # aborted before a status
    m.request_finished("x", 101, 5.0)
    m.upstream_error("connect")
    m.upstream_error("connect")
    m.upstream_error("tls")  # a reason not known in advance still counts
    m.held_rejected("rate_limited")
    m.held_rejected("rate_limited")
    m.inflight_changed(1)
    m.inflight_changed(1)
    m.inflight_changed(-1)
    s = parse(await m.render())
    assert value(s, "wakegate_requests_total", code_class="4xx") == 1
    assert value(s, "wakegate_requests_total", code_class="other") == 1
    assert value(s, "wakegate_requests_total", code_class="1xx") == 1
    assert value(s, "wakegate_request_duration_seconds_bucket", code_class="4xx", le="0.0001") == 1
    assert value(s, "wakegate_upstream_errors_total", reason="connect") == 2
    assert value(s, "wakegate_upstream_errors_total", reason="tls") == 1
    assert value(s, "wakegate_held_rejected_total", reason="rate_limited") == 2
    assert value(s, "wakegate_inflight_requests") == 1
    assert value(s, "wakegate_project_requests_total", project="x") == 2  # no lifecycle attached: kept
    assert value(s, "wakegate_projects", state="ready") == 0


def test_code_class() -> None:
    assert [code_class(c) for c in (100, 199, 200, 302, 404, 599, 600, 0, 99)] == [
        "1xx", "1xx", "2xx", "3xx", "4xx", "5xx", "other", "other", "other"]
    assert REQUEST_BUCKETS_S[0] < 0.001


async def test_render_matches_the_registry_with_thousands_of_projects() -> None:
    m = Metrics()
    for i in range(5000):
        m.request_finished(f"p{i}", 200, 0.001)
        m.wake_finished(f"p{i}", "ready", 0.5)
    m.request_finished('we"ird\\name', 200, 0.001)
    rendered = parse(await m.render())
    # The process's own CPU and memory move between the two scrapes; everything else is the same.
    assert strip_process(rendered) == strip_process(parse(generate_latest(m.registry)))
    assert value(rendered, "wakegate_project_requests_total", project="p4999") == 1
    assert value(rendered, "wakegate_project_requests_total", project='we"ird\\name') == 1
    assert sum(1 for name, _ in rendered if name == "wakegate_project_wakeups_total") == 5000


async def test_render_yields_to_the_event_loop() -> None:
    m = Metrics()
    for i in range(3000):
        m.request_finished(f"p{i}", 200, 0.001)
    ticks = 0
    done = False

    async def ticker() -> None:
        nonlocal ticks
        while not done:
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    start = ticks
    await m.render()
    done = True
    await task
    assert ticks - start >= 6  # other tasks ran between slices


# --- end to end: the real gateway, scraped over HTTP -------------------------------------------------


async def test_scraped_values_after_a_cold_wake_requests_and_a_reap(tmp_path: Path) -> None:
    n = 20
    projects = write_projects(tmp_path, {"alpha": {"idle_timeout_s": 2}, "quiet": {}})
    gw = await GatewayProcess.start(projects, "--reap-interval", "0.2")
    try:
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            for i in range(n):
                async with http.get(f"{gw.url}/r{i}", headers={"Host": "alpha.localhost"}) as resp:
                    assert resp.status == 200
                    await resp.read()
                    assert ("X-Wakegate-Cold-Start" in resp.headers) is (i == 0)
            async with http.get(f"{gw.url}/", headers={"Host": "nope.localhost"}) as resp:
                assert resp.status == 404
            await gw.wait_event(lambda e: e.get("event") == "sleep" and e.get("project") == "alpha")
            async with http.get(gw.admin_url + "/metrics") as resp:
                assert resp.status == 200
                s = parse(await resp.text())
    finally:
        await gw.kill()
    assert value(s, "wakegate_requests_total", code_class="2xx") == n
    assert value(s, "wakegate_requests_total", code_class="4xx") == 1
    assert value(s, "wakegate_request_duration_seconds_count", code_class="2xx") == n
    assert value(s, "wakegate_wakeups_total", result="ready") == 1
    assert value(s, "wakegate_wakeups_total", result="failed") == 0
    assert value(s, "wakegate_wakeups_total", result="timeout") == 0
    assert value(s, "wakegate_wakeup_duration_seconds_count") == 1
    assert value(s, "wakegate_scale_operations_total", direction="up", result="ok") == 1
    assert value(s, "wakegate_scale_operations_total", direction="down", result="ok") == 1
    assert value(s, "wakegate_project_requests_total", project="alpha") == n
    assert value(s, "wakegate_project_wakeups_total", project="alpha") == 1
    assert value(s, "wakegate_project_requests_total", project="quiet") is None
    assert value(s, "wakegate_projects", state="asleep") == 2
    assert value(s, "wakegate_projects", state="ready") == 0
    assert value(s, "wakegate_held_requests") == 0
    assert value(s, "wakegate_inflight_requests") == 0
    assert value(s, "wakegate_held_rejected_total", reason="timeout") == 0


async def test_count_states_agrees_with_the_lifecycle(rig: Rig) -> None:
    lc = rig.lifecycle
    assert await lc.wait_ready(lc.projects["alpha"], 5)
    with pytest.raises(HoldRejected):
        await lc.hold(lc.projects["beta"])
    expected = {k: v for k, v in lc.count_by_state().items() if v}
    assert count_states(list(lc.projects.values())) == expected == {"ready": 1, "failed": 1, "asleep": 1}
    assert count_states([]) == {}


async def test_waiting_pages_streams_and_tunnels_are_counted_apart() -> None:
    m = Metrics()
    m.request_finished("alpha", 503, 0.001, page=True)  # a cold browser visit: the waiting page
    m.request_finished("alpha", 200, 0.002)  # time to the response head
    m.stream_finished("stream", 42.0)
    m.stream_finished("tunnel", 600.0)
    body = await m.render()
    s = parse(body)
    assert value(s, "wakegate_requests_total", code_class="waiting_page") == 1
    assert value(s, "wakegate_requests_total", code_class="5xx") == 0  # error-rate alerts stay quiet
    assert value(s, "wakegate_stream_duration_seconds_count", kind="stream") == 1
    assert value(s, "wakegate_stream_duration_seconds_sum", kind="tunnel") == 600.0
    assert value(s, "wakegate_stream_duration_seconds_bucket", kind="tunnel", le="300.0") == 0
    # Process metrics as every Prometheus user expects, and no *_created series unless asked for.
    for name in ("process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds"):
        assert value(s, name) is not None and value(s, name) > 0, name  # type: ignore[operator]
    assert b"_created" not in body
    assert b"wakegate_requests_created" in await Metrics(created_series=True).render()
    Metrics()  # back to the default for the rest of the process


async def test_scraped_waiting_page_and_stream_over_http(tmp_path: Path) -> None:
    projects = write_projects(tmp_path, {"alpha": {"env": {"SLOW_S": 0.4, "BOOT_S": 0.5}}})
    gw = await GatewayProcess.start(projects)
    browser = {"Host": "alpha.localhost", "Accept": "text/html", "Sec-Fetch-Mode": "navigate"}
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
            async with http.get(gw.url + "/", headers=browser) as resp:
                assert resp.status == 503 and "is starting" in await resp.text()
            async with http.get(gw.url + "/slow", headers={"Host": "alpha.localhost"}) as resp:
                assert resp.status == 200 and len(await resp.read()) == 4000
            async with http.get(gw.admin_url + "/metrics") as resp:
                s = parse(await resp.text())
    finally:
        await gw.kill()
    assert value(s, "wakegate_requests_total", code_class="waiting_page") == 1
    assert value(s, "wakegate_requests_total", code_class="5xx") == 0
    assert value(s, "wakegate_requests_total", code_class="2xx") == 1
    assert value(s, "wakegate_stream_duration_seconds_count", kind="stream") == 1
    # The body took the app's own pauses (0.4 s) after the head; that is the stream's lifetime.
    assert value(s, "wakegate_stream_duration_seconds_sum", kind="stream") >= 0.3  # type: ignore[operator]
