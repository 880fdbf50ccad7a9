"""What anonymous clients are told when their project cannot be served (issue 13, items 7 and 8).

- A hold timeout is one answer, 504, counted once per request as ``timeout`` (never a 502 "failed"
  because the wake's own deadline passed first).
- Public answers (bodies, the waiting page, the status JSON) say that the project failed to start,
  is not ready, or cannot be reached, and carry the request id; the details (stderr, backend
  reasons, endpoint addresses) go to the logs and the admin API only.

Everything runs through the real gateway (:class:`gateway.service.Service`: the Metrics object
the server and lifecycle use, the admin API) over real sockets; the failing project of item 8 is a
real child process of the local backend.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from gateway import logs
from gateway.backends.base import Backend, Endpoint, ProjectSettings
from gateway.config import HostPort, Settings
from gateway.metrics import Metrics
from gateway.service import Service
from gateway.waiting_page import STATUS_PATH
from tests.support import (
    DOMAIN,
    STEP_TIMEOUT_S,
    RawClient,
    RecordingUpstream,
    TableBackend,
    Upstream,
    Watch,
    build_request,
)

SECRET_LINE = "boom: missing DATABASE_URL (tried postgres://app:hunter2@db.internal:5432/app)"
BROWSER = {"Accept": "text/html,application/xhtml+xml;q=0.9,*/*;q=0.8", "Sec-Fetch-Mode": "navigate"}


class Tee:
    """Forwards every observer call to the gateway's real :class:`Metrics` and to a :class:`Watch`
    (which lets the test await conditions instead of sleeping)."""

    def __init__(self, metrics: Metrics, watch: Watch) -> None:
        self.metrics = metrics
        self.watch = watch

    def wake_started(self, project: str) -> None:
        self.metrics.wake_started(project)
        self.watch.wake_started(project)

    def wake_finished(self, project: str, result: str, duration_s: float) -> None:
        self.metrics.wake_finished(project, result, duration_s)
        self.watch.wake_finished(project, result, duration_s)

    def held_changed(self, delta: int) -> None:
        self.metrics.held_changed(delta)
        self.watch.held_changed(delta)

    def held_rejected(self, reason: str) -> None:
        self.metrics.held_rejected(reason)
        self.watch.held_rejected(reason)

    def scale_operation(self, direction: str, ok: bool) -> None:
        self.metrics.scale_operation(direction, ok)
        self.watch.scale_operation(direction, ok)

    def project_removed(self, project: str) -> None:
        self.metrics.project_removed(project)
        self.watch.project_removed(project)

    def project_changed(self, project: str) -> None:
        self.watch.project_changed(project)


@dataclasses.dataclass
class Gateway:
    service: Service
    watch: Watch

    @property
    def port(self) -> int:
        port = self.service.port
        assert port is not None
        return port

    def client(self) -> RawClient:
        return RawClient(self.port)

    async def admin(self, path: str) -> Any:
        url = f"http://127.0.0.1:{self.service.admin_port}{path}"
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=STEP_TIMEOUT_S)) as http, \
                http.get(url) as resp:
            assert resp.status == 200
            return await resp.json()

    async def samples(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        text = (await self.service.metrics.render()).decode()
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}


def sample(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


@pytest.fixture
async def gateway() -> AsyncIterator[Callable[..., Any]]:
    started: list[Service] = []

    async def start(project_backend: Backend | None, **overrides: Any) -> Gateway:
        values: dict[str, Any] = {
            "domain": DOMAIN, "listen": HostPort("127.0.0.1", 0), "admin_listen": HostPort("127.0.0.1", 0),
            "reap_interval_s": 3600.0, "hold_timeout_s": STEP_TIMEOUT_S, "stop_grace_s": 5.0,
            "drain_timeout_s": 5.0, **overrides,
        }
        service = Service(Settings(**values), backend=project_backend)
        watch = Watch()
        service.lifecycle.observer = Tee(service.metrics, watch)
        await service.start()
        started.append(service)
        return Gateway(service, watch)

    yield start
    for service in started:
        await service.stop()


def local_settings(tmp_path: Path, projects: dict[str, Any]) -> dict[str, Any]:
    path = tmp_path / "projects.yaml"
    path.write_text(yaml.safe_dump({"projects": projects}))
    return {"backend": "local", "projects_file": path}  # Service builds the LocalBackend


# --- item 7: one answer for a hold timeout ----------------------------------------------------------


async def test_every_request_held_past_the_timeout_gets_504_counted_once_each(gateway: Any) -> None:
    backend = TableBackend({"never": RecordingUpstream()}, {"never": ProjectSettings(hold_timeout_s=0.5)})
    backend.ready_gate["never"] = asyncio.Event()  # scaled up, never reports an endpoint
    gw: Gateway = await gateway(backend)
    watch = gw.watch
    clients = [gw.client() for _ in range(5)]
    try:
        for c in clients:
            await c.connect()
        # The first request starts the wake; the others join it once it runs, so the wake's own
        # deadline passes before their hold timers do.
        await clients[0].send(build_request("GET", "/", "never", {"X-Request-Id": "held-0"}))
        await watch.until(lambda: watch.held == 1 and backend.scale_ups["never"] == 1)
        for i, c in enumerate(clients[1:], 1):
            await c.send(build_request("GET", "/", "never", {"X-Request-Id": f"held-{i}"}))
        await watch.until(lambda: watch.held == 5)
        responses = await asyncio.gather(*(c.response() for c in clients))
    finally:
        for c in clients:
            c.close()
    assert [r.status for r in responses] == [504] * 5
    for i, r in enumerate(responses):
        assert r.text == f"project never is not ready after 0.5s\nrequest id: held-{i}\n"
    assert backend.scale_ups["never"] == 1
    assert sorted(watch.rejected) == ["timeout"] * 5
    s = await gw.samples()
    assert sample(s, "wakegate_held_rejected_total", reason="timeout") == 5
    assert sample(s, "wakegate_held_rejected_total", reason="failed") == 0
    assert sample(s, "wakegate_wakeups_total", result="timeout") == 1  # the wake itself: once
    assert sample(s, "wakegate_wakeups_total", result="failed") == 0
    assert sample(s, "wakegate_requests_total", code_class="5xx") == 5


# --- item 8: private details stay private -----------------------------------------------------------


def _assert_private(text: str) -> None:
    for needle in ("boom", "DATABASE_URL", "hunter2", "db.internal", "stderr", "exited", "code 1"):
        assert needle not in text, (needle, text)


async def test_a_failed_start_is_told_without_its_stderr_but_with_the_request_id(
        gateway: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=logs.LOGGER_NAME)
    script = f"import sys; print({SECRET_LINE!r}, file=sys.stderr, flush=True); sys.exit(1)"
    settings = local_settings(tmp_path, {"broken": {"command": [sys.executable, "-c", script]}})
    gw: Gateway = await gateway(None, **settings)  # the local backend the settings name
    async with gw.client() as c:
        r = await c.request("GET", "/", "broken", {"X-Request-Id": "quote-me-42"})
        assert r.status == 502
        assert r.text == "project broken failed to start\nrequest id: quote-me-42\n"
        # Without a client id, the gateway's own id is shown, and it is the one in the logs.
        r = await c.request("GET", "/", "broken")
        assert r.status == 502
        _assert_private(r.text)
        assert r.text.startswith("project broken failed to start\nrequest id: ")
        generated = r.text.rsplit("request id: ", 1)[1].strip()
        assert generated
        # The status JSON and the final error page (a browser right after the failed wake) say no more.
        r = await c.request("GET", STATUS_PATH, "broken")
        assert r.status == 200 and json.loads(r.body) == {"project": "broken", "state": "failed", "ready": False}
        r = await c.request("GET", "/", "broken", {**BROWSER, "X-Request-Id": "page-7"})
        assert r.status == 502 and (r.header("Content-Type") or "").startswith("text/html")
        _assert_private(r.text)
        assert "broken</span> could not start" in r.text and "page-7" in r.text
    # The detail is kept for operators: the admin API and the structured logs (with the request id).
    await gw.watch.until(lambda: gw.service.lifecycle.projects["broken"].last_error is not None)
    project = await gw.admin("/api/v1/projects/broken")
    assert SECRET_LINE in project["last_error"]
    failed = [r for r in caplog.records if getattr(r, "event", None) == "request_failed"]
    by_id = {getattr(r, "request_id", None): r for r in failed}
    for rid in ("quote-me-42", generated):
        record = by_id[rid]
        assert getattr(record, "project", None) == "broken" and getattr(record, "status", None) == 502
        assert getattr(record, "error", "").startswith("project broken failed to start: process exited with code 1")
        assert SECRET_LINE in getattr(record, "error", "")


class RefusingUpstream(Upstream):
    """A project whose address refuses connections (a fresh closed port at every start)."""

    def __init__(self) -> None:
        self.ports: list[int] = []

    async def start(self) -> Endpoint:
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        server.close()
        await server.wait_closed()
        self.ports.append(port)
        self.endpoint = Endpoint("127.0.0.1", port)
        return self.endpoint

    async def stop(self) -> None:
        pass


async def test_a_connect_failure_names_neither_the_endpoint_nor_the_os_error(
        gateway: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=logs.LOGGER_NAME)
    up = RefusingUpstream()
    gw: Gateway = await gateway(TableBackend({"app": up}, running=("app",)))
    async with gw.client() as c:
        r = await c.request("GET", "/", "app", {"X-Request-Id": "conn-1"})
    assert r.status == 502
    assert r.text == "project app cannot be reached: it refused the connection\nrequest id: conn-1\n"
    assert up.ports and not any(str(port) in r.text for port in up.ports)
    # The endpoint and the OS error are in the log, under the request id.
    errors = [rec for rec in caplog.records if getattr(rec, "event", None) == "upstream_error"]
    assert errors and all(getattr(rec, "request_id", None) == "conn-1" for rec in errors)
    assert any(str(up.ports[-1]) in getattr(rec, "endpoint", "") for rec in errors)
    assert all("refused" in getattr(rec, "error", "") for rec in errors)
