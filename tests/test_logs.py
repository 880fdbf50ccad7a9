"""Structured logs: one JSON line per event with project and request id, never secrets."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway import logs
from gateway.config import Settings
from gateway.lifecycle import HoldRejected, Lifecycle
from tests.ops_support import GatewayProcess, ScriptedBackend, write_projects


class Captured:
    def __init__(self, stream: io.StringIO) -> None:
        self.stream = stream

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stream.getvalue().splitlines() if line.strip()]

    def events(self, name: str) -> list[dict[str, Any]]:
        return [line for line in self.lines() if line["event"] == name]


@pytest.fixture
def captured() -> Iterator[Captured]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter())
    logger = logging.getLogger(logs.LOGGER_NAME)
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield Captured(stream)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


def test_one_json_line_per_event(captured: Captured) -> None:
    logs.event("wake", project="alpha", request_id="r-1", previous_state="asleep", empty=None)
    lines = captured.lines()
    assert len(lines) == 1
    line = lines[0]
    assert line["event"] == "wake" and line["project"] == "alpha" and line["request_id"] == "r-1"
    assert line["level"] == "info"
    assert line["ts"].endswith("Z") and "T" in line["ts"]
    assert "empty" not in line


def test_fields_that_could_carry_credentials_are_dropped(captured: Captured) -> None:
    logs.event("request_failed", logging.WARNING, project="alpha", authorization="Bearer SEKRIT-A",
               cookie="session=SEKRIT-C", set_cookie="x=SEKRIT-S", admin_token="SEKRIT-T", password="SEKRIT-P",
               client_secret="SEKRIT-X", body="SEKRIT-B", status=502)
    text = captured.stream.getvalue()
    assert "SEKRIT" not in text
    line = captured.lines()[0]
    assert line["status"] == 502 and line["level"] == "warning"


def test_text_format() -> None:
    record = logging.makeLogRecord({"msg": "sleep", "levelname": "INFO", "event": "sleep", "project": "alpha",
                                    "cookie": "SEKRIT"})
    assert logs.TextFormatter().format(record) == "INFO    sleep project=alpha"


def test_request_id_is_kept_when_safe_and_made_otherwise() -> None:
    assert logs.request_id("abc-123") == "abc-123"
    assert logs.request_id(b"trace:4bf92f3577b34da6/00f067aa0ba902b7") == "trace:4bf92f3577b34da6/00f067aa0ba902b7"
    for bad in (None, "", "has space", "x" * 129, "new\nline", "quote\"s", "ünï", b"\xff\xfe"):
        made = logs.request_id(bad)
        assert made != bad and logs.request_id(made) == made
    ids = {logs.new_request_id() for _ in range(1000)}
    assert len(ids) == 1000


def test_safe_path_drops_the_query() -> None:
    assert logs.safe_path("/a/b?token=SEKRIT") == "/a/b"
    assert logs.safe_path(b"/x#frag") == "/x"
    long = logs.safe_path("/" + "a" * 500)
    assert len(long) == logs.MAX_PATH_CHARS + 1 and long.endswith("…")


async def test_request_id_bound_in_a_task_reaches_the_lifecycle_events(captured: Captured) -> None:
    """A held request binds its id; the wake it starts, and its outcome, are logged with it."""
    settings = Settings(domain="test.example", hold_timeout_s=5.0, reap_interval_s=3600.0)
    backend = ScriptedBackend(["alpha", "broken"], fail=["broken"])
    lifecycle = Lifecycle(backend, settings)
    await lifecycle.start()
    try:
        async def held(name: str, rid: str) -> None:
            logs.request_id_var.set(rid)
            await lifecycle.hold(lifecycle.projects[name])

        await asyncio.wait_for(held("alpha", "req-alpha"), 10)
        with pytest.raises(HoldRejected):
            await asyncio.wait_for(held("broken", "req-broken"), 10)
        assert await lifecycle.sleep(lifecycle.projects["alpha"], reason="admin")
    finally:
        await lifecycle.close()
    (wake_alpha,) = [e for e in captured.events("wake") if e["project"] == "alpha"]
    assert wake_alpha["request_id"] == "req-alpha"
    (ready,) = captured.events("ready")
    assert ready["project"] == "alpha" and ready["request_id"] == "req-alpha"
    (scale_error,) = captured.events("scale_error")
    assert scale_error["project"] == "broken" and scale_error["request_id"] == "req-broken"
    (failed,) = captured.events("wake_failed")
    assert failed["project"] == "broken" and failed["request_id"] == "req-broken"
    (sleep,) = captured.events("sleep")
    assert sleep["project"] == "alpha" and sleep["reason"] == "admin"
    assert "request_id" not in sleep  # not started by a request
    assert logs.request_id_var.get() is None  # the tasks' bindings did not leak out


# --- end to end: the real gateway's stderr ---------------------------------------------------------------

SECRETS = ("SECRET-AUTH-VALUE", "SECRET-COOKIE-VALUE", "SECRET-QUERY-VALUE", "SECRET-BODY-VALUE")


async def test_gateway_logs_wake_sleep_and_failed_requests_without_secrets(tmp_path: Path) -> None:
    projects = write_projects(tmp_path, {
        "alpha": {},
        "broken": {"command": ["{python}", "-c", "import sys; sys.exit(3)"]},
    })
    gw = await GatewayProcess.start(projects, "--access-log", "true")
    secret_headers = {"Authorization": "Bearer SECRET-AUTH-VALUE", "Cookie": "session=SECRET-COOKIE-VALUE"}
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
            headers = {"Host": "alpha.localhost", "X-Request-Id": "req-wake-1", **secret_headers}
            async with http.post(gw.url + "/x?token=SECRET-QUERY-VALUE", headers=headers,
                                 data=b"SECRET-BODY-VALUE") as resp:
                assert resp.status == 501  # the stdlib app has no POST; what matters is the wake
            headers = {"Host": "broken.localhost", "X-Request-Id": "req-fail-1", **secret_headers}
            async with http.get(gw.url + "/", headers=headers) as resp:
                assert resp.status == 502
                assert "broken failed to start" in await resp.text()
            async with http.get(gw.url + "/", headers={"Host": "broken.localhost"}) as resp:
                assert resp.status == 502
                generated = resp.headers.get("X-Request-Id")  # may or may not be echoed to the client
            async with http.post(gw.admin_url + "/api/v1/projects/alpha/deactivate",
                                 headers={"X-Request-Id": "req-admin-1", **secret_headers}) as resp:
                assert resp.status == 200
                assert resp.headers["X-Request-Id"] == "req-admin-1"
            await gw.wait_event(lambda e: e.get("event") == "sleep")
    finally:
        await gw.kill()

    def one(event: str, **match: Any) -> dict[str, Any]:
        found = [e for e in gw.events(event) if all(e.get(k) == v for k, v in match.items())]
        assert len(found) == 1, (event, match, found)
        return found[0]

    wake = one("wake", project="alpha")
    assert wake["request_id"] == "req-wake-1" and wake["level"] == "info"
    one("ready", project="alpha")
    sleep = one("sleep", project="alpha")
    assert sleep["request_id"] == "req-admin-1" and sleep["reason"] == "admin"
    failed = one("request_failed", project="broken", request_id="req-fail-1")
    assert failed["status"] == 502 and failed["level"] == "warning"
    assert "exit" in failed["error"]
    # Each request to the broken project woke it again (a failed project is retried), and failed.
    wakes = [e["request_id"] for e in gw.events("wake") if e["project"] == "broken"]
    assert len(wakes) == 2 and wakes[0] == "req-fail-1"
    assert len([e for e in gw.events("wake_failed") if e["project"] == "broken"]) == 2
    # The request without an X-Request-Id got a generated one.
    other = [e for e in gw.events("request_failed") if e.get("project") == "broken" and e is not failed]
    assert len(other) == 1 and other[0]["request_id"] not in (None, "", "req-fail-1")
    if generated is not None:
        assert other[0]["request_id"] == generated
    # Access lines (opted in here) carry the path without its query.
    access = one("access", project="alpha")
    assert access["path"] == "/x" and access["request_id"] == "req-wake-1"
    # Every line is JSON, and no secret a client sent appears anywhere.
    text = gw.text()
    assert all(line.startswith("{") for line in gw.raw if line.strip()), text[-2000:]
    for secret in SECRETS:
        assert secret not in text
