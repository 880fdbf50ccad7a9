"""A project's lifecycle as a pure state machine: its states, the events that move it, and the
actions each transition asks for. No asyncio, no clock, no I/O — :mod:`gateway.lifecycle` feeds
events in and carries the actions out (backend calls, timers, answering held requests), and
:mod:`gateway.server` maps a rejection reason to an HTTP status.

A :class:`Machine` is the whole state that decides what happens next: the :class:`Phase`, the
backend operation in flight (``op``), the current wake's id, how many requests are held, whether
the backend reports a ready endpoint, and the project's :class:`Mode`. ``transition(machine,
event)`` returns the next machine and the actions, and :data:`TRANSITIONS` lists, per event, the
function that decides it: every rule that moves a project is in this file.

Rules the tests check over every reachable machine and random event sequences:

- at most one backend operation per project is in flight; an operation the state no longer wants
  is followed by the one it wants (a wake during a scale-down scales up once the scale-down ends);
- one wake asks for exactly one scale-up, however many requests join it;
- held requests exist only while a project is waking or going to sleep, so one of ``Release``
  or ``Fail`` always comes (the wake's deadline bounds every wake);
- an idle deadline never scales down a project with a request in flight or held (an operator's
  deactivate and ``Suspended`` do, on purpose);
- ``Suspended`` projects are never woken: requests are rejected with reason ``suspended``;
  ``Running`` projects are woken at once and never put to sleep by the idle deadline.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any


class Phase(enum.Enum):
    ASLEEP = "asleep"  # scaled to zero, no operation in flight
    WAKING = "waking"  # a wake runs: scale-up requested or in flight, waiting for an endpoint
    READY = "ready"  # the backend reports a ready endpoint; requests are forwarded
    UNREADY = "unready"  # scaled up, no ready endpoint, no wake running (endpoints went away)
    FAILED = "failed"  # the last wake failed, or the project runs elsewhere and fails
    SLEEPING = "sleeping"  # a scale-down is requested or in flight


class State(enum.StrEnum):
    """What the admin API, metrics and the waiting page show (``Phase`` folded to four states)."""

    ASLEEP = "asleep"
    WAKING = "waking"
    READY = "ready"
    FAILED = "failed"


SHOWN: dict[Phase, State] = {
    Phase.ASLEEP: State.ASLEEP, Phase.UNREADY: State.ASLEEP, Phase.SLEEPING: State.ASLEEP,
    Phase.WAKING: State.WAKING, Phase.READY: State.READY, Phase.FAILED: State.FAILED,
}


class Op(enum.Enum):
    """The backend operation in flight for the project."""

    NONE = "none"
    UP = "up"
    DOWN = "down"


class Mode(enum.Enum):
    """How the project is run (the coming ``Project`` resource's ``spec.mode`` and keep-warm windows)."""

    AUTO = "Auto"  # wake on request, sleep when idle
    RUNNING = "Running"  # kept up: woken at once, never put to sleep when idle
    SUSPENDED = "Suspended"  # never woken: requests are rejected


@dataclass(frozen=True, slots=True)
class Machine:
    phase: Phase = Phase.ASLEEP
    op: Op = Op.NONE
    wake: int = 0  # id of the current (or last) wake; results of older wakes are recognised
    held: int = 0  # requests waiting for a ready endpoint
    endpoints: bool = False  # the backend's latest report has a ready endpoint
    mode: Mode = Mode.AUTO


INITIAL = Machine()


# --- events ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hold:
    """A request wants an endpoint and there is none: it waits (or is rejected)."""


@dataclass(frozen=True, slots=True)
class Wake:
    """Wake without holding a request (admin activate)."""


@dataclass(frozen=True, slots=True)
class Left:
    """One held request stopped waiting (its own hold timeout, or its client went away)."""


@dataclass(frozen=True, slots=True)
class EndpointsChanged:
    present: bool


@dataclass(frozen=True, slots=True)
class ScaleUpDone:
    wake: int
    ok: bool
    unavailable: bool = False  # the backend could not be reached (worth retrying), not the project failing
    error: str = ""


@dataclass(frozen=True, slots=True)
class ScaleDownDone:
    ok: bool  # False: refused (another replica used it) or failed; the project still runs


@dataclass(frozen=True, slots=True)
class WakeDeadline:
    wake: int


@dataclass(frozen=True, slots=True)
class BackendFailed:
    """The backend reports the project failing (CrashLoopBackOff, image pull, exited process)."""

    error: str


@dataclass(frozen=True, slots=True)
class IdleDeadline:
    """The reaper's look: ``quiet`` when no replica saw activity within the idle timeout."""

    quiet: bool
    in_flight: int


@dataclass(frozen=True, slots=True)
class Deactivate:
    """An operator puts the project to sleep now (admin deactivate)."""


@dataclass(frozen=True, slots=True)
class Drain:
    """The gateway stops: held requests are answered."""


@dataclass(frozen=True, slots=True)
class Remove:
    """The project was deleted."""


@dataclass(frozen=True, slots=True)
class ModeChanged:
    mode: Mode


Event = (Hold | Wake | Left | EndpointsChanged | ScaleUpDone | ScaleDownDone | WakeDeadline | BackendFailed
         | IdleDeadline | Deactivate | Drain | Remove | ModeChanged)


# --- actions -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ScaleUp:
    wake: int


@dataclass(frozen=True, slots=True)
class ScaleDown:
    pass


@dataclass(frozen=True, slots=True)
class ArmDeadline:
    """Bound the wake ``wake``: send :class:`WakeDeadline` when its hold timeout has passed."""

    wake: int


@dataclass(frozen=True, slots=True)
class WakeStarted:
    previous: Phase


@dataclass(frozen=True, slots=True)
class WakeEnded:
    result: str  # ready | failed | timeout
    error: str = ""


@dataclass(frozen=True, slots=True)
class BecameReady:
    """Ready endpoints arrived: clear the last error; a project found running gets an idle period."""


@dataclass(frozen=True, slots=True)
class Release:
    """Every held request (and every admin waiter) may pick an endpoint now."""


@dataclass(frozen=True, slots=True)
class Fail:
    """Every held request (and admin waiter) is answered: ``reason`` is failed | unavailable |
    timeout | removed | draining | suspended."""

    reason: str


@dataclass(frozen=True, slots=True)
class Reject:
    """The request that sent :class:`Hold` is answered ``reason`` at once, without being held."""

    reason: str


@dataclass(frozen=True, slots=True)
class Touch:
    """Record activity now: a project found failing gets an idle period before it is reaped."""


@dataclass(frozen=True, slots=True)
class ForgetEndpoints:
    """The endpoints reported while scaling down belonged to what was scaled down."""


Action = (ScaleUp | ScaleDown | ArmDeadline | WakeStarted | WakeEnded | BecameReady | Release | Fail | Reject
          | Touch | ForgetEndpoints)
Step = tuple[Machine, tuple[Action, ...]]

_NOTHING: tuple[Action, ...] = ()
_RELEASE = Release()
_SCALE_DOWN = ScaleDown()
_TOUCH = Touch()
_BECAME_READY = BecameReady()
_FORGET = ForgetEndpoints()
# Phases in which the project may be up (scaled to one or more), so a sleep has something to do:
# all but ASLEEP and SLEEPING.
MAYBE_UP = frozenset({Phase.WAKING, Phase.READY, Phase.UNREADY, Phase.FAILED})


# --- building blocks -----------------------------------------------------------------------------


def _start_wake(m: Machine, held: int) -> Step:
    """Start a new wake; its scale-up waits for an operation in flight to end (ScaleUpDone or
    ScaleDownDone asks for it then)."""
    if m.endpoints and m.op is Op.UP:  # a sleep waiting for a scale-up: it is still up and ready
        return _ready(replace(m, held=held))
    wake = m.wake + 1
    acts: list[Action] = [WakeStarted(m.phase)]
    op = m.op
    if op is Op.NONE:
        acts.append(ScaleUp(wake))
        op = Op.UP
    return replace(m, phase=Phase.WAKING, op=op, wake=wake, held=held), tuple(acts)


def _ready(m: Machine) -> Step:
    acts: list[Action] = []
    if m.phase is Phase.WAKING:
        acts.append(WakeEnded("ready"))
    acts += (_BECAME_READY, _RELEASE)  # every held request and admin waiter may pick an endpoint now
    return replace(m, phase=Phase.READY, held=0, endpoints=True), tuple(acts)


def _fail_held(m: Machine, reason: str, acts: list[Action], *, waiters_too: bool = False) -> Machine:
    """Answer the held requests with ``reason`` (and, ``waiters_too``, admin waiters even when no
    request is held)."""
    if m.held or waiters_too:
        acts.append(Fail(reason))
        return replace(m, held=0)
    return m


def _wake_failed(m: Machine, result: str, reason: str, error: str) -> Step:
    acts: list[Action] = [WakeEnded(result, error)]
    m = _fail_held(replace(m, phase=Phase.FAILED), reason, acts, waiters_too=True)
    return m, tuple(acts)


def _go_to_sleep(m: Machine, acts: list[Action]) -> Machine:
    """Enter SLEEPING: a wake in progress is superseded (its waiters wake it again afterwards), the
    scale-down waits for an operation in flight."""
    wake = m.wake + 1 if m.phase is Phase.WAKING else m.wake
    op = m.op
    if op is Op.NONE:
        acts.append(_SCALE_DOWN)
        op = Op.DOWN
    return replace(m, phase=Phase.SLEEPING, op=op, wake=wake)


def _sleep(m: Machine) -> Step:
    acts: list[Action] = []
    return _go_to_sleep(m, acts), tuple(acts)


# --- the transitions, one function per event ------------------------------------------------------


def _on_hold(m: Machine, e: Hold) -> Step:
    if m.mode is Mode.SUSPENDED:
        return m, (Reject("suspended"),)
    if m.phase is Phase.READY:
        return m, (_RELEASE,)
    if m.phase is Phase.WAKING:
        return replace(m, held=m.held + 1), _NOTHING
    return _start_wake(m, m.held + 1)  # from SLEEPING: the scale-up follows the scale-down


def _on_wake(m: Machine, e: Wake) -> Step:
    if m.mode is Mode.SUSPENDED or m.phase is Phase.READY or m.phase is Phase.WAKING:
        return m, _NOTHING
    return _start_wake(m, m.held)


def _on_left(m: Machine, e: Left) -> Step:
    if m.held <= 0:
        raise ValueError("Left without a held request")
    return replace(m, held=m.held - 1), _NOTHING


def _on_endpoints(m: Machine, e: EndpointsChanged) -> Step:
    m = replace(m, endpoints=e.present)
    if m.op is Op.DOWN or m.phase is Phase.SLEEPING:
        return m, _NOTHING  # addresses of what is being scaled down
    if m.mode is Mode.SUSPENDED:
        return _sleep(m) if e.present else (m, _NOTHING)
    if e.present:
        return (m, _NOTHING) if m.phase is Phase.READY else _ready(m)
    if m.phase is Phase.READY:
        return replace(m, phase=Phase.UNREADY), _NOTHING
    return m, _NOTHING


def _on_scale_up_done(m: Machine, e: ScaleUpDone) -> Step:
    if m.op is not Op.UP:
        raise ValueError("ScaleUpDone without a scale-up in flight")
    m = replace(m, op=Op.NONE)
    if m.phase is Phase.SLEEPING:
        return replace(m, op=Op.DOWN), (_SCALE_DOWN,)
    if m.phase is not Phase.WAKING:
        return m, _NOTHING  # ready already, or failed meanwhile
    if e.wake != m.wake:  # it was for a wake that ended; this wake scales up on its own
        return replace(m, op=Op.UP), (ScaleUp(m.wake),)
    if e.ok:
        return m, (ArmDeadline(m.wake),)
    return _wake_failed(m, "failed", "unavailable" if e.unavailable else "failed", e.error)


def _on_scale_down_done(m: Machine, e: ScaleDownDone) -> Step:
    if m.op is not Op.DOWN:
        raise ValueError("ScaleDownDone without a scale-down in flight")
    m = replace(m, op=Op.NONE)
    acts: list[Action] = []
    if e.ok:
        m = replace(m, endpoints=False)
        acts.append(_FORGET)
    elif m.endpoints and m.mode is not Mode.SUSPENDED:
        step_m, step_acts = _ready(m)  # still running and ready: serve it (and whoever waits)
        return step_m, (*acts, *step_acts)
    if m.phase is Phase.WAKING:  # a wake arrived during the scale-down
        return replace(m, op=Op.UP), (*acts, ScaleUp(m.wake))
    if m.held:
        step_m, step_acts = _start_wake(m, m.held)
        return step_m, (*acts, *step_acts)
    return replace(m, phase=Phase.ASLEEP if e.ok else Phase.UNREADY), tuple(acts)


def _on_wake_deadline(m: Machine, e: WakeDeadline) -> Step:
    if m.phase is not Phase.WAKING or e.wake != m.wake or m.op is not Op.NONE:
        return m, _NOTHING
    return _wake_failed(m, "timeout", "timeout", "")


def _on_backend_failed(m: Machine, e: BackendFailed) -> Step:
    if m.phase is Phase.WAKING and m.op is not Op.DOWN:
        return _wake_failed(m, "failed", "failed", e.error)
    if m.mode is not Mode.SUSPENDED and ((m.phase is Phase.ASLEEP and m.op is Op.NONE) or m.phase is Phase.UNREADY):
        # Scaled up elsewhere (another replica, a person) and failing: shown as failed, with an
        # idle period, so the reaper scales it back down instead of ignoring it.
        return replace(m, phase=Phase.FAILED), (_TOUCH,)
    return m, _NOTHING


def _on_idle(m: Machine, e: IdleDeadline) -> Step:
    if (not e.quiet or e.in_flight or m.held or m.mode is Mode.RUNNING or m.phase not in MAYBE_UP
            or (m.phase is Phase.WAKING and m.op is Op.DOWN)):
        return m, _NOTHING
    return _sleep(m)


def _on_deactivate(m: Machine, e: Deactivate) -> Step:
    if m.phase is Phase.SLEEPING or (m.phase is Phase.ASLEEP and m.op is not Op.NONE):
        return m, _NOTHING
    return _sleep(m)


def _on_drain(m: Machine, e: Drain) -> Step:
    acts: list[Action] = []
    return _fail_held(m, "draining", acts), tuple(acts)


def _on_remove(m: Machine, e: Remove) -> Step:
    acts: list[Action] = []
    return _fail_held(m, "removed", acts), tuple(acts)


def _on_mode(m: Machine, e: ModeChanged) -> Step:
    m = replace(m, mode=e.mode)
    if e.mode is Mode.SUSPENDED:
        acts: list[Action] = []
        m = _fail_held(m, "suspended", acts, waiters_too=True)
        if m.phase in MAYBE_UP:
            m = _go_to_sleep(m, acts)
        return m, tuple(acts)
    if m.endpoints and m.op is not Op.DOWN and m.phase not in (Phase.READY, Phase.SLEEPING):
        return _ready(m)  # it ran while suspended (a refused scale-down): serve it now
    if e.mode is Mode.RUNNING:
        return _on_wake(m, Wake())
    return m, _NOTHING


TRANSITIONS: dict[type[Any], Callable[[Machine, Any], Step]] = {
    Hold: _on_hold,
    Wake: _on_wake,
    Left: _on_left,
    EndpointsChanged: _on_endpoints,
    ScaleUpDone: _on_scale_up_done,
    ScaleDownDone: _on_scale_down_done,
    WakeDeadline: _on_wake_deadline,
    BackendFailed: _on_backend_failed,
    IdleDeadline: _on_idle,
    Deactivate: _on_deactivate,
    Drain: _on_drain,
    Remove: _on_remove,
    ModeChanged: _on_mode,
}


def transition(m: Machine, event: Event) -> Step:
    """The machine after ``event`` and the actions it asks for, in the order to carry them out.
    Raises ``ValueError`` for an event that cannot happen in ``m`` (a caller's bug)."""
    return TRANSITIONS[type(event)](m, event)


def check(m: Machine) -> None:
    """Raise ``AssertionError`` naming the broken rule when ``m`` is not a possible machine."""
    assert m.held >= 0, "negative held count"
    assert not m.held or m.phase in (Phase.WAKING, Phase.SLEEPING), f"held requests while {m.phase.value}"
    assert m.op is not Op.DOWN or m.phase in (Phase.SLEEPING, Phase.WAKING), \
        f"scale-down in flight while {m.phase.value}"
    assert m.phase is not Phase.SLEEPING or m.op is not Op.NONE, "sleeping without an operation"
    assert m.phase is not Phase.READY or m.endpoints, "ready without an endpoint"
    assert m.mode is not Mode.SUSPENDED or m.phase not in (Phase.WAKING, Phase.READY), "suspended but awake"
    assert not (m.endpoints and m.op is not Op.DOWN and m.phase not in (Phase.READY, Phase.SLEEPING)
                and m.mode is not Mode.SUSPENDED), f"an endpoint but {m.phase.value}"
