"""Per-project wake / hold / sleep state.

States: ``asleep → waking → ready → asleep``, plus ``failed`` after a failed wake (the next request
tries again). The lifecycle is the backend's one listener: endpoints and failures are pushed to it,
never polled. The data path asks it for an endpoint (:meth:`Project.pick`, no await on the warm
path) or, when there is none, parks the request in :meth:`Lifecycle.hold` until the project is
ready, the wake fails, or the hold timeout passes.

Concurrency rules:
- Concurrent cold requests coalesce into one wake task, so exactly one ``scale_up`` per wake.
- Scale operations of one project are serialised by a per-project lock, so a request arriving while
  a scale-down runs is held; its wake scales up again once the scale-down is done.
- Held requests are bounded per project and in total; every wait has a timeout.
- A request that is not served is rejected once, counted once (``held_rejected(reason)``) and
  logged once; a hold timeout is a 504 "timeout" whether its own timer or the wake's deadline
  fired first. Rejection messages are public; the reasons behind them (``detail``) are not.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence, Set
from dataclasses import dataclass
from typing import Protocol

from cachetools import TTLCache

from gateway import logs
from gateway.activity import is_idle
from gateway.backends.base import Backend, BackendError, BackendUnavailable, Endpoint, ProjectInfo
from gateway.config import Settings

_monotonic = time.monotonic
# Held requests released per round of the event loop when their project becomes ready. Measured
# with 1,000 held (bench rig, 4 wakes each): 8 answers the first ones in 4-5 ms and half in 25 ms;
# 16 takes 8 and 27 ms; 4 answers the first sooner still but the last ones later.
RELEASE_BATCH = 8
# The waiters of a project nobody waits for (most of them, with 10,000s of projects): one shared
# empty set instead of a set per project.
_NO_WAITERS: frozenset[asyncio.Future[None]] = frozenset()


class State(enum.StrEnum):
    ASLEEP = "asleep"
    WAKING = "waking"
    READY = "ready"
    FAILED = "failed"


class HoldRejected(Exception):
    """A held request cannot be served; carries the HTTP answer the data path should give.

    ``message`` is public (the body anonymous clients see): it says what happened to the project,
    never why. ``detail`` (stderr lines, Kubernetes reasons, backend errors) is private: it goes to
    the logs only (the admin API shows the project's ``last_error``)."""

    def __init__(self, status: int, reason: str, message: str, retry_after_s: int | None = None,
                 detail: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        # overflow | timeout | failed | unavailable | removed | draining | rate_limited
        self.reason = reason
        self.message = message
        self.retry_after_s = retry_after_s
        self.detail = detail


class WakeFailed(Exception):
    """Set on held requests' futures when a wake fails. ``unavailable``: the backend could not be
    reached (answered 503, worth retrying) rather than the project failing (502). ``reason``
    "removed" (the project was deleted), "draining" (the gateway stops) and "timeout" (the wake
    passed its deadline: each waiter gets what its own hold timeout gives) get their own answers."""

    def __init__(self, message: str, unavailable: bool = False, reason: str = "failed") -> None:
        super().__init__(message)
        self.unavailable = unavailable
        self.reason = reason


class LifecycleObserver(Protocol):
    """Hooks for metrics. Every method must be cheap and must not raise."""

    def wake_started(self, project: str) -> None: ...
    def wake_finished(self, project: str, result: str, duration_s: float) -> None: ...
    def held_changed(self, delta: int) -> None: ...
    def held_rejected(self, reason: str) -> None: ...
    def scale_operation(self, direction: str, ok: bool) -> None: ...
    def project_removed(self, project: str) -> None: ...


class NullObserver:
    """Observer that records nothing (tests, tools)."""

    def wake_started(self, project: str) -> None:
        pass

    def wake_finished(self, project: str, result: str, duration_s: float) -> None:
        pass

    def held_changed(self, delta: int) -> None:
        pass

    def held_rejected(self, reason: str) -> None:
        pass

    def scale_operation(self, direction: str, ok: bool) -> None:
        pass

    def project_removed(self, project: str) -> None:
        pass


class Project:
    """Runtime state of one project. Mutated only on the event loop.

    A gateway may know 10,000s of projects, nearly all asleep: the per-project footprint is kept
    small (slots; the lock and the set of held requests exist only once needed)."""

    __slots__ = (
        "_op_lock",
        "_rr",
        "_sleeping",
        "_up",
        "_waiters",
        "_wake_id",
        "_wake_task",
        "endpoints",
        "held",
        "hold_timeout_s",
        "idle_timeout_s",
        "in_flight",
        "info",
        "last_activity_mono",
        "last_activity_wall",
        "last_error",
        "name",
        "state",
        "strategy",
        "wake_started_mono",
    )

    def __init__(self, info: ProjectInfo, settings: Settings) -> None:
        self.name = info.name
        self.state = State.ASLEEP
        self.endpoints: tuple[Endpoint, ...] = ()
        self.in_flight = 0
        self.held = 0
        self.last_activity_wall: float | None = None
        self.last_activity_mono: float | None = None
        self.last_error: str | None = None
        self.wake_started_mono: float | None = None
        self._op_lock: asyncio.Lock | None = None
        self._rr = 0
        self._sleeping = False
        self._up = False  # scaled up and not scaled down since: the reaper must look at it
        self._wake_id = 0
        self._wake_task: asyncio.Task[None] | None = None
        self._waiters: Set[asyncio.Future[None]] = _NO_WAITERS
        self.apply_info(info, settings)

    @property
    def op_lock(self) -> asyncio.Lock:
        """Serialises the project's scale operations (created on first use)."""
        lock = self._op_lock
        if lock is None:
            lock = self._op_lock = asyncio.Lock()
        return lock

    def _add_waiter(self, fut: asyncio.Future[None]) -> None:
        waiters = self._waiters
        if isinstance(waiters, set):
            waiters.add(fut)
        else:
            self._waiters = {fut}

    def _discard_waiter(self, fut: asyncio.Future[None]) -> None:
        waiters = self._waiters
        if isinstance(waiters, set):
            waiters.discard(fut)
            if not waiters:
                self._waiters = _NO_WAITERS

    def apply_info(self, info: ProjectInfo, settings: Settings) -> None:
        """Take the backend's per-project settings, falling back to the gateway's defaults."""
        s = info.settings
        self.info = info
        self.idle_timeout_s = s.idle_timeout_s if s.idle_timeout_s is not None else settings.idle_timeout_s
        self.hold_timeout_s = s.hold_timeout_s if s.hold_timeout_s is not None else settings.hold_timeout_s
        self.strategy = s.strategy or settings.default_strategy

    def pick(self) -> Endpoint | None:
        """A ready endpoint, spreading requests round-robin; ``None`` when the request must hold."""
        eps = self.endpoints
        if self.state is not State.READY or not eps:
            return None
        if len(eps) == 1:
            return eps[0]
        self._rr = (self._rr + 1) % len(eps)
        return eps[self._rr]


@dataclass(frozen=True, slots=True)
class Held:
    """Result of a successful hold."""

    endpoint: Endpoint
    held_s: float


class Lifecycle:
    """Owns every project's state; the backend's listener; runs the idle reaper."""

    def __init__(self, backend: Backend, settings: Settings, observer: LifecycleObserver | None = None) -> None:
        self.backend = backend
        self.settings = settings
        self.observer: LifecycleObserver = observer or NullObserver()
        self.projects: dict[str, Project] = {}
        self.held_total = 0
        self.draining = False
        self._unknown: TTLCache[str, bool] = TTLCache(settings.unknown_cache_size, settings.unknown_cache_ttl_s)
        self._reaper: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._wall_offset = 0.0
        self._wall_anchor_until = float("-inf")
        backend.set_listener(self)

    # --- start / stop ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the backend (loads the project table, reports endpoints) and the reaper."""
        self._sync_projects()
        await self.backend.start()
        self._sync_projects()
        self._reaper = asyncio.get_running_loop().create_task(self._reap_loop(), name="wakegate-reaper")

    async def close(self) -> None:
        """Stop the reaper, fail held requests, close the backend."""
        self.draining = True
        if self._reaper:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        for p in self.projects.values():
            self._fail_waiters(p, "the gateway is shutting down", reason="draining")
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.backend.close()

    # --- lookups ---------------------------------------------------------------------------------

    def get(self, name: str) -> Project | None:
        """The project called ``name``, from memory (the data path's lookup)."""
        return self.projects.get(name)

    async def resolve(self, name: str) -> Project | None:
        """Like :meth:`get`, but asks the backend about names missing from the table. Names it
        does not know are remembered in a bounded TTL cache so random names cannot hammer it."""
        p = self.projects.get(name)
        if p is not None or name in self._unknown:
            return p
        try:
            info = await self.backend.discover(name)
        except BackendError:
            info = None
        if info is None:
            self._unknown[name] = True
            return None
        self._sync_projects()
        p = self.projects.get(name)
        if p is None:  # the backend found it but its table has not caught up yet
            p = self.projects[name] = Project(info, self.settings)
        return p

    def count_by_state(self) -> dict[str, int]:
        counts = {s.value: 0 for s in State}
        for p in self.projects.values():
            counts[p.state.value] += 1
        return counts

    # --- activity --------------------------------------------------------------------------------

    # begin/end run twice per request: one clock read (the wall time is derived from the monotonic
    # one, re-anchored every second). Other replicas learn activity from the admin API's activity map.

    def begin(self, p: Project) -> None:
        """A request (or WebSocket, or stream) to ``p`` starts."""
        p.in_flight += 1
        p.last_activity_mono = now = _monotonic()
        if now >= self._wall_anchor_until:
            self._anchor_wall(now)
        p.last_activity_wall = now + self._wall_offset

    def end(self, p: Project) -> None:
        """A request to ``p`` ends (its response is complete or the connection is gone)."""
        p.in_flight -= 1
        p.last_activity_mono = now = _monotonic()
        if now >= self._wall_anchor_until:
            self._anchor_wall(now)
        p.last_activity_wall = now + self._wall_offset

    def _touch(self, p: Project) -> None:
        p.last_activity_mono = now = _monotonic()
        if now >= self._wall_anchor_until:
            self._anchor_wall(now)
        p.last_activity_wall = now + self._wall_offset

    def _anchor_wall(self, now: float) -> None:
        # Follows wall-clock steps (NTP) within a second.
        self._wall_offset = time.time() - _monotonic()
        self._wall_anchor_until = now + 1.0

    @contextlib.contextmanager
    def activity(self, p: Project) -> Iterator[None]:
        """``with lifecycle.activity(p):`` brackets a request's life."""
        self.begin(p)
        try:
            yield
        finally:
            self.end(p)

    # --- waking and holding ----------------------------------------------------------------------

    def wake(self, p: Project) -> None:
        """Start a wake unless one is running or the project is ready. Never blocks."""
        if self.draining or p.state is State.WAKING or (p.state is State.READY and p.endpoints):
            return
        prev = p.state
        p.state = State.WAKING
        p.last_error = None
        p.wake_started_mono = time.monotonic()
        p._wake_id += 1
        # A wake is activity: a wake that never becomes ready (failed, timed out) is still reaped
        # once idle, so its process / replicas do not run forever.
        self._touch(p)
        self.observer.wake_started(p.name)
        logs.event("wake", project=p.name, previous_state=prev.value)
        self._spawn(self._run_wake(p, p._wake_id))

    def would_wake(self, p: Project) -> bool:
        """Whether :meth:`wake` would start a wake of ``p`` now (rather than join one or do nothing)."""
        return not self.draining and p.state is not State.WAKING and not (p.state is State.READY and p.endpoints)

    def refuse_hold(self, p: Project) -> HoldRejected | None:
        """Why a new request for ``p`` may not wait for it now (draining, too many waiting), or None."""
        if self.draining:
            return HoldRejected(503, "draining", "the gateway is shutting down; retry shortly", 1)
        if p.held >= self.settings.max_held_per_project or self.held_total >= self.settings.max_held_total:
            which = "this project" if p.held >= self.settings.max_held_per_project else "the gateway"
            return HoldRejected(
                503, "overflow",
                f"project {p.name} is starting and too many requests are already waiting for {which}; "
                "retry shortly",
                max(1, int(p.hold_timeout_s // 10)),
            )
        return None

    def rejected(self, p: Project, exc: HoldRejected, request_id: str | None = None) -> None:
        """Count (``held_rejected``) and log one request answered ``exc`` instead of being served.
        Called exactly once per rejected request: by :meth:`hold`, or by the data path for the
        rejections it decides itself (the waiting page's, rate limits)."""
        self.observer.held_rejected(exc.reason)
        # The log line has what the client was told and why (the private detail).
        error = exc.message if exc.detail is None else f"{exc.message}: {exc.detail}"
        if request_id is None:
            logs.event("request_failed", logging.WARNING, project=p.name, status=exc.status, reason=exc.reason,
                       error=error)
        else:
            logs.event("request_failed", logging.WARNING, project=p.name, request_id=request_id,
                       status=exc.status, reason=exc.reason, error=error)

    async def hold(self, p: Project, gate: Callable[[], HoldRejected | None] | None = None) -> Held:
        """Park the caller until ``p`` has a ready endpoint. Raises :class:`HoldRejected`, after
        counting and logging it once (:meth:`rejected`, with the request id the caller bound).

        ``gate`` is asked, only when this request would start a wake (not join one), whether it
        may; a :class:`HoldRejected` it returns is raised instead of waking (public rate limits)."""
        try:
            return await self._hold(p, gate)
        except HoldRejected as exc:
            self.rejected(p, exc)
            raise

    async def _hold(self, p: Project, gate: Callable[[], HoldRejected | None] | None) -> Held:
        refusal = self.refuse_hold(p)
        if refusal is not None:
            raise refusal
        if gate is not None and p.pick() is None and self.would_wake(p):
            refusal = gate()
            if refusal is not None:
                raise refusal
        loop = asyncio.get_running_loop()
        start = loop.time()
        deadline = start + p.hold_timeout_s
        p.held += 1
        self.held_total += 1
        self.observer.held_changed(1)
        try:
            while True:
                ep = p.pick()
                if ep is not None:
                    return Held(ep, loop.time() - start)
                self.wake(p)
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise self._hold_timeout(p)
                fut: asyncio.Future[None] = loop.create_future()
                p._add_waiter(fut)
                timer = loop.call_later(remaining, _expire, fut)
                try:
                    await fut
                except TimeoutError:
                    raise self._hold_timeout(p) from None
                except WakeFailed as exc:
                    raise self._wake_rejection(p, exc) from None
                finally:
                    timer.cancel()
                    p._discard_waiter(fut)
        finally:
            p.held -= 1
            self.held_total -= 1
            self.observer.held_changed(-1)

    def _hold_timeout(self, p: Project) -> HoldRejected:
        return HoldRejected(
            504, "timeout", f"project {p.name} is not ready after {p.hold_timeout_s:g}s",
            detail=p.last_error or f"it is {p.state.value} and has no ready endpoint",
        )

    def _wake_rejection(self, p: Project, exc: WakeFailed) -> HoldRejected:
        # The public messages name the project and what happened, never the backend's reason.
        if exc.reason == "timeout":
            return self._hold_timeout(p)
        if exc.reason == "removed":
            return HoldRejected(404, "removed", f"project {p.name} was removed", detail=str(exc))
        if exc.reason == "draining":
            return HoldRejected(503, "draining", "the gateway is shutting down; retry shortly", 1, detail=str(exc))
        if exc.unavailable:
            return HoldRejected(503, "unavailable", f"project {p.name} cannot be started now; retry shortly", 5,
                                detail=str(exc))
        return HoldRejected(502, "failed", f"project {p.name} failed to start", detail=str(exc))

    async def wait_ready(self, p: Project, timeout_s: float | None = None) -> bool:
        """Wake ``p`` and wait until it is ready (admin ``activate?wait=true``). False on timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (p.hold_timeout_s if timeout_s is None else timeout_s)
        while p.pick() is None:
            self.wake(p)
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            fut: asyncio.Future[None] = loop.create_future()
            p._add_waiter(fut)
            timer = loop.call_later(remaining, _expire, fut)
            try:
                await fut
            except (TimeoutError, WakeFailed):
                return p.pick() is not None
            finally:
                timer.cancel()
                p._discard_waiter(fut)
        return True

    def endpoint_failed(self, p: Project, ep: Endpoint, reason: str) -> None:
        """The data path could not connect to ``ep``: drop it from rotation at once."""
        if ep in p.endpoints:
            p.endpoints = tuple(e for e in p.endpoints if e != ep)
            logs.event("endpoint_dropped", logging.WARNING, project=p.name, endpoint=str(ep), reason=reason)
            if not p.endpoints and p.state is State.READY:
                p.state = State.ASLEEP

    async def _run_wake(self, p: Project, wake_id: int) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            async with p.op_lock:  # waits for a scale-down in progress
                if p._wake_id != wake_id or p.state is not State.WAKING:
                    return
                await self.backend.scale_up(p.name)
            self.observer.scale_operation("up", True)
        except Exception as exc:  # BackendError, or a backend bug: never leave the project "waking"
            self.observer.scale_operation("up", False)
            error = str(exc) if isinstance(exc, BackendError) else f"{type(exc).__name__}: {exc}"
            logs.event("scale_error", logging.ERROR, project=p.name, direction="up", error=error)
            if p._wake_id == wake_id and p.state is State.WAKING:
                self._wake_done(p, "failed", f"scale-up failed: {error}",
                                unavailable=isinstance(exc, BackendUnavailable))
            return
        p._up = True
        if p.endpoints and p._wake_id == wake_id and p.state is State.WAKING:
            self._become_ready(p)
            return
        # Readiness arrives through endpoints_changed; bound the wake itself by the hold timeout.
        remaining = p.hold_timeout_s - (loop.time() - started)
        loop.call_later(max(0.0, remaining), self._wake_deadline, p, wake_id)

    def _wake_deadline(self, p: Project, wake_id: int) -> None:
        if p._wake_id == wake_id and p.state is State.WAKING:
            # Its waiters get what their own hold timeouts would give them (504, counted as
            # "timeout" once each), not a failed wake.
            self._wake_done(p, "timeout", f"no ready endpoint after {p.hold_timeout_s:g}s", reason="timeout")

    def _become_ready(self, p: Project) -> None:
        was_waking = p.state is State.WAKING
        p.state = State.READY
        p._up = True
        p.last_error = None
        if p.last_activity_wall is None:
            self._touch(p)  # found running: give it a full idle period
        if was_waking:
            self._finish_wake_metrics(p, "ready")
            logs.event("ready", project=p.name, wake_s=round(time.monotonic() - (p.wake_started_mono or 0), 3))
        self._release([fut for fut in p._waiters if not fut.done()], 0)

    def _release(self, waiters: list[asyncio.Future[None]], start: int) -> None:
        # A herd is released a batch per round of the event loop: the first requests reach the
        # project (and its answers come back) while the rest are still being released.
        end = start + RELEASE_BATCH
        for fut in waiters[start:end]:
            if not fut.done():
                fut.set_result(None)
        if end < len(waiters):
            asyncio.get_running_loop().call_soon(self._release, waiters, end)

    def _wake_done(self, p: Project, result: str, error: str, unavailable: bool = False,
                   reason: str = "failed") -> None:
        p.state = State.FAILED
        p.last_error = error
        self._finish_wake_metrics(p, result)
        logs.event("wake_failed", logging.WARNING, project=p.name, result=result, error=error)
        self._fail_waiters(p, error, unavailable, reason)

    def _finish_wake_metrics(self, p: Project, result: str) -> None:
        duration = time.monotonic() - (p.wake_started_mono or time.monotonic())
        self.observer.wake_finished(p.name, result, duration)

    def _fail_waiters(self, p: Project, error: str, unavailable: bool = False, reason: str = "failed") -> None:
        for fut in p._waiters:
            if not fut.done():
                fut.set_exception(WakeFailed(error, unavailable, reason))

    # --- sleeping --------------------------------------------------------------------------------

    def idle(self, p: Project, now_wall_s: float | None = None) -> bool:
        """Whether ``p`` may be put to sleep now, across all gateway replicas."""
        return is_idle(
            now_wall_s=time.time() if now_wall_s is None else now_wall_s,
            idle_timeout_s=p.idle_timeout_s,
            last_activity_wall_s=p.last_activity_wall,
            in_flight=p.in_flight,
            held=p.held,
            shared=self.backend.shared_activity(p.name),
        )

    async def sleep(self, p: Project, reason: str = "idle") -> bool:
        """Scale ``p`` to zero. Requests arriving meanwhile are held and wake it again afterwards.

        Returns False when the backend refused (another replica woke or used it) or failed.
        """
        if p._sleeping or (reason == "idle" and not self.idle(p)):
            return False  # an idle sleep re-checks: a request may have started since the reaper looked
        previous_state, previous_endpoints = p.state, p.endpoints
        p._sleeping = True
        p.state = State.ASLEEP
        p.endpoints = ()
        p._wake_id += 1  # a wake in progress is superseded; its waiters re-wake after this
        ok = False
        try:
            async with p.op_lock:
                ok = await self.backend.scale_down(p.name, p.last_activity_wall)
            if ok:
                p._up = False
            self.observer.scale_operation("down", True)
            logs.event("sleep", project=p.name, reason=reason, scaled_down=ok)
        except BackendError as exc:
            self.observer.scale_operation("down", False)
            logs.event("scale_error", logging.ERROR, project=p.name, direction="down", error=str(exc))
        finally:
            p._sleeping = False
        if not ok and p.state is State.ASLEEP and not p._waiters:
            # Still running: put it back in rotation; the reaper retries later.
            p.state, p.endpoints = previous_state, previous_endpoints
        elif p._waiters and p.state is State.ASLEEP:
            self.wake(p)  # requests arrived during the scale-down
        return ok

    async def _reap_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.reap_interval_s)
            try:
                self.reap_once()
            except Exception:  # the reaper must survive anything
                logging.getLogger(__name__).exception("reaper iteration failed")

    def reap_once(self) -> list[str]:
        """Start a sleep for every idle project (leader only). Returns their names."""
        if self.draining or not self.backend.may_reap():
            return []
        now = time.time()
        names = []
        for p in list(self.projects.values()):
            if (p.state is not State.ASLEEP or p._up) and not p._sleeping and self.idle(p, now):
                names.append(p.name)
                self._spawn(self.sleep(p))
        return names

    # --- BackendListener -------------------------------------------------------------------------

    def endpoints_changed(self, name: str, endpoints: Sequence[Endpoint]) -> None:
        p = self.projects.get(name)
        if p is None:
            self._sync_projects()
            p = self.projects.get(name)
            if p is None:
                return
        if p._sleeping:
            return  # stale addresses of what is being scaled down
        p.endpoints = tuple(endpoints)
        if p.endpoints:
            if p.state is not State.READY:
                self._become_ready(p)
        elif p.state is State.READY:
            p.state = State.ASLEEP

    def wake_failed(self, name: str, reason: str) -> None:
        p = self.projects.get(name)
        if p is None:
            return
        if p.state is State.WAKING or (p.state is not State.READY and p._waiters):
            self._wake_done(p, "failed", reason)
        elif p.state is State.ASLEEP and not p._sleeping:
            # Scaled up elsewhere (another gateway replica, a person) and failing: show it as failed
            # and give it an idle period, so the reaper scales it back down instead of ignoring it.
            p.state = State.FAILED
            p.last_error = reason
            p._up = True
            if p.last_activity_wall is None:
                self._touch(p)
        else:
            p.last_error = reason

    def projects_changed(self) -> None:
        self._sync_projects()

    def _sync_projects(self) -> None:
        table: Mapping[str, ProjectInfo] = self.backend.projects()
        for name, info in table.items():
            p = self.projects.get(name)
            if p is None:
                self.projects[name] = Project(info, self.settings)
                self._unknown.pop(name, None)
            elif p.info is not info and p.info != info:
                p.apply_info(info, self.settings)
        for name in [n for n in self.projects if n not in table]:
            p = self.projects.pop(name)
            self._fail_waiters(p, f"project {name} was removed", reason="removed")
            self.observer.project_removed(name)

    # --- helpers ---------------------------------------------------------------------------------

    def _spawn(self, coro: object) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _expire(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_exception(TimeoutError())
