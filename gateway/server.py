"""The public listener: route → lifecycle → forward.

Per request: the Host (or ``--route-header``) names a project (400/404 otherwise, never waking
anything); a warm project's request is forwarded at once, without leaving the parser's callback; a
cold one is parked in :meth:`Lifecycle.hold` before its body is read, then forwarded with
``X-Wakegate-Cold-Start``. Browsers may get the waiting page instead; probes and uptime bots
(ignore rules) never wake a project nor count as activity. A refused connection drops the endpoint
and holds again, which is how a request racing a scale-down is still served.

A public request that would start a wake (its project asleep or failed, no wake in progress) takes
a token from the wake rate limits (:mod:`gateway.wake_limit`: in all and per client address);
past either it is answered 429 with ``Retry-After`` and wakes nothing. Joining a wake in progress,
or reaching a ready project, is never limited; nor are admin activations.

Public answers say what happened (failed to start, not ready, cannot be reached) and carry the
request id; why (stderr lines, backend errors, endpoint addresses) goes to the logs and the admin
API only.

What the server knows of a request (its project, what it counted, where it forwarded it, the task
holding it) is its own :class:`Request`, kept in ``Exchange.handling``; the exchange itself holds
only what parsing and the transport gave.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import time
from collections.abc import Coroutine
from typing import Any, Final, Protocol

from gateway import logs, waiting_page
from gateway.backends.base import Endpoint
from gateway.config import Settings
from gateway.forward.client import Exchange, Listener
from gateway.ignore import IgnoreRules
from gateway.lifecycle import HoldRejected, Lifecycle, Project, State
from gateway.routing import RouteError, Router
from gateway.tasks import Tasks
from gateway.wake_limit import SCOPE_CLIENT, WakeLimiter

# Forwarding attempts per request (refused endpoints, stale keep-alive connections) before 502.
MAX_ATTEMPTS: Final = 5
_UA_CACHE_SIZE: Final = 2048
_ROUTE_CACHE_SIZE: Final = 4096

_JSON: Final = b"application/json"
# What a client sees when forwarding failed, by reason: nothing of the OS error or the endpoint.
_UPSTREAM_PUBLIC = {
    "refused": "cannot be reached: it refused the connection",
    "timeout": "cannot be reached: connecting to it timed out",
    "reset": "cannot be reached: it closed the connection before responding",
    "protocol": "sent an invalid response",
}


class RequestObserver(Protocol):
    """Data-path hooks for metrics. Every method must be cheap and must not raise."""

    def request_finished(self, project: str | None, status: int, duration_s: float, page: bool = False) -> None:
        """A response is complete or failed (status 499: the client went away before it);
        ``duration_s``: the time to its head; ``page``: it was the waiting page."""

    def stream_finished(self, kind: str, duration_s: float) -> None:
        """A tunnel ("tunnel") or a response streamed over several reads ("stream") ended
        ``duration_s`` after its head."""

    def upstream_error(self, reason: str) -> None:
        """``refused``, ``timeout``, ``reset``, ``protocol`` (before a response) or ``mid_body``."""

    def inflight_changed(self, delta: int) -> None:
        """Requests being proxied (not held) went up or down by ``delta``."""


class NullRequestObserver:
    """Observer that records nothing."""

    def request_finished(self, project: str | None, status: int, duration_s: float, page: bool = False) -> None:
        pass

    def stream_finished(self, kind: str, duration_s: float) -> None:
        pass

    def upstream_error(self, reason: str) -> None:
        pass

    def inflight_changed(self, delta: int) -> None:
        pass


class Request:
    """The server's record of one routed request (``Exchange.handling``)."""

    __slots__ = ("attempts", "endpoint", "name", "page", "project", "proxied", "task", "tracked")

    def __init__(self, name: str, project: Project | None) -> None:
        self.name = name  # the project it routes to (which may not exist)
        self.project = project  # None until resolved
        self.tracked = False  # counted as the project's activity (lifecycle.begin; end when finished)
        self.proxied = False  # counted in flight to a project (observer.inflight_changed)
        self.endpoint: Endpoint | None = None  # where it was forwarded last
        self.attempts = 0  # times it was forwarded
        self.task: asyncio.Task[None] | None = None  # resolving its project, or holding it
        self.page = False  # answered with the waiting page


