"""The admin listener: project API for the platform, ``/metrics`` for Prometheus, health probes.

Served on ``--admin-listen`` only; the public listener never routes here. When
``--admin-token-file`` is set, every ``/api/`` call needs ``Authorization: Bearer <token>``;
``/metrics``, ``/healthz`` and ``/readyz`` stay open for probes and scrapers. Without a token the
admin API listens on loopback only: by default on ``127.0.0.1:9090`` (``0.0.0.0:9090`` with a token),
and an explicit non-loopback ``--admin-listen`` without a token is refused at start-up.

Every error answer is JSON ``{"error": "..."}`` with a message a person can act on.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from gateway import logs
from gateway.activity import seconds_until_idle
from gateway.backends.base import Backend
from gateway.backends.k8s.peers import Activity, encode_activity
from gateway.config import HostPort, Settings, read_token
from gateway.contract import parse_duration
from gateway.lifecycle import Lifecycle, Mode, Project, State
from gateway.metrics import CONTENT_TYPE, Metrics
from gateway.routing import is_project_name

API_PREFIX = "/api/"
# Projects serialised between two yields to the event loop when listing thousands.
LIST_SLICE = 500


@dataclass
class DrainFlag:
    """Set by the service when SIGTERM starts the drain: ``/readyz`` answers 503 from then on."""

    draining: bool = False


DRAIN = web.AppKey("wakegate_drain", DrainFlag)


def mark_draining(app: web.Application) -> None:
    """Report not-ready on ``/readyz`` from now on (called by the service on SIGTERM)."""
    app[DRAIN].draining = True


def rfc3339(wall_s: float | None) -> str | None:
    """``2026-01-02T03:04:05.678Z`` for a wall-clock time, ``None`` for none."""
    if wall_s is None:
        return None
    return datetime.fromtimestamp(wall_s, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def project_json(settings: Settings, p: Project, now_wall_s: float | None = None) -> dict[str, Any]:
    """The admin API's view of one project."""
    now = time.time() if now_wall_s is None else now_wall_s
    asleep = p.state is State.ASLEEP
    mode = p.machine.mode
    return {
        "name": p.name,
        "state": p.state.value,
        "mode": mode.value,  # Auto | Running (kept up) | Suspended (never woken)
        "url": settings.url_for(p.name),
        "ready_endpoints": len(p.endpoints),
        "endpoints": [str(ep) for ep in p.endpoints],
        "in_flight": p.in_flight,
        "held": p.held,
        "last_activity": rfc3339(p.last_activity_wall),
        "idle_timeout_s": p.idle_timeout_s,
        "hold_timeout_s": p.hold_timeout_s,
        # Seconds until the reaper may put it to sleep if nothing happens (null: asleep, kept
        # running, or unknown).
        "sleeps_in_s": None if asleep or mode is Mode.RUNNING or p.in_flight or p.held else _round(
            seconds_until_idle(now_wall_s=now, idle_timeout_s=p.idle_timeout_s,
                               last_activity_wall_s=p.last_activity_wall)),
        "strategy": p.strategy,
        "location": p.info.location,
        "last_error": p.last_error,
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _error(status: int, message: str, headers: dict[str, str] | None = None, **extra: Any) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status, headers=headers)


def _flag(request: web.Request, name: str) -> bool:
    raw = request.query.get(name)
    if raw is None:
        return False
    lowered = raw.strip().lower()
    if lowered in {"", "1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise web.HTTPBadRequest(text=json.dumps({"error": f"?{name}= must be true or false, got {raw[:50]!r}"}),
                             content_type="application/json")


