"""Carries out the project lifecycle that :mod:`gateway.project_state` decides.

Every project has a :class:`~gateway.project_state.Machine`; every observation (a request that
must wait, endpoints reported by the backend, a finished scale operation, an idle deadline, an
operator's deactivate) is an event, and :meth:`Lifecycle._step` applies the transition and carries
out its actions: backend calls in tasks, the wake's deadline timer, releasing or failing held
requests, metrics and logs. No rule about *when* a project wakes or sleeps lives here. The mode
a backend reports for a project (``ProjectSettings.mode``: a Deployment's ``wakegate.io/mode``, the
projects file's ``mode``) becomes one ``ModeChanged`` event per change (:meth:`Lifecycle.set_mode`).

The data path asks for an endpoint with :meth:`Project.pick` (no await on the warm path) or, when
there is none, parks the request in :meth:`Lifecycle.hold` until the project is ready, the wake
fails, or the request's own hold timeout passes. Held requests are bounded per project and in
total. A request that is not served is rejected once, counted once (``held_rejected(reason)``)
and logged once; :class:`HoldRejected` carries a public message and a private ``detail`` (logs and
the admin API's ``last_error`` only); :mod:`gateway.server` maps its reason to a status code.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence, Set
from dataclasses import dataclass
from typing import Protocol

from cachetools import TTLCache

from gateway import logs
from gateway import project_state as ps
from gateway.activity import is_idle
from gateway.backends.base import Backend, BackendError, BackendUnavailable, Endpoint, ProjectInfo
from gateway.config import Settings
from gateway.project_state import INITIAL, SHOWN, Machine, Mode, Phase, State
from gateway.tasks import Tasks

__all__ = [
    "REJECTION_STATUS",
    "RELEASE_BATCH",
    "Held",
    "HoldRejected",
    "Lifecycle",
    "LifecycleObserver",
    "Machine",
    "Mode",
    "NullObserver",
    "Phase",
    "Project",
    "State",
    "WakeFailed",
]

_monotonic = time.monotonic
# Held requests released per round of the event loop when their project becomes ready. Measured
# with 1,000 held (bench rig, 4 wakes each): 8 answers the first ones in 4-5 ms and half in 25 ms;
# 16 takes 8 and 27 ms; 4 answers the first sooner still but the last ones later.
RELEASE_BATCH = 8
# The waiters of a project nobody waits for (most of them, with 10,000s of projects): one shared
# empty set instead of a set per project.
_NO_WAITERS: frozenset[asyncio.Future[None]] = frozenset()
#: The HTTP status the data path answers for each rejection reason: the one place a reason
#: becomes a status (the state machine decides reasons, never statuses).
REJECTION_STATUS = {
    "overflow": 503, "draining": 503, "unavailable": 503, "suspended": 503, "timeout": 504, "failed": 502,
    "removed": 404, "rate_limited": 429,
}
_RETRY_AFTER_S = {"draining": 1, "unavailable": 5}


class HoldRejected(Exception):
    """A request cannot be served now; the data path answers it (status by ``reason``).

    ``message`` is public (the body anonymous clients see): it says what happened to the project,
    never why. ``detail`` (stderr lines, Kubernetes reasons, backend errors) is private: it goes to
    the logs only (the admin API shows the project's ``last_error``)."""

    def __init__(self, reason: str, message: str, retry_after_s: int | None = None,
                 detail: str | None = None) -> None:
        super().__init__(message)
        # overflow | timeout | failed | unavailable | removed | draining | suspended | rate_limited
        self.reason = reason
        self.message = message
        self.retry_after_s = retry_after_s
        self.detail = detail

    @property
    def status(self) -> int:
        return REJECTION_STATUS[self.reason]


class WakeFailed(Exception):
    """Set on held requests' futures when the machine fails them (``Fail(reason)``)."""

    def __init__(self, reason: str, detail: str | None) -> None:
        super().__init__(detail or reason)
        self.reason = reason
        self.detail = detail


class LifecycleObserver(Protocol):
    """Hooks for metrics (and tests). Every method must be cheap and must not raise."""

    def wake_started(self, project: str) -> None: ...
    def wake_finished(self, project: str, result: str, duration_s: float) -> None: ...
    def held_changed(self, delta: int) -> None: ...
    def held_rejected(self, reason: str) -> None: ...
    def scale_operation(self, direction: str, ok: bool) -> None: ...
    def project_removed(self, project: str) -> None: ...
    def project_changed(self, project: str) -> None:
        """An event about ``project`` was handled (its machine may have moved)."""


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

    def project_changed(self, project: str) -> None:
        pass


class Project:
    """Runtime state of one project. Mutated only on the event loop.

    A gateway may know 10,000s of projects, nearly all asleep: the per-project footprint is kept
    small (slots; asleep projects share one machine and one empty set of waiters)."""

    __slots__ = (
        "_rr",
        "_waiters",
        "endpoints",
        "failed_mono",
        "hold_timeout_s",
        "idle_timeout_s",
        "in_flight",
        "info",
        "last_activity_mono",
        "last_activity_wall",
        "last_error",
        "machine",
        "name",
        "state",
        "strategy",
        "wake_started_mono",
    )

    def __init__(self, info: ProjectInfo, settings: Settings) -> None:
        self.name = info.name
        self.machine: Machine = INITIAL
        self.state = State.ASLEEP  # SHOWN[machine.phase], kept beside it for the warm path
        self.endpoints: tuple[Endpoint, ...] = ()
        self.in_flight = 0
        self.last_activity_wall: float | None = None
        self.last_activity_mono: float | None = None
        self.last_error: str | None = None
        self.wake_started_mono: float | None = None
        self.failed_mono: float | None = None  # when the last wake failed (None: it did not)
        self._rr = 0
        # The held requests' futures (and admin waiters'); Release and Fail answer them all.
        self._waiters: Set[asyncio.Future[None]] = _NO_WAITERS
        self.apply_info(info, settings)

    @property
    def held(self) -> int:
        """Requests waiting for this project to become ready."""
        return self.machine.held

    def _add_waiter(self, fut: asyncio.Future[None]) -> None:
        waiters = self._waiters
        if isinstance(waiters, set):
            waiters.add(fut)
        else:
            self._waiters = {fut}

    def _discard_waiter(self, fut: asyncio.Future[None]) -> bool:
        """Forget ``fut``; whether it was still waiting (not yet released or failed)."""
        waiters = self._waiters
        if isinstance(waiters, set) and fut in waiters:
            waiters.discard(fut)
            if not waiters:
                self._waiters = _NO_WAITERS
            return True
        return False

    def _take_waiters(self) -> list[asyncio.Future[None]]:
        waiters = [fut for fut in self._waiters if not fut.done()]
        self._waiters = _NO_WAITERS
        return waiters

    def apply_info(self, info: ProjectInfo, settings: Settings) -> None:
        """Take the backend's per-project settings, falling back to the gateway's defaults."""
        s = info.settings
        self.info = info
        self.idle_timeout_s = s.idle_timeout_s if s.idle_timeout_s is not None else settings.idle_timeout_s
        self.hold_timeout_s = s.hold_timeout_s if s.hold_timeout_s is not None else settings.hold_timeout_s
        self.strategy = s.strategy or settings.default_strategy

    def failed_within(self, seconds: float) -> bool:
        """Whether the last wake failed less than ``seconds`` ago (and none started since)."""
        return self.failed_mono is not None and _monotonic() - self.failed_mono < seconds

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
    """Owns every project's machine, carries out its actions; the backend's listener; the reaper."""

    def __init__(self, backend: Backend, settings: Settings, observer: LifecycleObserver | None = None) -> None:
        self.backend = backend
        self.settings = settings
        self.observer: LifecycleObserver = observer or NullObserver()
        self.projects: dict[str, Project] = {}
        self.held_total = 0
        self.draining = False
        self._unknown: TTLCache[str, bool] = TTLCache(settings.unknown_cache_size, settings.unknown_cache_ttl_s)
        self._reaper: asyncio.Task[None] | None = None
        self._tasks = Tasks()
        self._wall_offset = 0.0
        self._wall_anchor_until = float("-inf")
        # Projects going to sleep: why (for the log), and the admin callers waiting for the result.
        self._sleep_reasons: dict[str, str] = {}
        self._slept: dict[str, asyncio.Future[bool]] = {}
        backend.set_listener(self)

    # --- start / stop ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the backend (loads the project table, reports endpoints) and the reaper."""
        self._sync_projects()
        await self.backend.start()
        self._sync_projects()
        self._reaper = asyncio.get_running_loop().create_task(self._reap_loop(), name="wakegate-reaper")

    async def close(self) -> None:
        """Stop the reaper, answer held requests, close the backend."""
        self.draining = True
        if self._reaper:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        for p in list(self.projects.values()):
            self._step(p, ps.Drain())
            self._answer_waiters(p, "draining")  # admin waiters too
        await self._tasks.close()
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
            p = self._add(info)
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
        if not self.draining:
            self._step(p, ps.Wake())

    def would_wake(self, p: Project) -> bool:
        """Whether a request held for ``p`` now would start a wake (rather than join one, or find it ready)."""
        if self.draining:
            return False
        _, actions = ps.transition(p.machine, ps.Hold())
        return any(isinstance(a, ps.WakeStarted) for a in actions)

    def refuse_hold(self, p: Project) -> HoldRejected | None:
        """Why a new request for ``p`` may not wait for it now (draining, suspended, too many
        waiting), or None."""
        if self.draining:
            return self._rejection(p, "draining", None)
        if p.machine.mode is Mode.SUSPENDED:
            return self._rejection(p, "suspended", None)
        if p.held >= self.settings.max_held_per_project or self.held_total >= self.settings.max_held_total:
            which = "this project" if p.held >= self.settings.max_held_per_project else "the gateway"
            return HoldRejected(
                "overflow",
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
        while True:
            ep = p.pick()
            if ep is not None:
                return Held(ep, loop.time() - start)
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise self._rejection(p, "timeout", None)
            if self.draining:
                raise self._rejection(p, "draining", None)
            for action in self._step(p, ps.Hold()):
                if isinstance(action, ps.Reject):
                    raise self._rejection(p, action.reason, None)
            if p.pick() is not None:
                continue
            fut: asyncio.Future[None] = loop.create_future()
            p._add_waiter(fut)
            timer = loop.call_later(remaining, _expire, fut)
            try:
                await fut
            except TimeoutError:
                raise self._rejection(p, "timeout", None) from None
            except WakeFailed as exc:
                raise self._rejection(p, exc.reason, exc.detail) from None
            finally:
                timer.cancel()
                if p._discard_waiter(fut):  # it stopped waiting before being answered
                    self._step(p, ps.Left())

    def _rejection(self, p: Project, reason: str, detail: str | None) -> HoldRejected:
        """The public answer for ``reason``: it names the project and what happened, never why."""
        if reason == "timeout":
            message = f"project {p.name} is not ready after {p.hold_timeout_s:g}s"
            detail = detail or p.last_error or f"it is {p.state.value} and has no ready endpoint"
        elif reason == "removed":
            message = f"project {p.name} was removed"
        elif reason == "draining":
            message = "the gateway is shutting down; retry shortly"
        elif reason == "suspended":
            message = f"project {p.name} is suspended"
        elif reason == "unavailable":
            message = f"project {p.name} cannot be started now; retry shortly"
        else:
            message = f"project {p.name} failed to start"
        return HoldRejected(reason, message, _RETRY_AFTER_S.get(reason), detail)

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
            if not p.endpoints:
                self._step(p, ps.EndpointsChanged(False))

    def set_mode(self, p: Project, mode: Mode) -> None:
        """Run ``p`` as ``mode``: ``Suspended`` answers its held requests and scales it down,
        ``Running`` wakes it and keeps it from the reaper, ``Auto`` is the default.

        Called for every change of the mode the backend reports (:meth:`_sync_projects`), on every
        gateway replica: each one wakes a ``Running`` project, not only the reaper Lease holder. A
        scale-up is idempotent (a patch to one replica), so N replicas cost N small writes once per
        change, and no replica depends on the Lease: one that takes the Lease later (or never gets
        it) has already woken the project, and a holder that dies cannot leave it asleep. Going to
        sleep stays the holder's decision (the reaper), except ``Suspended``, which every replica
        applies at once."""
        was = p.machine.phase
        logs.event("project_mode", project=p.name, mode=mode.value, previous=p.machine.mode.value)
        self._step(p, ps.ModeChanged(mode))
        if p.machine.phase is Phase.SLEEPING and was is not Phase.SLEEPING:
            self._sleep_reasons[p.name] = "suspended"

    # --- sleeping --------------------------------------------------------------------------------

    def _quiet(self, p: Project, now_wall_s: float | None = None) -> bool:
        return is_idle(
            now_wall_s=time.time() if now_wall_s is None else now_wall_s,
            idle_timeout_s=p.idle_timeout_s,
            last_activity_wall_s=p.last_activity_wall,
            in_flight=0,
            held=0,
            shared=self.backend.shared_activity(p.name),
        )

    async def sleep(self, p: Project, reason: str = "idle") -> bool:
        """Scale ``p`` to zero (``reason`` "idle": only if it is idle now, else an operator's
        deactivate). Requests arriving meanwhile are held and wake it again afterwards.

        Returns False when nothing was done, or the backend refused (another replica woke or used
        it) or failed.
        """
        event: ps.Event = ps.IdleDeadline(self._quiet(p), p.in_flight) if reason == "idle" else ps.Deactivate()
        was = p.machine.phase
        self._step(p, event)  # a ScaleDown it asks for runs in a task: the reason is set before that
        if p.machine.phase is not Phase.SLEEPING or was is Phase.SLEEPING:
            return False
        self._sleep_reasons[p.name] = reason
        fut = self._slept.get(p.name)
        if fut is None:
            fut = self._slept[p.name] = asyncio.get_running_loop().create_future()
        return await asyncio.shield(fut)

    def _would_sleep(self, p: Project, now_wall_s: float) -> bool:
        if not self._quiet(p, now_wall_s):
            return False
        after, _ = ps.transition(p.machine, ps.IdleDeadline(True, p.in_flight))
        return after.phase is Phase.SLEEPING

    async def _reap_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.reap_interval_s)
            try:
                self.reap_once()
            except Exception:  # the reaper must survive anything
                logging.getLogger(__name__).exception("reaper iteration failed")

    def reap_once(self) -> list[str]:
        """Start a sleep for every idle project (leader only). Returns their names.

        The sleep decides when its task runs: a request that picked the endpoint meanwhile keeps
        the project awake."""
        if self.draining or not self.backend.may_reap():
            return []
        now = time.time()
        names = []
        for p in list(self.projects.values()):
            # Cheap checks first (identity, not hashing an enum): most of 10,000s are asleep or busy.
            phase = p.machine.phase
            if phase is not Phase.ASLEEP and phase is not Phase.SLEEPING and not p.in_flight \
                    and self._would_sleep(p, now):
                names.append(p.name)
                self._tasks.spawn(self.sleep(p), f"wakegate-sleep-{p.name}")
        return names

    # --- BackendListener -------------------------------------------------------------------------

    def endpoints_changed(self, name: str, endpoints: Sequence[Endpoint]) -> None:
        p = self.projects.get(name)
        if p is None:
            self._sync_projects()
            p = self.projects.get(name)
            if p is None:
                return
        p.endpoints = tuple(endpoints)
        self._step(p, ps.EndpointsChanged(bool(endpoints)))

    def wake_failed(self, name: str, reason: str) -> None:
        p = self.projects.get(name)
        if p is None:
            return
        p.last_error = reason
        self._step(p, ps.BackendFailed(reason))

    def projects_changed(self) -> None:
        self._sync_projects()

    def _sync_projects(self) -> None:
        table: Mapping[str, ProjectInfo] = self.backend.projects()
        for name, info in table.items():
            p = self.projects.get(name)
            if p is None:
                self._add(info)
                self._unknown.pop(name, None)
            elif p.info is not info and p.info != info:
                was = reported_mode(p.info)
                p.apply_info(info, self.settings)
                mode = reported_mode(info)
                if mode is not was:  # a change of the reported mode is applied once, not on every sync
                    self.set_mode(p, mode)
        for name in [n for n in self.projects if n not in table]:
            p = self.projects.pop(name)
            self._step(p, ps.Remove())
            self._answer_waiters(p, "removed")
            self.observer.project_removed(name)

    def _add(self, info: ProjectInfo) -> Project:
        """A project the backend reports for the first time, run in the mode it reports."""
        p = self.projects[info.name] = Project(info, self.settings)
        mode = reported_mode(info)
        if mode is not Mode.AUTO:
            self.set_mode(p, mode)
        return p

    # --- carrying out a transition -----------------------------------------------------------------

    def _step(self, p: Project, event: ps.Event) -> tuple[ps.Action, ...]:
        """Apply ``event`` to ``p``'s machine and carry out the actions; returns them (the caller
        of a Hold answers a Reject)."""
        before = p.machine
        after, actions = ps.transition(before, event)
        if after is not before:
            p.machine = after
            p.state = SHOWN[after.phase]
            delta = after.held - before.held
            if delta:
                self.held_total += delta
                self.observer.held_changed(delta)
        for action in actions:
            self._act(p, action, before)
        self.observer.project_changed(p.name)
        return actions

    def _act(self, p: Project, action: ps.Action, before: Machine) -> None:
        match action:
            case ps.ScaleUp(wake=wake):
                self._tasks.spawn(self._scale_up(p, wake), f"wakegate-scale-up-{p.name}")
            case ps.ScaleDown():
                self._tasks.spawn(self._scale_down(p), f"wakegate-scale-down-{p.name}")
            case ps.ArmDeadline(wake=wake):
                loop = asyncio.get_running_loop()
                started = p.wake_started_mono if p.wake_started_mono is not None else _monotonic()
                remaining = p.hold_timeout_s - (_monotonic() - started)
                loop.call_later(max(0.0, remaining), self._deadline, p, wake)
            case ps.WakeStarted(previous=previous):
                p.last_error = None
                p.failed_mono = None
                p.wake_started_mono = _monotonic()
                # A wake is activity: a wake that never becomes ready (failed, timed out) is still
                # reaped once idle, so its process / replicas do not run forever.
                self._touch(p)
                self.observer.wake_started(p.name)
                logs.event("wake", project=p.name, previous_state=SHOWN[previous].value)
            case ps.WakeEnded(result=result, error=error):
                started = p.wake_started_mono if p.wake_started_mono is not None else _monotonic()
                duration = _monotonic() - started
                self.observer.wake_finished(p.name, result, duration)
                if result == "ready":
                    logs.event("ready", project=p.name, wake_s=round(duration, 3))
                else:
                    p.failed_mono = _monotonic()
                    p.last_error = error or f"no ready endpoint after {p.hold_timeout_s:g}s"
                    logs.event("wake_failed", logging.WARNING, project=p.name, result=result, error=p.last_error)
            case ps.BecameReady():
                p.last_error = None
                if p.last_activity_wall is None:
                    self._touch(p)  # found running: give it a full idle period
            case ps.Release():
                self._release(p._take_waiters(), 0)
            case ps.Fail(reason=reason):
                self._answer_waiters(p, reason)
            case ps.Touch():
                if p.last_activity_wall is None:
                    self._touch(p)
            case ps.ForgetEndpoints():
                p.endpoints = ()
            case ps.Reject():
                pass  # answered by the caller of the Hold

    def _answer_waiters(self, p: Project, reason: str) -> None:
        # A failed wake's cause is private detail; the other reasons say all there is.
        detail = p.last_error or reason if reason in ("failed", "unavailable") else None
        for fut in p._take_waiters():
            fut.set_exception(WakeFailed(reason, detail))

    def _release(self, waiters: list[asyncio.Future[None]], start: int) -> None:
        # A herd is released a batch per round of the event loop: the first requests reach the
        # project (and its answers come back) while the rest are still being released.
        end = start + RELEASE_BATCH
        for fut in waiters[start:end]:
            if not fut.done():
                fut.set_result(None)
        if end < len(waiters):
            asyncio.get_running_loop().call_soon(self._release, waiters, end)

    def _deadline(self, p: Project, wake: int) -> None:
        # Its waiters get what their own hold timeouts would give them (504, counted as "timeout"
        # once each), not a failed wake.
        self._step(p, ps.WakeDeadline(wake))

    async def _scale_up(self, p: Project, wake: int) -> None:
        try:
            await self.backend.scale_up(p.name)
        except Exception as exc:  # BackendError, or a backend bug: never leave the project "waking"
            self.observer.scale_operation("up", False)
            error = str(exc) if isinstance(exc, BackendError) else f"{type(exc).__name__}: {exc}"
            logs.event("scale_error", logging.ERROR, project=p.name, direction="up", error=error)
            self._step(p, ps.ScaleUpDone(wake, False, isinstance(exc, BackendUnavailable),
                                         f"scale-up failed: {error}"))
            return
        self.observer.scale_operation("up", True)
        self._step(p, ps.ScaleUpDone(wake, True))

    async def _scale_down(self, p: Project) -> None:
        ok = False
        reason = self._sleep_reasons.pop(p.name, "idle")
        try:
            ok = await self.backend.scale_down(p.name, p.last_activity_wall)
            self.observer.scale_operation("down", True)
            logs.event("sleep", project=p.name, reason=reason, scaled_down=ok)
        except Exception as exc:  # BackendError, or a backend bug: never leave the project "sleeping"
            self.observer.scale_operation("down", False)
            error = str(exc) if isinstance(exc, BackendError) else f"{type(exc).__name__}: {exc}"
            logs.event("scale_error", logging.ERROR, project=p.name, direction="down", error=error)
        self._step(p, ps.ScaleDownDone(ok))
        fut = self._slept.pop(p.name, None)
        if fut is not None and not fut.done():
            fut.set_result(ok)


_MODES = {m.value: m for m in Mode}


def reported_mode(info: ProjectInfo) -> Mode:
    """The mode the backend reports for a project: absent is ``Auto``, and so is a value that is
    not a mode (backends validate it and report an invalid one as a problem, falling back to Auto)."""
    mode = info.settings.mode
    return Mode.AUTO if mode is None else _MODES.get(mode, Mode.AUTO)


def _expire(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_exception(TimeoutError())
