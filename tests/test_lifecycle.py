"""The lifecycle driven directly (no HTTP), on the real local backend with tiny real processes."""

from __future__ import annotations

import asyncio
import os
import signal
import textwrap
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.backends.base import BackendError, BackendUnavailable, Endpoint
from gateway.backends.local import LocalBackend
from gateway.config import Settings
from gateway.lifecycle import Held, HoldRejected, Lifecycle, Project, State, _expire
from gateway.project_state import Mode, Op

WAIT_S = 20.0

# A stdlib-only project: optional slow boot, optional failed boot, answers "ok <pid>" on any request.
APP = textwrap.dedent(
    """
    import asyncio, os, sys, time
    marker = os.environ.get("FAIL_UNLESS_EXISTS")
    if marker and not os.path.exists(marker):
        print("starting up", file=sys.stderr)
        print(f"fatal: {marker} is missing", file=sys.stderr)
        sys.exit(4)
    time.sleep(float(os.environ.get("BOOT_DELAY_S", "0")))

    async def handle(reader, writer):
        try:
            await reader.readuntil(b"\\r\\n\\r\\n")
            body = f"ok {os.getpid()}".encode()
            head = b"HTTP/1.1 200 OK\\r\\nConnection: close\\r\\nContent-Length: %d\\r\\n\\r\\n" % len(body)
            writer.write(head + body)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    async def main():
        server = await asyncio.start_server(handle, "127.0.0.1", int(os.environ["PORT"]))
        await server.serve_forever()

    asyncio.run(main())
    """
)


class Changes:
    """Something relevant happened: wake the test's bounded waits (no polling, no fixed sleeps)."""

    def __init__(self) -> None:
        self.event = asyncio.Event()

    def notify(self) -> None:
        self.event.set()

    async def until(self, predicate: Callable[[], bool], timeout_s: float = WAIT_S) -> None:
        async with asyncio.timeout(timeout_s):
            while not predicate():
                self.event.clear()
                await self.event.wait()


class CountingBackend(LocalBackend):
    """The real local backend, counting calls; ``scale_down_gate`` (when set) holds scale-downs
    in progress until the test opens it, to make races deterministic."""

    def __init__(self, settings: Settings, changes: Changes) -> None:
        super().__init__(settings)
        self.changes = changes
        self.calls: Counter[str] = Counter()
        self.scale_down_gate: asyncio.Event | None = None
        self.scale_down_started = asyncio.Event()
        self.fail_next_scale_up: Exception | None = None

    async def scale_up(self, name: str) -> None:
        self.calls["up"] += 1
        if self.fail_next_scale_up is not None:
            exc, self.fail_next_scale_up = self.fail_next_scale_up, None
            raise exc
        await super().scale_up(name)

    async def scale_down(self, name: str, last_activity_wall_s: float | None = None) -> bool:
        self.calls["down"] += 1
        self.scale_down_started.set()
        if self.scale_down_gate is not None:
            await self.scale_down_gate.wait()
        try:
            return await super().scale_down(name)
        finally:
            self.changes.notify()


class Recorder:
    """A LifecycleObserver that records every call."""

    def __init__(self, log: list[tuple[str, Any]], changes: Changes) -> None:
        self.log = log
        self.changes = changes

    def _add(self, *item: Any) -> None:
        self.log.append(item)  # type: ignore[arg-type]
        self.changes.notify()

    def wake_started(self, project: str) -> None:
        self._add("wake_started", project)

    def wake_finished(self, project: str, result: str, duration_s: float) -> None:
        self._add("wake_finished", project, result)

    def held_changed(self, delta: int) -> None:
        self._add("held_changed", delta)

    def held_rejected(self, reason: str) -> None:
        self._add("held_rejected", reason)

    def scale_operation(self, direction: str, ok: bool) -> None:
        self._add("scale", direction, ok)

    def project_removed(self, project: str) -> None:
        self._add("removed", project)

    def project_changed(self, project: str) -> None:
        self.changes.notify()  # every event the lifecycle handled wakes the test's waits