def _bad_request(message: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(text=json.dumps({"error": message}), content_type="application/json")


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class AdminApi:
    """Route handlers; one instance per admin app."""

    def __init__(self, settings: Settings, lifecycle: Lifecycle, metrics: Metrics, backend: Backend) -> None:
        self.settings = settings
        self.lifecycle = lifecycle
        self.metrics = metrics
        self.backend = backend
        self.token = read_token(settings.admin_token_file) if settings.admin_token_file is not None else None

    # --- middleware ------------------------------------------------------------------------------

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Request id (``X-Request-Id`` kept or made, bound for the logs and echoed), bearer-token
        check on ``/api/``, and every error answered as JSON."""
        rid = logs.request_id(request.headers.get("X-Request-Id"))
        logs.request_id_var.set(rid)  # each request runs in its own task: the binding stays there
        response = await self._handle(request, handler)
        response.headers["X-Request-Id"] = rid
        return response

    async def _handle(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self.token is not None and request.path.startswith(API_PREFIX):
            denied = self._check_token(request.headers.get("Authorization"))
            if denied is not None:
                return _error(401, denied, headers={"WWW-Authenticate": 'Bearer realm="wakegate"'})
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            if exc.content_type == "application/json":  # already one of ours
                return web.Response(status=exc.status, text=exc.text, content_type="application/json")
            message = {
                404: f"no such admin endpoint: {request.path}; see /api/v1/projects",
                405: f"{request.method} is not allowed on {request.path}",
            }.get(exc.status, exc.reason)
            return _error(exc.status, message, headers=_allow_header(exc))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logs.event("admin_error", logging.ERROR, path=request.path, error=f"{type(exc).__name__}: {exc}")
            return _error(500, f"internal error ({type(exc).__name__}); see the gateway's logs")

    def _check_token(self, header: str | None) -> str | None:
        assert self.token is not None
        if header is None:
            return "missing Authorization header; send 'Authorization: Bearer <token>'"
        scheme, _, credentials = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not credentials.strip():
            return "the Authorization header must be 'Bearer <token>'"
        if not hmac.compare_digest(credentials.strip().encode(), self.token):
            return "invalid bearer token"
        return None

    # --- probes and metrics ----------------------------------------------------------------------

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        if self.lifecycle.draining or request.app[DRAIN].draining:
            return web.json_response({"ready": False, "reason": "draining: the gateway is shutting down"}, status=503)
        if not self.backend.ready:
            return web.json_response({"ready": False, "reason": "the backend is not reachable or has not loaded "
                                      "the project list yet"}, status=503)
        return web.json_response({"ready": True, "projects": len(self.lifecycle.projects)})

    async def metrics_page(self, request: web.Request) -> web.Response:
        body = await self.metrics.render()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    # --- projects --------------------------------------------------------------------------------

    async def _project(self, request: web.Request) -> Project:
        name = request.match_info["name"]
        p = self.lifecycle.get(name)
        if p is None and is_project_name(name):
            p = await self.lifecycle.resolve(name)
        if p is None:
            known = "" if is_project_name(name) else " (not a valid project name: lowercase letters, digits, '-')"
            raise web.HTTPNotFound(text=json.dumps({"error": f"unknown project {name[:100]!r}{known}"}),
                                   content_type="application/json")
        return p

    async def list_projects(self, request: web.Request) -> web.Response:
        state = request.query.get("state")
        if state is not None and state not in {s.value for s in State}:
            raise _bad_request(f"?state= must be one of asleep, waking, ready, failed; got {state[:50]!r}")
        projects = sorted(self.lifecycle.projects.values(), key=lambda p: p.name)
        out: list[dict[str, Any]] = []
        now = time.time()
        for i, p in enumerate(projects):
            if i and i % LIST_SLICE == 0:
                await asyncio.sleep(0)  # thousands of projects: do not stall the data path
            if state is None or p.state.value == state:
                out.append(project_json(self.settings, p, now))
        return web.json_response({"projects": out, "count": len(out)})

    async def get_project(self, request: web.Request) -> web.Response:
        return web.json_response(project_json(self.settings, await self._project(request)))

    async def activate(self, request: web.Request) -> web.Response:
        p = await self._project(request)
        wait = _flag(request, "wait")
        timeout_s = p.hold_timeout_s
        if "timeout" in request.query:
            raw = request.query["timeout"]
            try:
                timeout_s = parse_duration(raw[:50])
            except ValueError as exc:
                raise _bad_request(f"?timeout=: {exc}") from None
        if self.lifecycle.draining:
            return _error(503, "the gateway is shutting down; activate through another gateway replica or retry",
                          headers={"Retry-After": "1"})
        self.lifecycle.wake(p)
        logs.event("admin_activate", project=p.name, wait=wait)
        if not wait:
            return web.json_response(project_json(self.settings, p), status=200 if p.pick() else 202)
        if await self.lifecycle.wait_ready(p, timeout_s):
            return web.json_response(project_json(self.settings, p))
        body = project_json(self.settings, p)
        if p.state is State.FAILED:
            body["error"] = f"project {p.name} failed to start: {p.last_error}"
            return web.json_response(body, status=502)
        body["error"] = (f"project {p.name} is not ready after {timeout_s:g}s (state {p.state.value}); "
                         "it may still become ready: poll GET /api/v1/projects/" + p.name)
        return web.json_response(body, status=504)

    async def activity(self, request: web.Request) -> web.Response:
        """This replica's activity map for the reaper Lease holder (:mod:`gateway.backends.k8s.peers`):
        projects with requests open (in flight or held), or with activity at or after ``?since=``
        (wall-clock seconds); ``?project=`` narrows it to one project."""
        raw = request.query.get("since", "0")
        try:
            since = float(raw)
        except ValueError:
            since = float("nan")
        if since != since:
            raise _bad_request(f"?since= must be wall-clock seconds, got {raw[:50]!r}")
        name = request.query.get("project")
        if name is not None:
            p = self.lifecycle.get(name)
            candidates = [p] if p is not None else []
        else:
            candidates = list(self.lifecycle.projects.values())
        found = {
            p.name: Activity(p.last_activity_wall, p.in_flight + p.held)
            for p in candidates
            if p.in_flight or p.held or (p.last_activity_wall is not None and p.last_activity_wall >= since)
        }
        return web.json_response(encode_activity(self.settings.replica_id or "", time.time(), found, since))

    async def deactivate(self, request: web.Request) -> web.Response:
        p = await self._project(request)
        force = _flag(request, "force")
        busy = p.in_flight + p.held
        if busy and not force:
            return _error(409, f"project {p.name} has {p.in_flight} request(s) in flight and {p.held} held; "
                          "retry when they finish or add ?force=true to cut them off",
                          project=project_json(self.settings, p))
        logs.event("admin_deactivate", project=p.name, force=force, in_flight=p.in_flight)
        if not await self.lifecycle.sleep(p, reason="admin"):
            return _error(502, f"project {p.name} was not scaled down: the backend refused (another gateway "
                          "replica woke it) or failed (see the gateway's scale_error log)",
                          project=project_json(self.settings, p))
        return web.json_response(project_json(self.settings, p))


def _allow_header(exc: web.HTTPException) -> dict[str, str] | None:
    allow = exc.headers.get("Allow")
    return {"Allow": allow} if allow else None


def create_admin_app(settings: Settings, lifecycle: Lifecycle, metrics: Metrics, backend: Backend) -> web.Application:
    """The admin aiohttp app. Raises :class:`ConfigError` for an unreadable or empty token file."""
    if metrics.lifecycle is None:
        metrics.attach(lifecycle)
    api = AdminApi(settings, lifecycle, metrics, backend)
    app = web.Application(middlewares=[api.middleware])
    app[DRAIN] = DrainFlag()
    app.router.add_get("/healthz", api.healthz)
    app.router.add_get("/readyz", api.readyz)
    app.router.add_get("/metrics", api.metrics_page)
    app.router.add_get("/api/v1/projects", api.list_projects)
    app.router.add_get("/api/v1/projects/{name}", api.get_project)
    app.router.add_post("/api/v1/projects/{name}/activate", api.activate)
    app.router.add_post("/api/v1/projects/{name}/deactivate", api.deactivate)
    app.router.add_get("/api/v1/activity", api.activity)
    return app


async def start_admin(app: web.Application, listen: HostPort) -> tuple[web.AppRunner, int]:
    """Serve ``app`` on ``listen``; returns the runner (``await runner.cleanup()`` to stop) and the
    bound port (useful with port 0)."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, listen.host, listen.port, reuse_address=True)
    await site.start()
    port = listen.port
    for address in runner.addresses:
        port = int(address[1])
        break
    return runner, port
