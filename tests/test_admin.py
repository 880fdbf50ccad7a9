"""Admin API over a real socket, against a real Lifecycle and a scripted backend of real servers."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from gateway.admin import create_admin_app, mark_draining, rfc3339, start_admin
from gateway.backends.base import ProjectInfo, ProjectSettings
from gateway.config import ConfigError, HostPort, Settings, read_token
from gateway.lifecycle import Lifecycle
from gateway.metrics import Metrics
from tests.ops_support import GatewayProcess, ScriptedBackend, write_projects

Client = TestClient[aiohttp.web.Request, aiohttp.web.Application]
MakeClient = Callable[..., Awaitable[Client]]


def make_settings(**overrides: Any) -> Settings:
    base: dict[str, Any] = {
        "domain": "test.example", "hold_timeout_s": 5.0, "idle_timeout_s": 60.0, "reap_interval_s": 3600.0,
    }
    base.update(overrides)
    return Settings(**base)


class Gateway:
    def __init__(self, backend: ScriptedBackend, settings: Settings) -> None:
        self.backend = backend
        self.settings = settings
        self.metrics = Metrics()
        self.lifecycle = Lifecycle(backend, settings, self.metrics)
        self.app = create_admin_app(settings, self.lifecycle, self.metrics, backend)


@pytest.fixture
async def gw() -> AsyncIterator[Gateway]:
    backend = ScriptedBackend(
        {"alpha": ProjectSettings(), "beta": ProjectSettings(idle_timeout_s=30, hold_timeout_s=7),
         "stuck": ProjectSettings(), "broken": ProjectSettings()},
        never_ready=["stuck"], fail=["broken"],
    )
    g = Gateway(backend, make_settings())
    await g.lifecycle.start()
    yield g
    await g.lifecycle.close()


@pytest.fixture
async def client(gw: Gateway, aiohttp_client: MakeClient) -> Client:
    return await aiohttp_client(gw.app)


async def json_of(resp: aiohttp.ClientResponse) -> Any:
    assert resp.content_type == "application/json", await resp.text()
    return await resp.json()


async def test_list_projects_shows_every_field(client: Client) -> None:
    resp = await client.get("/api/v1/projects")
    assert resp.status == 200
    body = await json_of(resp)
    assert body["count"] == 4
    assert [p["name"] for p in body["projects"]] == ["alpha", "beta", "broken", "stuck"]
    beta = body["projects"][1]
    assert beta == {
        "name": "beta", "state": "asleep", "mode": "Auto", "url": "https://beta.test.example/", "ready_endpoints": 0,
        "endpoints": [], "in_flight": 0, "held": 0, "last_activity": None, "idle_timeout_s": 30,
        "hold_timeout_s": 7, "sleeps_in_s": None, "strategy": "auto", "location": "scripted beta",
        "last_error": None,
    }


async def test_projects_show_the_mode_their_backend_reports(aiohttp_client: MakeClient) -> None:
    backend = ScriptedBackend({"auto": ProjectSettings(), "kept": ProjectSettings(mode="Running"),
                               "off": ProjectSettings(mode="Suspended")})
    g = Gateway(backend, make_settings())
    await g.lifecycle.start()
    try:
        client = await aiohttp_client(g.app)
        await asyncio.wait_for(backend.scaled_up.wait(), 5)
        assert backend.scale_ups == ["kept"]  # Running: woken without a request
        assert await g.lifecycle.wait_ready(g.lifecycle.projects["kept"], 5)
        body = await json_of(await client.get("/api/v1/projects"))
        shown = {p["name"]: (p["mode"], p["state"], p["sleeps_in_s"]) for p in body["projects"]}
        # A project kept running never sleeps: no countdown to a sleep.
        assert shown == {"auto": ("Auto", "asleep", None), "kept": ("Running", "ready", None),
                         "off": ("Suspended", "asleep", None)}
        # A project the lifecycle first hears of through a lookup runs in its mode too.
        backend.table["late"] = ProjectInfo("late", ProjectSettings(mode="Running"))
        late = await json_of(await client.get("/api/v1/projects/late"))
        assert (late["mode"], late["state"]) == ("Running", "waking")
        assert backend.scale_ups == ["kept", "late"]
    finally:
        await g.lifecycle.close()


async def test_list_filters_by_state_and_rejects_unknown_states(gw: Gateway, client: Client) -> None:
    assert await gw.lifecycle.wait_ready(gw.lifecycle.projects["alpha"], 5)
    body = await json_of(await client.get("/api/v1/projects?state=ready"))
    assert [p["name"] for p in body["projects"]] == ["alpha"]
    resp = await client.get("/api/v1/projects?state=sleepy")
    assert resp.status == 400
    assert "asleep, waking, ready, failed" in (await json_of(resp))["error"]


async def test_unknown_and_invalid_projects_are_404_json(client: Client) -> None:
    for path in ("/api/v1/projects/nope", "/api/v1/projects/nope/activate"):
        resp = await (client.get(path) if path.count("/") == 4 else client.post(path))
        assert resp.status == 404
        assert (await json_of(resp))["error"] == "unknown project 'nope'"
    resp = await client.get("/api/v1/projects/Bad_Name")
    assert resp.status == 404
    assert "not a valid project name" in (await json_of(resp))["error"]


async def test_unknown_route_and_wrong_method_are_json(client: Client) -> None:
    resp = await client.get("/api/v2/things")
    assert resp.status == 404
    assert "no such admin endpoint: /api/v2/things" in (await json_of(resp))["error"]
    resp = await client.get("/api/v1/projects/alpha/activate")
    assert resp.status == 405
    assert resp.headers["Allow"] == "POST"
    assert "GET is not allowed" in (await json_of(resp))["error"]


async def test_project_added_after_start_is_found_through_the_backend(gw: Gateway, client: Client) -> None:
    gw.backend.table["late"] = ProjectInfo("late")  # the backend knows it; the lifecycle was not told
    assert "late" not in gw.lifecycle.projects
    resp = await client.get("/api/v1/projects/late")
    assert resp.status == 200
    assert (await json_of(resp))["url"] == "https://late.test.example/"


async def test_activate_without_wait_starts_a_wake(gw: Gateway, client: Client) -> None:
    resp = await client.post("/api/v1/projects/alpha/activate")
    assert resp.status == 202
    assert (await json_of(resp))["state"] == "waking"
    assert gw.backend.scale_ups == ["alpha"]
    # Once ready, activate answers 200 and does not scale up again.
    assert await gw.lifecycle.wait_ready(gw.lifecycle.projects["alpha"], 5)
    resp = await client.post("/api/v1/projects/alpha/activate")
    assert resp.status == 200
    assert (await json_of(resp))["state"] == "ready"
    assert gw.backend.scale_ups == ["alpha"]


async def test_activate_wait_answers_when_ready(gw: Gateway, client: Client) -> None:
    gw.backend.ready_delay_s = 0.2
    resp = await client.post("/api/v1/projects/alpha/activate?wait=true")
    assert resp.status == 200
    body = await json_of(resp)
    assert body["state"] == "ready"
    assert body["ready_endpoints"] == 1
    # last_activity is RFC 3339 UTC, and the endpoint is a live server of the project.
    assert body["last_activity"].endswith("Z")
    datetime.fromisoformat(body["last_activity"])
    assert 0 < body["sleeps_in_s"] <= 60
    async with aiohttp.ClientSession() as s, s.get(f"http://{body['endpoints'][0]}/x") as r:
        assert await r.text() == "hello from alpha /x"


async def test_activate_wait_times_out_with_504(gw: Gateway, client: Client) -> None:
    resp = await client.post("/api/v1/projects/stuck/activate?wait=1&timeout=0.3")
    assert resp.status == 504
    body = await json_of(resp)
    assert body["state"] == "waking"
    assert "not ready after 0.3s" in body["error"]
    assert body["name"] == "stuck"


async def test_activate_wait_reports_a_failed_wake(client: Client) -> None:
    resp = await client.post("/api/v1/projects/broken/activate?wait=true")
    assert resp.status == 502
    body = await json_of(resp)
    assert body["state"] == "failed"
    assert "scripted failure" in body["last_error"]
    assert "broken failed to start" in body["error"]


async def test_bad_query_values_are_400(client: Client) -> None:
    resp = await client.post("/api/v1/projects/alpha/activate?wait=maybe")
    assert resp.status == 400
    assert "?wait= must be true or false" in (await json_of(resp))["error"]
    for bad in ("-1", "abc", "inf", "5x"):
        resp = await client.post(f"/api/v1/projects/alpha/activate?wait=true&timeout={bad}")
        assert resp.status == 400
        error = (await json_of(resp))["error"]
        assert error.startswith("?timeout=: expected a ") and f"got '{bad}'" in error


async def test_activate_while_draining_is_503(gw: Gateway, client: Client) -> None:
    gw.lifecycle.draining = True
    resp = await client.post("/api/v1/projects/alpha/activate")
    assert resp.status == 503
    assert "shutting down" in (await json_of(resp))["error"]
    assert gw.backend.scale_ups == []


async def test_deactivate_refuses_in_flight_unless_forced(gw: Gateway, client: Client) -> None:
    p = gw.lifecycle.projects["alpha"]
    assert await gw.lifecycle.wait_ready(p, 5)
    gw.lifecycle.begin(p)
    resp = await client.post("/api/v1/projects/alpha/deactivate")
    assert resp.status == 409
    body = await json_of(resp)
    assert "1 request(s) in flight" in body["error"] and "?force=true" in body["error"]
    assert body["project"]["state"] == "ready"
    assert gw.backend.scale_downs == []

    resp = await client.post("/api/v1/projects/alpha/deactivate?force=true")
    assert resp.status == 200
    assert (await json_of(resp))["state"] == "asleep"
    assert gw.backend.scale_downs == ["alpha"]
    assert gw.backend.runners == {}
    gw.lifecycle.end(p)


async def test_deactivate_idle_project(gw: Gateway, client: Client) -> None:
    p = gw.lifecycle.projects["beta"]
    assert await gw.lifecycle.wait_ready(p, 5)
    resp = await client.post("/api/v1/projects/beta/deactivate")
    assert resp.status == 200
    body = await json_of(resp)
    assert body["state"] == "asleep" and body["ready_endpoints"] == 0
    assert gw.backend.scale_downs == ["beta"]


async def test_healthz_and_readyz(gw: Gateway, client: Client) -> None:
    assert (await client.get("/healthz")).status == 200
    resp = await client.get("/readyz")
    assert resp.status == 200
    assert (await json_of(resp)) == {"ready": True, "projects": 4}
    gw.backend.is_ready = False
    resp = await client.get("/readyz")
    assert resp.status == 503
    assert "backend" in (await json_of(resp))["reason"]
    gw.backend.is_ready = True
    mark_draining(gw.app)
    resp = await client.get("/readyz")
    assert resp.status == 503
    assert "draining" in (await json_of(resp))["reason"]
    assert (await client.get("/healthz")).status == 200


async def test_metrics_endpoint_serves_prometheus_text(client: Client) -> None:
    resp = await client.get("/metrics")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    text = await resp.text()
    assert 'wakegate_projects{state="asleep"} 4.0' in text


# --- token ---------------------------------------------------------------------------------------


@pytest.fixture
async def token_client(tmp_path: Path, aiohttp_client: MakeClient) -> AsyncIterator[Client]:
    token_file = tmp_path / "token"
    token_file.write_text("  s3cret-token\n")
    backend = ScriptedBackend(["alpha"])
    g = Gateway(backend, make_settings(admin_token_file=token_file))
    await g.lifecycle.start()
    yield await aiohttp_client(g.app)
    await g.lifecycle.close()


async def test_token_is_required_on_api(token_client: Client) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic czNjcmV0LXRva2Vu"},
                    {"Authorization": "Bearer"}, {"Authorization": "Bearer s3cret-token-and-more"}):
        resp = await token_client.get("/api/v1/projects", headers=headers)
        assert resp.status == 401, headers
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
        assert (await json_of(resp))["error"]
    # Unknown /api/ paths are also behind the token: nothing about the API leaks.
    assert (await token_client.get("/api/v1/projects/nope")).status == 401
    resp = await token_client.get("/api/v1/projects", headers={"Authorization": "Bearer s3cret-token"})
    assert resp.status == 200
    resp = await token_client.post("/api/v1/projects/alpha/activate?wait=true",
                                   headers={"Authorization": "bearer  s3cret-token "})
    assert resp.status == 200


async def test_probes_and_metrics_stay_open_with_a_token(token_client: Client) -> None:
    for path in ("/healthz", "/readyz", "/metrics"):
        assert (await token_client.get(path)).status == 200, path


def test_token_file_must_exist_and_hold_one_token(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        read_token(tmp_path / "missing")
    (tmp_path / "empty").write_text(" \n")
    with pytest.raises(ConfigError, match="is empty"):
        read_token(tmp_path / "empty")
    (tmp_path / "two").write_text("a b\n")
    with pytest.raises(ConfigError, match="more than one word"):
        read_token(tmp_path / "two")
    (tmp_path / "ok").write_text("tok\n")
    assert read_token(tmp_path / "ok") == b"tok"


async def test_empty_token_file_fails_app_creation(tmp_path: Path) -> None:
    (tmp_path / "empty").write_text("")
    settings = make_settings(admin_token_file=tmp_path / "empty")
    backend = ScriptedBackend(["alpha"])
    metrics = Metrics()
    with pytest.raises(ConfigError, match="--admin-token-file"):
        create_admin_app(settings, Lifecycle(backend, settings, metrics), metrics, backend)


def test_rfc3339() -> None:
    assert rfc3339(None) is None
    assert rfc3339(0.5) == "1970-01-01T00:00:00.500Z"


async def test_listing_thousands_of_projects(aiohttp_client: MakeClient) -> None:
    backend = ScriptedBackend([f"p{i:04d}" for i in range(1200)])
    g = Gateway(backend, make_settings())
    await g.lifecycle.start()
    try:
        client = await aiohttp_client(g.app)
        body = await json_of(await client.get("/api/v1/projects"))
        assert body["count"] == 1200
        assert body["projects"][-1]["name"] == "p1199"
    finally:
        await g.lifecycle.close()
    await asyncio.sleep(0)


# --- the command-line client -----------------------------------------------------------------------


async def run_cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """``python -m gateway project ARGS`` as a real process (the loop keeps serving meanwhile)."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("WAKEGATE_")}
    environ.update(env or {})
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "project", *args, env=environ,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[Gateway, str, Path]]:
    token_file = tmp_path / "token"
    token_file.write_text("cli-token\n")
    g = Gateway(ScriptedBackend(["alpha", "stuck"], never_ready=["stuck"]), make_settings(admin_token_file=token_file))
    await g.lifecycle.start()
    runner, port = await start_admin(g.app, HostPort("127.0.0.1", 0))
    try:
        yield g, f"http://127.0.0.1:{port}", token_file
    finally:
        await runner.cleanup()
        await g.lifecycle.close()