class Env:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.changes = Changes()
        self.backend: CountingBackend
        self.lifecycle: Lifecycle
        self.observed: list[tuple[str, Any]] = []

    def write(self, projects: dict[str, dict[str, Any]]) -> Path:
        (self.tmp_path / "app.py").write_text(APP)
        for spec in projects.values():
            spec.setdefault("command", ["{python}", "{here}/app.py"])
        path = self.tmp_path / "projects.yaml"
        path.write_text(yaml.safe_dump({"projects": projects}))
        return path

    async def start(self, projects: dict[str, dict[str, Any]], **settings: Any) -> Lifecycle:
        path = self.write(projects)
        values: dict[str, Any] = {"projects_file": path, "stop_grace_s": 5.0, "reap_interval_s": 3600.0,
                                  "hold_timeout_s": WAIT_S, **settings}
        s = Settings(**values)
        self.backend = CountingBackend(s, self.changes)
        self.lifecycle = Lifecycle(self.backend, s, observer=Recorder(self.observed, self.changes))
        await self.lifecycle.start()
        return self.lifecycle

    def project(self, name: str) -> Project:
        p = self.lifecycle.get(name)
        assert p is not None
        return p

    async def until(self, predicate: Callable[[], bool]) -> None:
        await self.changes.until(predicate)


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    e = Env(tmp_path)
    yield e
    if hasattr(e, "lifecycle"):
        await e.lifecycle.close()