def _header_pairs(headers: dict[str, str]) -> tuple[tuple[bytes, bytes], ...]:
    # Content-Type and Cache-Control are written by the local-answer builder itself.
    return tuple((k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()
                 if k.lower() not in ("content-type", "cache-control"))


class PublicServer:
    """The public HTTP listener. ``start`` binds ``settings.listen`` (port 0 → :attr:`port`)."""

    def __init__(self, settings: Settings, lifecycle: Lifecycle, router: Router,
                 observer: RequestObserver | None = None) -> None:
        self.settings = settings
        self.lifecycle = lifecycle
        self.router = router
        self.observer: RequestObserver = observer or NullRequestObserver()
        self.port: int | None = None
        self._listener: Listener | None = None
        self._rules = IgnoreRules(settings.ignore_paths, settings.ignore_user_agents)
        self._check_paths = bool(settings.ignore_paths)
        self._check_ua = bool(settings.ignore_user_agents)
        self._ua_cache: dict[bytes, bool] = {}
        self._route_header = settings.route_header is not None
        self._access_log = settings.access_log
        self._page_headers = _header_pairs(waiting_page.page_response_headers())
        self._failed_page_headers = ((b"Cache-Control", b"no-store"), (b"X-Robots-Tag", b"noindex"))
        self._status_path = waiting_page.STATUS_PATH.encode()
        self._tasks = Tasks()  # resolving projects, holding requests
        self._routes: dict[bytes | None, str] = {}
        self._route_errors: dict[bytes | None, RouteError] = {}
        self._rid_prefix = logs.new_request_id().rsplit("-", 1)[0].encode() + b"-"
        self._rid_counter = itertools.count(1)
        self._id_format = b"X-Request-Id: " + self._rid_prefix + b"%08x\r\n"
        self._clock = time.monotonic
        self._wake_limiter = WakeLimiter(settings.wake_rate_per_min, settings.wake_rate_per_client_per_min,
                                         self._clock())
        # Bound once: the warm path calls them for every request.
        self._begin = lifecycle.begin
        self._end = lifecycle.end
        self._inflight_changed = self.observer.inflight_changed
        self._request_finished = self.observer.request_finished

    # --- listener lifecycle ----------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        """Requests being answered (held, proxied, streaming, or tunnelled)."""
        return self._listener.in_flight if self._listener is not None else 0

    async def start(self) -> None:
        """Bind the public listener (raises ``OSError`` when the address is taken)."""
        s = self.settings
        listener = Listener(
            self,
            scheme=b"http",
            trust_forwarded=s.trust_forwarded,
            trusted_proxies=s.trusted_proxies,
            connect_timeout_s=s.upstream_connect_timeout_s,
            keepalive_timeout_s=s.client_keepalive_timeout_s,
            header_timeout_s=s.client_header_timeout_s,
            body_timeout_s=s.client_body_timeout_s,
            route_header=s.route_header,
        )
        await listener.start(s.listen.host, s.listen.port)
        self._listener = listener
        self.port = listener.port

    async def stop_accepting(self) -> None:
        """Close the listening socket; keep-alive connections close after their current request."""
        if self._listener is not None:
            await self._listener.stop_accepting()

    async def drain(self, timeout_s: float) -> bool:
        """Wait until no request is in flight; False when ``timeout_s`` passed first."""
        if self._listener is None:
            return True
        return await self._listener.drain(timeout_s)

    def close(self) -> None:
        """Abort whatever is still open (connections, tunnels, idle upstream connections)."""
        if self._listener is not None:
            self._listener.close()
        self._tasks.cancel()

    @property
    def listener(self) -> Listener | None:
        """The protocol-level listener (tests read its upstream pool)."""
        return self._listener

    # --- Handler: the per-request policy ---------------------------------------------------------

    def handle(self, ex: Exchange) -> None:
        # Route-header values and Host values share the cache; a NUL keeps them apart.
        key = ex.host if ex.route_value is None or not self._route_header else b"\0" + ex.route_value
        name = self._routes.get(key)
        if name is None:
            name = self._route(ex, key)
            if name is None:
                return
        if ex.request_id is None:
            ex.id_field = self._id_format % next(self._rid_counter)  # Exchange.rid reads the id from it
        p = self.lifecycle.projects.get(name)
        req = Request(name, p)
        ex.handling = req
        if p is None:
            self._spawn(ex, req, self._resolve(ex, req), "wakegate-resolve")
            return
        if ex.target.startswith(b"/__wakegate/") and ex.target.split(b"?", 1)[0] == self._status_path:
            self._status(ex, p)
            return
        ep = p.pick()
        if (ex.user_agent is not None or self._check_paths) and self._ignored(ex):
            if ep is None:
                ex.respond(503, f"project {p.name} is asleep; this request does not wake it\n".encode(),
                           extra=((b"Retry-After", b"5"),))
            else:
                self._forward(ex, req, ep, False)
            return
        if ep is not None:
            # The warm path: count the request, forward it.
            req.tracked = req.proxied = True
            req.endpoint = ep
            req.attempts = 1
            self._begin(p)
            self._inflight_changed(1)
            ex.forward(ep)
            return
        self._cold(ex, req, p)

    def _route(self, ex: Exchange, key: bytes | None) -> str | None:
        """Route a Host (or route-header value) not in the cache; answers errors itself."""
        error = self._route_errors.get(key)
        if error is None:
            try:
                if self._route_header and ex.route_value is not None:
                    name = self.router.route(None, ex.route_value.decode("latin-1"))
                else:
                    name = self.router.route(key.decode("latin-1") if key is not None else None)
            except RouteError as exc:
                error = exc
            else:
                if len(self._routes) >= _ROUTE_CACHE_SIZE:
                    self._routes.clear()
                self._routes[key] = name
                return name
            if len(self._route_errors) >= _ROUTE_CACHE_SIZE:
                self._route_errors.clear()
            self._route_errors[key] = error
        ex.respond(error.status, error.message.encode("utf-8", "replace") + b"\n")
        return None

    async def _resolve(self, ex: Exchange, req: Request) -> None:
        try:
            await self._resolve_and_serve(ex, req)
        except Exception as exc:  # a bug: answer the request, keep serving the others
            self._task_failed(ex, exc)

    async def _resolve_and_serve(self, ex: Exchange, req: Request) -> None:
        p = await self.lifecycle.resolve(req.name)
        if p is None:
            ex.respond(404, f"no project named {req.name}\n".encode())
            return
        req.task = None
        req.project = p
        if ex.target.startswith(b"/__wakegate/") and ex.target.split(b"?", 1)[0] == self._status_path:
            self._status(ex, p)
            return
        ep = p.pick()
        ignored = self._ignored(ex)
        if ignored and ep is None:
            ex.respond(503, f"project {p.name} is asleep; this request does not wake it\n".encode(),
                       extra=((b"Retry-After", b"5"),))
        elif ep is not None:
            self._forward(ex, req, ep, not ignored)
        else:
            self._cold(ex, req, p)

    def _cold(self, ex: Exchange, req: Request, p: Project) -> None:
        """No ready endpoint: the waiting page for browsers, else hold until the project is ready.
        Both obey the same bounds: draining, too many waiting, and the wake rate limits."""
        if waiting_page.wants_page(ex.method.decode("latin-1"), _text(ex.header(b"accept")),
                                   _text(ex.header(b"sec-fetch-mode")), p.strategy):
            lifecycle = self.lifecycle
            rid = _rid(ex)
            refusal = lifecycle.refuse_hold(p)
            if refusal is None and lifecycle.would_wake(p):
                refusal = self._wake_gate(ex, p)
            if refusal is not None:
                lifecycle.rejected(p, refusal, rid)
                if refusal.reason in waiting_page.FINAL_PAGE_REASONS:  # suspended: nothing to wait for
                    ex.respond(refusal.status, waiting_page.render_final_page(p.name, refusal.reason, rid),
                               content_type=b"text/html; charset=utf-8", extra=self._failed_page_headers)
                else:
                    self._reject(ex, refusal, rid)
                return
            if p.state is State.FAILED and p.failed_within(waiting_page.FAILED_PAGE_S):
                # The wake this browser waited for failed (its page reloaded to see this): the
                # final error page, not another wake.
                failed = HoldRejected("failed", f"project {p.name} failed to start", detail=p.last_error)
                lifecycle.rejected(p, failed, rid)
                ex.respond(waiting_page.FAILED_STATUS, waiting_page.render_failed_page(p.name, rid),
                           content_type=b"text/html; charset=utf-8", extra=self._failed_page_headers)
                return
            lifecycle.wake(p)
            req.page = True
            elapsed = time.monotonic() - p.wake_started_mono if p.wake_started_mono is not None else 0.0
            ex.respond(waiting_page.PAGE_STATUS,
                       waiting_page.render_page(p.name, p.state.value, elapsed, p.hold_timeout_s, rid),
                       content_type=b"text/html; charset=utf-8", extra=self._page_headers)
            return
        self._spawn(ex, req, self._hold(ex, req, p, True), "wakegate-hold")

    def _wake_gate(self, ex: Exchange, p: Project) -> HoldRejected | None:
        """Take a token for a wake this public request would start; the 429 when there is none."""
        limited = self._wake_limiter.take(ex.client_address, self._clock())
        if limited is None:
            return None
        retry_after = max(1, math.ceil(limited.retry_after_s))
        if limited.scope == SCOPE_CLIENT:
            which = (f"the wake rate limit per client address "
                     f"({self.settings.wake_rate_per_client_per_min:g} per minute)")
        else:
            which = f"the gateway's wake rate limit ({self.settings.wake_rate_per_min:g} per minute)"
        return HoldRejected(
            "rate_limited",
            f"project {p.name} was not started: {which} is reached; retry in {retry_after}s",
            retry_after, detail=f"wake rate limit: {limited.scope}",
        )

    def _reject(self, ex: Exchange, exc: HoldRejected, rid: str | None) -> None:
        extra = ((b"Retry-After", str(exc.retry_after_s).encode()),) if exc.retry_after_s else ()
        ex.respond(exc.status, _public_body(exc.message, rid), extra=extra)

    def _forward(self, ex: Exchange, req: Request, ep: Endpoint, track: bool) -> None:
        p = req.project
        if track and not req.tracked and p is not None:
            req.tracked = True
            self.lifecycle.begin(p)
        if not req.proxied:
            req.proxied = True
            self.observer.inflight_changed(1)
        self._send(ex, req, ep, False)

    def _send(self, ex: Exchange, req: Request, ep: Endpoint, fresh: bool) -> None:
        req.endpoint = ep
        req.attempts += 1
        ex.forward(ep, fresh)

    async def _hold(self, ex: Exchange, req: Request, p: Project, gated: bool = False) -> None:
        """Hold ``ex`` until ``p`` is ready. ``gated``: a new public request, subject to the wake
        rate limits should it start a wake (not one that was already forwarded once)."""
        rid = _rid(ex)
        logs.request_id_var.set(rid)
        try:
            held = await self.lifecycle.hold(p, (lambda: self._wake_gate(ex, p)) if gated else None)
            req.task = None  # held no more: the exchange's end no longer cancels anything
            ex.response_extra = ((b"X-Wakegate-Cold-Start", b"%.3f" % held.held_s),)
            self._forward(ex, req, held.endpoint, True)
        except HoldRejected as exc:
            self._reject(ex, exc, rid)
        except Exception as exc:  # a bug: answer the request, keep serving the others
            self._task_failed(ex, exc)

    def _status(self, ex: Exchange, p: Project) -> None:
        ready = p.state is State.READY and bool(p.endpoints)
        ex.respond(200, waiting_page.render_status(p.name, p.state.value, ready), content_type=_JSON)

    def _ignored(self, ex: Exchange) -> bool:
        if self._check_paths and self._rules.matches(ex.target.decode("latin-1"), None):
            return True
        ua = ex.user_agent
        if ua is None or not self._check_ua:
            return False
        hit = self._ua_cache.get(ua)
        if hit is None:
            hit = self._rules.matches("", ua.decode("latin-1"))
            if len(self._ua_cache) >= _UA_CACHE_SIZE:
                self._ua_cache.clear()
            self._ua_cache[ua] = hit
        return hit

    def upstream_failed(self, ex: Exchange, reason: str, message: str) -> None:
        req = ex.handling
        assert isinstance(req, Request)  # only forwarded requests fail upstream
        p = req.project
        self.observer.upstream_error(reason)
        rid = _rid(ex)
        logs.event("upstream_error", logging.WARNING, project=req.name, request_id=rid, reason=reason,
                   endpoint=str(req.endpoint), attempt=req.attempts, error=message)
        connect_failed = reason in ("refused", "timeout")
        if p is not None and req.attempts < MAX_ATTEMPTS and (connect_failed or (reason == "reset" and ex.replayable)):
            if connect_failed and req.endpoint is not None:
                self.lifecycle.endpoint_failed(p, req.endpoint, reason)
            ep = p.pick()
            if ep is not None:
                self._send(ex, req, ep, not connect_failed)
            elif not req.tracked:
                ex.respond(503, f"project {p.name} is asleep; this request does not wake it\n".encode(),
                           extra=((b"Retry-After", b"5"),))
            else:
                self._spawn(ex, req, self._hold(ex, req, p), "wakegate-hold")
            return
        status = 504 if reason == "timeout" else 502
        what = _UPSTREAM_PUBLIC.get(reason, "cannot be reached")
        ex.respond(status, _public_body(f"project {req.name} {what}", rid))

    def finished(self, ex: Exchange) -> None:
        req = ex.handling
        name = None
        if isinstance(req, Request):
            name = req.name
            task = req.task
            if task is not None:  # resolving or holding it: no more
                req.task = None
                if task is not asyncio.current_task():
                    task.cancel()
            p = req.project
            if req.tracked and p is not None:
                self._end(p)
            if req.proxied:
                self._inflight_changed(-1)
        now = self._clock()
        duration = now - ex.started
        status = ex.status if ex.head_sent else 499
        head_at = ex.head_at
        if head_at:  # a streamed response or a tunnel: its head went out before its end
            self._request_finished(name, status, head_at - ex.started, False)
            self.observer.stream_finished("tunnel" if status == 101 else "stream", now - head_at)
        else:
            self._request_finished(name, status, duration, isinstance(req, Request) and req.page)
        if ex.error == "mid_body":
            self.observer.upstream_error("mid_body")
            logs.event("upstream_error", logging.WARNING, project=name, request_id=_rid(ex), reason="mid_body")
        if self._access_log:
            logs.event("access", project=name, request_id=_rid(ex), method=ex.method.decode("latin-1"),
                       path=logs.safe_path(ex.target), status=status, duration_ms=round(duration * 1000, 2),
                       cold_start_s=float(ex.response_extra[0][1]) if ex.response_extra else None,
                       error=ex.error)

    # --- helpers ---------------------------------------------------------------------------------

    def _spawn(self, ex: Exchange, req: Request, coro: Coroutine[Any, Any, None], name: str) -> None:
        """Resolve or hold the request in a task (the exchange's end cancels it). The coroutines
        answer their own failures (:meth:`_task_failed`): no callback object per held request."""
        req.task = self._tasks.spawn(coro, name=name)

    def _task_failed(self, ex: Exchange, exc: BaseException) -> None:
        """A handler raised: log it, then answer 500, or abort once the response started."""
        logging.getLogger(__name__).error("request handler failed", exc_info=exc)
        if not ex.finished:
            if ex.head_sent:
                ex.abort("handler_error")
            else:
                ex.respond(500, b"internal error in the gateway\n", close=True)


def _text(value: bytes | None) -> str | None:
    return value.decode("latin-1") if value is not None else None


def _rid(ex: Exchange) -> str | None:
    rid = ex.rid
    return logs.request_id(rid) if rid is not None else None


def _public_body(message: str, rid: str | None) -> bytes:
    """A gateway answer's body: the public message, and the request id a user can quote."""
    text = f"{message}\nrequest id: {rid}\n" if rid is not None else f"{message}\n"
    return text.encode("utf-8", "replace")