async def test_cli_activate_and_deactivate(served: tuple[Gateway, str, Path]) -> None:
    g, url, token_file = served
    code, out, err = await run_cli("activate", "alpha", "--wait", "--admin-url", url,
                                   "--admin-token-file", str(token_file))
    assert (code, err) == (0, "")
    assert out.strip() == "alpha: ready, 1 endpoint, https://alpha.test.example/"
    assert g.lifecycle.projects["alpha"].pick() is not None

    p = g.lifecycle.projects["alpha"]
    g.lifecycle.begin(p)
    env = {"WAKEGATE_ADMIN_URL": url, "WAKEGATE_ADMIN_TOKEN_FILE": str(token_file)}
    code, out, err = await run_cli("deactivate", "alpha", env=env)
    assert code == 1 and out == ""
    assert "1 request(s) in flight" in err and "[HTTP 409]" in err
    code, out, err = await run_cli("deactivate", "alpha", "--force", "--json", env=env)
    assert code == 0, err
    assert json.loads(out)["state"] == "asleep"
    g.lifecycle.end(p)
    assert g.backend.scale_downs == ["alpha"]


async def test_cli_errors(served: tuple[Gateway, str, Path], tmp_path: Path) -> None:
    _, url, token_file = served
    env = {"WAKEGATE_ADMIN_URL": url, "WAKEGATE_ADMIN_TOKEN_FILE": str(token_file)}
    code, _, err = await run_cli("activate", "nope", env=env)
    assert code == 1 and "unknown project 'nope' [HTTP 404]" in err
    code, out, err = await run_cli("activate", "stuck", "--wait", "--timeout", "0.3", "--json", env=env)
    assert code == 1 and "not ready after 0.3s" in err
    assert json.loads(out)["state"] == "waking"  # --json prints the body of a refusal too
    (tmp_path / "wrong").write_text("nope\n")
    code, _, err = await run_cli("activate", "alpha", "--admin-url", url, "--admin-token-file", str(tmp_path / "wrong"))
    assert code == 1 and "invalid bearer token" in err and "--admin-token-file" in err
    code, _, err = await run_cli("activate", "alpha", "--admin-url", url, "--admin-token-file", str(tmp_path / "x"))
    assert code == 2 and "cannot read" in err
    code, _, err = await run_cli("activate", "alpha", "--wait", "--timeout", "-3", env=env)
    assert code == 2 and "positive number of seconds" in err
    code, _, err = await run_cli("activate", "alpha", "--admin-url", "ftp://x", "--admin-token-file", str(token_file))
    assert code == 2 and "--admin-url" in err


async def test_cli_unreachable_admin_api() -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code, out, err = await run_cli("activate", "alpha", "--admin-url", f"http://127.0.0.1:{port}")
    assert code == 1 and out == ""
    assert err.count("\n") == 1
    assert f"cannot reach the admin API at http://127.0.0.1:{port}" in err


async def test_admin_api_is_not_reachable_through_the_public_listener(tmp_path: Path) -> None:
    gw = await GatewayProcess.start(write_projects(tmp_path, {"alpha": {}}))
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
            for path in ("/api/v1/projects", "/metrics", "/readyz"):
                # Without a project host: refused by routing, nothing woken, no admin answer.
                async with http.get(gw.url + path) as resp:
                    assert resp.status == 404
                    assert "projects" not in await resp.text()
                # With a project host: the project answers, not the admin API.
                async with http.get(gw.url + path, headers={"Host": "alpha.localhost"}) as resp:
                    assert resp.status == 200
                    assert f"real content of alpha</h1><p>path {path}" in await resp.text()
            async with http.get(gw.admin_url + "/api/v1/projects") as resp:
                assert (await resp.json())["count"] == 1
    finally:
        await gw.kill()