async def http_get(ep: Endpoint) -> str:
    reader, writer = await asyncio.open_connection(ep.host, ep.port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    data = await asyncio.wait_for(reader.read(), WAIT_S)
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    return body.decode()


def count(observed: list[tuple[str, Any]], *item: Any) -> int:
    return sum(1 for o in observed if o == item)


def mode_of(p: Project) -> Mode:
    """``p``'s mode now (a call: what an earlier assert found does not narrow what this one checks)."""
    return p.machine.mode


# --- wake and hold -------------------------------------------------------------------------------


async def test_concurrent_cold_holds_coalesce_into_one_scale_up(env: Env) -> None:
    lc = await env.start({"web": {"env": {"BOOT_DELAY_S": "0.3"}}})
    p = env.project("web")
    assert p.state is State.ASLEEP
    results = await asyncio.gather(*(lc.hold(p) for _ in range(50)))
    assert env.backend.calls["up"] == 1
    assert env.backend.spawn_count["web"] == 1
    assert {r.endpoint for r in results} == set(p.endpoints) and len(p.endpoints) == 1
    assert p.state is State.READY
    assert p.held == 0 and lc.held_total == 0
    assert await http_get(results[0].endpoint) == f"ok {env.backend.pid('web')}"
    assert count(env.observed, "wake_started", "web") == 1
    assert count(env.observed, "wake_finished", "web", "ready") == 1
    assert sum(o[1] for o in env.observed if o[0] == "held_changed") == 0


async def test_hold_on_a_ready_project_does_not_scale_up_again(env: Env) -> None:
    lc = await env.start({"web": {}})
    p = env.project("web")
    first = await lc.hold(p)
    again = await lc.hold(p)
    assert isinstance(again, Held) and again.endpoint == first.endpoint
    assert p.pick() == first.endpoint
    assert env.backend.calls["up"] == 1


async def test_hold_timeout_is_504_naming_the_project(env: Env) -> None:
    lc = await env.start({"slow": {"env": {"BOOT_DELAY_S": "60"}, "hold_timeout_s": 0.3}})
    p = env.project("slow")
    assert p.hold_timeout_s == 0.3
    with pytest.raises(HoldRejected) as err:
        await lc.hold(p)
    assert err.value.status == 504
    assert err.value.reason == "timeout"
    assert err.value.message == "project slow is not ready after 0.3s"
    assert count(env.observed, "held_rejected", "timeout") == 1
    assert p.held == 0 and lc.held_total == 0


async def test_requests_failed_by_the_wake_deadline_get_what_their_own_timeout_gives(env: Env) -> None:
    # The wake's deadline (hold timeout after the wake started) passes before the hold timers of
    # requests that joined the wake later: they get the same 504 as the first, counted once each.
    lc = await env.start({"slow": {"env": {"BOOT_DELAY_S": "60"}, "hold_timeout_s": 0.5}})
    p = env.project("slow")
    first = asyncio.ensure_future(lc.hold(p))
    await env.until(lambda: env.backend.calls["up"] == 1 and ("scale", "up", True) in env.observed)
    later = [asyncio.ensure_future(lc.hold(p)) for _ in range(4)]
    results = await asyncio.wait_for(asyncio.gather(first, *later, return_exceptions=True), WAIT_S)
    assert all(isinstance(r, HoldRejected) for r in results)
    assert [(r.status, r.reason) for r in results if isinstance(r, HoldRejected)] == [(504, "timeout")] * 5
    assert all(isinstance(r, HoldRejected) and r.message == "project slow is not ready after 0.5s" for r in results)
    assert count(env.observed, "held_rejected", "timeout") == 5
    assert [o for o in env.observed if o[0] == "held_rejected"] == [("held_rejected", "timeout")] * 5
    assert count(env.observed, "wake_finished", "slow", "timeout") == 1
    assert p.state is State.FAILED and p.last_error == "no ready endpoint after 0.5s"
    assert p.held == 0 and lc.held_total == 0


async def test_a_hold_timer_and_the_wake_deadline_firing_together_count_once(env: Env) -> None:
    # A request whose own timer and the wake's deadline fire in the same round of the loop (before
    # it resumes): it is answered once, 504, and counted once.
    lc = await env.start({"slow": {"env": {"BOOT_DELAY_S": "60"}}})
    p = env.project("slow")
    request = asyncio.ensure_future(lc.hold(p))
    await env.until(lambda: len(p._waiters) == 1 and ("scale", "up", True) in env.observed)
    (fut,) = p._waiters
    _expire(fut)  # its own hold timer...
    lc._deadline(p, p.machine.wake)  # ...and the wake's deadline, due together
    with pytest.raises(HoldRejected) as err:
        await asyncio.wait_for(request, WAIT_S)
    assert (err.value.status, err.value.reason) == (504, "timeout")
    assert [o for o in env.observed if o[0] == "held_rejected"] == [("held_rejected", "timeout")]
    assert count(env.observed, "wake_finished", "slow", "timeout") == 1


async def test_overflow_is_503_with_retry_after(env: Env) -> None:
    lc = await env.start({"slow": {"env": {"BOOT_DELAY_S": "60"}}, "other": {"env": {"BOOT_DELAY_S": "60"}}},
                         max_held_per_project=3, max_held_total=4, hold_timeout_s=30.0)
    slow, other = env.project("slow"), env.project("other")
    held = [asyncio.ensure_future(lc.hold(slow)) for _ in range(3)]
    await env.until(lambda: slow.held == 3)
    with pytest.raises(HoldRejected) as err:
        await lc.hold(slow)
    assert (err.value.status, err.value.reason) == (503, "overflow")
    assert "project slow" in err.value.message and "this project" in err.value.message
    assert err.value.retry_after_s == 3  # hold timeout / 10
    # The gateway-wide limit: one more fits in total, then "the gateway" is full.
    held.append(asyncio.ensure_future(lc.hold(other)))
    await env.until(lambda: other.held == 1)
    with pytest.raises(HoldRejected) as err:
        await lc.hold(other)
    assert err.value.status == 503 and "the gateway" in err.value.message
    assert lc.held_total == 4
    for fut in held:
        fut.cancel()
    await asyncio.gather(*held, return_exceptions=True)
    assert slow.held == 0 and other.held == 0 and lc.held_total == 0  # cancelled holds release their slot
    assert count(env.observed, "held_rejected", "overflow") == 2


async def test_failed_boot_is_502_keeping_stderr_private_and_the_next_request_retries(env: Env) -> None:
    marker = env.tmp_path / "config-present"
    lc = await env.start({"web": {"env": {"FAIL_UNLESS_EXISTS": str(marker)}}})
    p = env.project("web")
    holds = await asyncio.gather(*(lc.hold(p) for _ in range(5)), return_exceptions=True)
    assert all(isinstance(h, HoldRejected) for h in holds)
    err = holds[0]
    assert isinstance(err, HoldRejected)
    assert (err.status, err.reason) == (502, "failed")
    # The public message says what happened; the stderr tail is private (logs, admin API).
    assert err.message == "project web failed to start"
    assert all(isinstance(h, HoldRejected) and "fatal" not in h.message for h in holds)
    assert err.detail is not None and err.detail.startswith("process exited with code 4 before it was ready")
    assert f"fatal: {marker} is missing" in err.detail
    assert p.state is State.FAILED and f"fatal: {marker} is missing" in (p.last_error or "")
    assert env.backend.calls["up"] == 1
    assert count(env.observed, "wake_finished", "web", "failed") == 1
    assert count(env.observed, "held_rejected", "failed") == 5  # once per request
    marker.write_text("")  # fixed: the next request wakes it again
    held = await lc.hold(p)
    assert p.state is State.READY and p.last_error is None
    assert await http_get(held.endpoint) == f"ok {env.backend.pid('web')}"
    assert env.backend.spawn_count["web"] == 2


async def test_scale_up_error_fails_the_wake_and_the_next_request_retries(env: Env) -> None:
    lc = await env.start({"web": {}})
    p = env.project("web")
    env.backend.fail_next_scale_up = BackendError("quota exceeded for project web")
    with pytest.raises(HoldRejected) as err:
        await lc.hold(p)
    assert (err.value.status, err.value.reason) == (502, "failed")
    assert err.value.message == "project web failed to start"
    assert "scale-up failed: quota exceeded for project web" in (err.value.detail or "")
    assert "quota exceeded" in (p.last_error or "")
    assert ("scale", "up", False) in env.observed
    assert count(env.observed, "held_rejected", "failed") == 1
    await lc.hold(p)
    assert p.state is State.READY


async def test_unexpected_scale_up_exception_does_not_wedge_the_project(env: Env) -> None:
    lc = await env.start({"web": {}})
    p = env.project("web")
    env.backend.fail_next_scale_up = OSError("too many open files")
    with pytest.raises(HoldRejected) as err:
        await lc.hold(p)
    assert err.value.status == 502
    assert "too many open files" not in err.value.message and "too many open files" in (err.value.detail or "")
    await lc.hold(p)  # not stuck in "waking"
    assert p.state is State.READY


async def test_an_unreachable_backend_is_503_unavailable_counted_once(env: Env) -> None:
    lc = await env.start({"web": {}})
    p = env.project("web")
    env.backend.fail_next_scale_up = BackendUnavailable("the API server at 10.0.0.1:6443 is unreachable")
    holds = await asyncio.gather(*(lc.hold(p) for _ in range(3)), return_exceptions=True)
    assert [(h.status, h.reason, h.retry_after_s) for h in holds if isinstance(h, HoldRejected)] == [
        (503, "unavailable", 5)] * 3
    for h in holds:
        assert isinstance(h, HoldRejected) and h.message == "project web cannot be started now; retry shortly"
        assert "10.0.0.1" in (h.detail or "")
    assert count(env.observed, "held_rejected", "unavailable") == 3


async def test_wait_ready(env: Env) -> None:
    lc = await env.start({"web": {}, "slow": {"env": {"BOOT_DELAY_S": "60"}}})
    assert await lc.wait_ready(env.project("web"), timeout_s=WAIT_S)
    assert env.project("web").state is State.READY
    assert not await lc.wait_ready(env.project("slow"), timeout_s=0.2)
    assert env.project("slow").state is State.WAKING


async def test_wait_ready_answers_when_the_wake_ends_even_with_no_request_held(env: Env) -> None:
    # An admin activate?wait=true is no held request: it is still told at once, not at its timeout.
    marker = env.tmp_path / "config-present"
    lc = await env.start({"web": {"env": {"FAIL_UNLESS_EXISTS": str(marker)}}, "ok": {"env": {"BOOT_DELAY_S": "0.3"}}})
    assert not await asyncio.wait_for(lc.wait_ready(env.project("web"), timeout_s=3600), WAIT_S)
    assert env.project("web").state is State.FAILED
    assert await asyncio.wait_for(lc.wait_ready(env.project("ok"), timeout_s=3600), WAIT_S)
    assert env.project("ok").held == 0


# --- activity and sleep --------------------------------------------------------------------------


async def test_idle_project_is_reaped_by_the_reaper(env: Env) -> None:
    lc = await env.start({"web": {"idle_timeout_s": 0.2}}, reap_interval_s=0.05)
    p = env.project("web")
    held = await lc.hold(p)
    pid = env.backend.pid("web")
    with lc.activity(p):
        assert await http_get(held.endpoint) == f"ok {pid}"
    await env.until(lambda: p.state is State.ASLEEP and env.backend.calls["down"] == 1 and p.machine.op is Op.NONE)
    assert env.backend.pid("web") is None
    assert p.endpoints == ()
    assert ("scale", "down", True) in env.observed
    # And it wakes again on the next request.
    await lc.hold(p)
    assert env.backend.spawn_count["web"] == 2


async def test_reap_once_skips_projects_with_requests_in_flight(env: Env) -> None:
    lc = await env.start({"web": {"idle_timeout_s": 1.0}})
    p = env.project("web")
    await lc.hold(p)
    lc.begin(p)
    p.last_activity_wall = time.time() - 100  # long ago, but a request is still open
    assert lc.reap_once() == []
    lc.end(p)
    assert lc.reap_once() == []  # the request just ended: that is activity
    p.last_activity_wall = time.time() - 100
    assert lc.reap_once() == ["web"]
    await env.until(lambda: env.backend.calls["down"] == 1 and p.machine.op is Op.NONE)
    assert p.state is State.ASLEEP


async def test_a_request_starting_after_the_reaper_decided_is_not_cut_off(env: Env) -> None:
    lc = await env.start({"web": {"idle_timeout_s": 1.0}})
    p = env.project("web")
    await lc.hold(p)
    p.last_activity_wall = time.time() - 100
    assert lc.reap_once() == ["web"]
    # Before the scale-down task runs, a request picks the endpoint and starts.
    assert p.pick() is not None
    lc.begin(p)
    await asyncio.sleep(0)  # let the reaper's task run
    await env.until(lambda: p.machine.op is Op.NONE)
    assert env.backend.calls["down"] == 0
    assert p.state is State.READY and env.backend.pid("web") is not None
    lc.end(p)


async def test_a_request_racing_a_scale_down_is_held_and_served(env: Env) -> None:
    lc = await env.start({"web": {}})
    p = env.project("web")
    await lc.hold(p)
    old_pid = env.backend.pid("web")
    env.backend.scale_down_gate = asyncio.Event()
    sleeping = asyncio.ensure_future(lc.sleep(p, reason="test"))
    await asyncio.wait_for(env.backend.scale_down_started.wait(), WAIT_S)
    assert p.state is State.ASLEEP and p.pick() is None
    request = asyncio.ensure_future(lc.hold(p))  # arrives while the scale-down is in progress
    await env.until(lambda: p.held == 1)
    env.backend.scale_down_gate.set()
    assert await asyncio.wait_for(sleeping, WAIT_S) is True
    held = await asyncio.wait_for(request, WAIT_S)
    new_pid = env.backend.pid("web")
    assert new_pid is not None and new_pid != old_pid
    assert await http_get(held.endpoint) == f"ok {new_pid}"
    assert env.backend.spawn_count["web"] == 2


async def test_sleep_during_a_wake_rewakes_for_the_waiting_requests(env: Env) -> None:
    lc = await env.start({"slow": {"env": {"BOOT_DELAY_S": "0.5"}}})
    p = env.project("slow")
    request = asyncio.ensure_future(lc.hold(p))
    await env.until(lambda: env.backend.pid("slow") is not None)
    assert p.state is State.WAKING
    assert await lc.sleep(p, reason="test") is True
    held = await asyncio.wait_for(request, WAIT_S)
    assert await http_get(held.endpoint) == f"ok {env.backend.pid('slow')}"
    assert env.backend.spawn_count["slow"] == 2


async def test_endpoints_that_vanish_put_the_project_to_sleep(env: Env) -> None:
    lc = await env.start({"web": {}})
    p = env.project("web")
    await lc.hold(p)
    pid = env.backend.pid("web")
    assert pid is not None
    os.killpg(pid, signal.SIGKILL)  # the process dies on its own
    await env.until(lambda: p.state is State.ASLEEP)
    assert p.endpoints == () and p.pick() is None
    held = await lc.hold(p)  # the next request wakes a new one
    assert await http_get(held.endpoint) == f"ok {env.backend.pid('web')}"
    assert env.backend.spawn_count["web"] == 2


async def test_endpoint_failed_drops_it_and_the_next_request_finds_it_again(env: Env) -> None:
    lc = await env.start({"web": {}})
    p = env.project("web")
    first = await lc.hold(p)
    lc.endpoint_failed(p, first.endpoint, "connection refused")
    assert p.endpoints == () and p.state is State.ASLEEP and p.pick() is None
    lc.endpoint_failed(p, first.endpoint, "again")  # unknown endpoints are ignored
    again = await lc.hold(p)
    assert again.endpoint == first.endpoint
    assert env.backend.spawn_count["web"] == 1


async def test_project_with_a_dropped_endpoint_is_still_reaped(env: Env) -> None:
    lc = await env.start({"web": {"idle_timeout_s": 1.0}})
    p = env.project("web")
    first = await lc.hold(p)
    lc.endpoint_failed(p, first.endpoint, "connection refused")
    p.last_activity_wall = time.time() - 100
    assert lc.reap_once() == ["web"]  # its process still runs: it must not be left running forever
    await env.until(lambda: env.backend.calls["down"] == 1 and p.machine.op is Op.NONE)
    assert env.backend.pid("web") is None


async def test_a_wake_that_never_became_ready_is_still_reaped(env: Env) -> None:
    lc = await env.start({"slow": {"env": {"BOOT_DELAY_S": "60"}, "hold_timeout_s": 0.2, "idle_timeout_s": 1.0}})
    p = env.project("slow")
    with pytest.raises(HoldRejected):
        await lc.hold(p)
    await env.until(lambda: p.state is State.FAILED)
    assert p.last_activity_wall is not None  # the wake itself counts as activity
    assert lc.reap_once() == []
    p.last_activity_wall = time.time() - 100
    assert lc.reap_once() == ["slow"]
    await env.until(lambda: env.backend.calls["down"] == 1 and p.machine.op is Op.NONE)
    assert env.backend.pid("slow") is None and p.state is State.ASLEEP


async def test_a_failure_of_a_project_woken_elsewhere_is_shown_and_reaped(env: Env) -> None:
    # Another gateway replica (or a person) scaled it up; this replica never woke it, but the backend
    # reports that it cannot become ready. It must not stay "asleep" and be ignored by the reaper.
    lc = await env.start({"web": {"idle_timeout_s": 1.0}})
    p = env.project("web")
    lc.wake_failed("web", "CrashLoopBackOff: back-off restarting failed container")
    assert p.state is State.FAILED
    assert p.last_error == "CrashLoopBackOff: back-off restarting failed container"
    assert lc.reap_once() == []  # it gets a full idle period first
    p.last_activity_wall = time.time() - 100
    assert lc.reap_once() == ["web"]
    await env.until(lambda: env.backend.calls["down"] == 1 and p.machine.op is Op.NONE)
    assert p.state is State.ASLEEP


# --- modes (the coming Project resource's spec.mode) ---------------------------------------------


async def test_a_suspended_project_is_never_woken_and_a_running_one_never_reaped(env: Env) -> None:
    lc = await env.start({"web": {"idle_timeout_s": 1.0}})
    p = env.project("web")
    lc.set_mode(p, Mode.SUSPENDED)
    with pytest.raises(HoldRejected) as err:
        await lc.hold(p)
    assert (err.value.status, err.value.reason, err.value.message) == (503, "suspended", "project web is suspended")
    assert not lc.would_wake(p) and env.backend.calls["up"] == 0
    assert count(env.observed, "held_rejected", "suspended") == 1
    lc.set_mode(p, Mode.RUNNING)  # kept up: woken at once, without a request
    await env.until(lambda: p.state is State.READY)
    assert env.backend.calls["up"] == 1
    p.last_activity_wall = time.time() - 100
    assert lc.reap_once() == [] and not await lc.sleep(p)
    lc.set_mode(p, Mode.AUTO)
    assert lc.reap_once() == ["web"]
    await env.until(lambda: env.backend.calls["down"] == 1 and p.machine.op is Op.NONE)
    assert p.state is State.ASLEEP and env.backend.pid("web") is None


async def test_suspending_a_running_project_answers_its_held_requests_and_scales_it_down(env: Env) -> None:
    lc = await env.start({"web": {}, "slow": {"env": {"BOOT_DELAY_S": "60"}}})
    web, slow = env.project("web"), env.project("slow")
    await lc.hold(web)
    request = asyncio.ensure_future(lc.hold(slow))
    await env.until(lambda: slow.held == 1 and env.backend.pid("slow") is not None)
    lc.set_mode(slow, Mode.SUSPENDED)
    lc.set_mode(web, Mode.SUSPENDED)
    with pytest.raises(HoldRejected) as err:
        await asyncio.wait_for(request, WAIT_S)
    assert (err.value.status, err.value.reason) == (503, "suspended")
    await env.until(lambda: env.backend.calls["down"] == 2 and web.machine.op is slow.machine.op is Op.NONE)
    assert env.backend.pid("web") is None and env.backend.pid("slow") is None
    assert web.state is State.ASLEEP and slow.state is State.ASLEEP and web.pick() is None


# --- modes the backend reports (the Deployment's wakegate.io/mode, the projects file's mode) -------


async def test_a_project_reported_running_is_woken_kept_up_and_sleeps_once_auto_and_idle(env: Env) -> None:
    lc = await env.start({"web": {"mode": "Running", "idle_timeout_s": 30}, "tick": {"idle_timeout_s": 0.2}},
                         reap_interval_s=0.05)
    web, tick = env.project("web"), env.project("tick")
    # Woken without a request.
    await env.until(lambda: web.state is State.READY)
    assert web.machine.mode is Mode.RUNNING and tick.machine.mode is Mode.AUTO
    assert env.backend.calls["up"] == 1 and count(env.observed, "wake_started", "web") == 1
    pid = env.backend.pid("web")
    assert pid is not None and await http_get(web.endpoints[0]) == f"ok {pid}"
    # Idle by any measure, but Running: the reaper passes it by. Proof that it ran: "tick", idle
    # for less long than "web", is put to sleep by it, twice.
    web.last_activity_wall = time.time() - 100
    def tick_slept(times: int) -> Callable[[], bool]:
        return lambda: env.backend.calls["down"] == times and tick.state is State.ASLEEP and tick.machine.op is Op.NONE

    for times in (1, 2):
        await lc.hold(tick)
        await env.until(tick_slept(times))
        assert env.backend.pid("tick") is None
    assert web.state is State.READY and env.backend.pid("web") == pid and env.backend.spawn_count["web"] == 1
    # Back to Auto (the mode is gone from the file): the idle timeout counts from the last activity
    # as usual, so a project used a moment ago is not put to sleep by the change itself ...
    with lc.activity(web):
        assert await http_get(web.endpoints[0]) == f"ok {pid}"
    env.write({"web": {"idle_timeout_s": 30}, "tick": {"idle_timeout_s": 0.2}})
    await env.backend.reload()
    assert mode_of(web) is Mode.AUTO
    assert lc.reap_once() == [] and web.state is State.READY and env.backend.pid("web") == pid
    # ... and once it is idle, the reaper puts it to sleep.
    web.last_activity_wall = time.time() - 100
    await env.until(lambda: env.backend.calls["down"] == 3 and web.state is State.ASLEEP and web.machine.op is Op.NONE)
    assert env.backend.pid("web") is None and env.backend.calls["up"] == 3  # web once, tick twice


async def test_a_project_reported_suspended_answers_503_never_starts_and_wakes_once_auto(env: Env) -> None:
    lc = await env.start({"off": {"mode": "Suspended"}})
    p = env.project("off")
    assert p.machine.mode is Mode.SUSPENDED
    with pytest.raises(HoldRejected) as err:
        await lc.hold(p)
    assert (err.value.status, err.value.reason, err.value.message) == (503, "suspended", "project off is suspended")
    lc.wake(p)  # an admin activate does not start it either
    assert not lc.would_wake(p) and p.state is State.ASLEEP
    assert env.backend.calls["up"] == 0 and env.backend.spawn_count["off"] == 0
    assert count(env.observed, "held_rejected", "suspended") == 1
    env.write({"off": {"mode": "Auto"}})  # resumed: the next request wakes it
    await env.backend.reload()
    assert mode_of(p) is Mode.AUTO and p.state is State.ASLEEP  # the change itself wakes nothing
    held = await lc.hold(p)
    assert await http_get(held.endpoint) == f"ok {env.backend.pid('off')}"
    assert env.backend.calls["up"] == 1 and env.backend.spawn_count["off"] == 1


async def test_suspending_through_the_backend_answers_held_requests_and_stops_the_project(env: Env) -> None:
    lc = await env.start({"slow": {"env": {"BOOT_DELAY_S": "60"}}})
    p = env.project("slow")
    request = asyncio.ensure_future(lc.hold(p))
    await env.until(lambda: p.held == 1 and env.backend.pid("slow") is not None)
    env.write({"slow": {"env": {"BOOT_DELAY_S": "60"}, "mode": "Suspended"}})
    await env.backend.reload()
    with pytest.raises(HoldRejected) as err:
        await asyncio.wait_for(request, WAIT_S)
    assert (err.value.status, err.value.reason) == (503, "suspended")
    await env.until(lambda: env.backend.calls["down"] == 1 and p.machine.op is Op.NONE)
    assert env.backend.pid("slow") is None and p.state is State.ASLEEP
    with pytest.raises(HoldRejected) as err:
        await lc.hold(p)
    assert err.value.reason == "suspended"
    assert env.backend.calls["up"] == 1 and env.backend.spawn_count["slow"] == 1


async def test_a_mode_reported_twice_is_applied_once(env: Env) -> None:
    lc = await env.start({"web": {}})
    p = env.project("web")
    env.write({"web": {"mode": "Running"}, "new": {"mode": "Running"}})  # web changes; "new" appears Running
    await env.backend.reload()
    new = env.project("new")
    await env.until(lambda: p.state is State.READY and new.state is State.READY)
    assert env.backend.calls["up"] == 2
    # An operator puts it to sleep (it stays Running as far as the backend is concerned) ...
    assert await lc.sleep(p, reason="admin") is True
    assert p.state is State.ASLEEP and env.backend.pid("web") is None
    # ... and the backend reports the project again, changed, with the same mode: no second wake.
    env.write({"web": {"mode": "Running", "idle_timeout_s": 7}, "new": {"mode": "Running"}})
    await env.backend.reload()
    env.write({"web": {"mode": "Running", "idle_timeout_s": 7}, "new": {"mode": "Running"}})
    await env.backend.reload()  # and again, unchanged
    assert p.idle_timeout_s == 7 and p.machine.mode is Mode.RUNNING
    assert p.state is State.ASLEEP and p.machine.op is Op.NONE
    assert env.backend.calls["up"] == 2 and env.backend.spawn_count["web"] == 1
    assert count(env.observed, "wake_started", "web") == 1
    # A real change is applied: Auto, then Running again wakes it.
    env.write({"web": {"idle_timeout_s": 7}, "new": {"mode": "Running"}})
    await env.backend.reload()
    assert mode_of(p) is Mode.AUTO and p.state is State.ASLEEP
    env.write({"web": {"mode": "Running", "idle_timeout_s": 7}, "new": {"mode": "Running"}})
    await env.backend.reload()
    await env.until(lambda: p.state is State.READY)
    assert count(env.observed, "wake_started", "web") == 2 and env.backend.spawn_count["web"] == 2


# --- the project table ---------------------------------------------------------------------------


async def test_removing_a_project_fails_its_held_requests(env: Env) -> None:
    lc = await env.start({"web": {}, "slow": {"env": {"BOOT_DELAY_S": "60"}}})
    p = env.project("slow")
    request = asyncio.ensure_future(lc.hold(p))
    await env.until(lambda: p.held == 1 and env.backend.pid("slow") is not None)
    pid = env.backend.pid("slow")
    env.write({"web": {}})
    await env.backend.reload()
    with pytest.raises(HoldRejected) as err:
        await asyncio.wait_for(request, WAIT_S)
    assert err.value.status == 404 and err.value.reason == "removed"
    assert err.value.message == "project slow was removed"
    assert count(env.observed, "held_rejected", "removed") == 1
    assert lc.get("slow") is None and lc.get("web") is not None
    assert ("removed", "slow") in env.observed
    assert pid is not None and env.backend.pid("slow") is None


async def test_added_projects_and_changed_settings_apply(env: Env) -> None:
    lc = await env.start({"web": {}})
    assert env.project("web").idle_timeout_s == lc.settings.idle_timeout_s
    env.write({"web": {"idle_timeout_s": 7, "strategy": "page"}, "api": {}})
    await env.backend.reload()
    assert env.project("web").idle_timeout_s == 7
    assert env.project("web").strategy == "page"
    assert env.project("api").state is State.ASLEEP
    assert await lc.resolve("api") is env.project("api")


async def test_unknown_names_are_remembered(env: Env) -> None:
    lc = await env.start({"web": {}})
    assert await lc.resolve("nope") is None
    assert "nope" in lc._unknown
    env.write({"web": {}, "nope": {}})
    await env.backend.reload()
    assert await lc.resolve("nope") is not None  # a new project is not hidden by the cache


# --- shutdown ------------------------------------------------------------------------------------


async def test_draining_rejects_new_holds_and_close_fails_held_ones(env: Env) -> None:
    lc = await env.start({"slow": {"env": {"BOOT_DELAY_S": "60"}}, "web": {}})
    p = env.project("slow")
    request = asyncio.ensure_future(lc.hold(p))
    await env.until(lambda: p.held == 1 and env.backend.pid("slow") is not None)
    pid = env.backend.pid("slow")
    lc.draining = True
    with pytest.raises(HoldRejected) as err:
        await lc.hold(env.project("web"))
    assert (err.value.status, err.value.reason, err.value.retry_after_s) == (503, "draining", 1)
    assert lc.reap_once() == []
    await lc.close()
    with pytest.raises(HoldRejected) as err:
        await asyncio.wait_for(request, WAIT_S)
    assert (err.value.status, err.value.reason) == (503, "draining")
    assert pid is not None and env.backend.pid("slow") is None
    assert count(env.observed, "held_rejected", "draining") == 2  # the new request and the held one
