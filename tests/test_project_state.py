"""The project lifecycle's state machine (gateway.project_state), pure: the whole table, every
reachable machine against every event, and random event sequences against the rules it promises."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway import project_state as ps
from gateway.project_state import INITIAL, Machine, Mode, Op, Phase

# One machine per phase, as a project usually is in it (waking: one request held, its scale-up
# in flight or done).
BASE = {
    "asleep": Machine(),
    "scaling up": Machine(Phase.WAKING, op=Op.UP, wake=1, held=1),
 "waking": Machine(Phase.WAKING, wake=1, held=1),
    "ready": Machine(Phase.READY, wake=1, endpoints=True),
    "unready": Machine(Phase.UNREADY, wake=1),
    "failed": Machine(Phase.FAILED, wake=1),
    "sleeping": Machine(Phase.SLEEPING, op=Op.DOWN, wake=1),
}
EVENTS: dict[str, ps.Event] = {
    "hold": ps.Hold(), "wake": ps.Wake(), "left": ps.Left(), "endpoints": ps.EndpointsChanged(True),
    "no endpoints": ps.EndpointsChanged(False), "scaled up": ps.ScaleUpDone(1, True),
    "scale-up failed": ps.ScaleUpDone(1, False, error="e"), "scaled down": ps.ScaleDownDone(True),
    "refused down": ps.ScaleDownDone(False), "deadline": ps.WakeDeadline(1), "backend failed": ps.BackendFailed("x"),
    "idle": ps.IdleDeadline(True, 0), "not quiet": ps.IdleDeadline(False, 0), "in flight": ps.IdleDeadline(True, 1),
    "deactivate": ps.Deactivate(), "drain": ps.Drain(), "remove": ps.Remove(),
    "suspend": ps.ModeChanged(Mode.SUSPENDED), "keep running": ps.ModeChanged(Mode.RUNNING),
    "auto": ps.ModeChanged(Mode.AUTO),
}

# (phase, event) -> (the machine after, the actions in order); "ValueError": the event cannot happen there.
TABLE = {
    ("asleep", "hold"): ("waking op=up held=1", "WakeStarted ScaleUp"),
    ("asleep", "wake"): ("waking op=up", "WakeStarted ScaleUp"),
    ("asleep", "left"): ("ValueError", ""),
    ("asleep", "endpoints"): ("ready", "BecameReady Release"),
    ("asleep", "no endpoints"): ("asleep", ""),
    ("asleep", "scaled up"): ("ValueError", ""),
    ("asleep", "scale-up failed"): ("ValueError", ""),
    ("asleep", "scaled down"): ("ValueError", ""),
    ("asleep", "refused down"): ("ValueError", ""),
    ("asleep", "deadline"): ("asleep", ""),
    ("asleep", "backend failed"): ("failed", "Touch"),
    ("asleep", "idle"): ("asleep", ""),
    ("asleep", "not quiet"): ("asleep", ""),
    ("asleep", "in flight"): ("asleep", ""),
    ("asleep", "deactivate"): ("sleeping op=down", "ScaleDown"),
    ("asleep", "drain"): ("asleep", ""),
    ("asleep", "remove"): ("asleep", ""),
    ("asleep", "suspend"): ("asleep Suspended", "Fail(suspended)"),
    ("asleep", "keep running"): ("waking op=up Running", "WakeStarted ScaleUp"),
    ("asleep", "auto"): ("asleep", ""),
    ("scaling up", "hold"): ("waking op=up held=2", ""),
    ("scaling up", "wake"): ("waking op=up held=1", ""),
    ("scaling up", "left"): ("waking op=up", ""),
    ("scaling up", "endpoints"): ("ready op=up", "WakeEnded(ready) BecameReady Release"),
    ("scaling up", "no endpoints"): ("waking op=up held=1", ""),
    ("scaling up", "scaled up"): ("waking held=1", "ArmDeadline"),
    ("scaling up", "scale-up failed"): ("failed", "WakeEnded(failed) Fail(failed)"),
    ("scaling up", "scaled down"): ("ValueError", ""),
    ("scaling up", "refused down"): ("ValueError", ""),
    ("scaling up", "deadline"): ("waking op=up held=1", ""),
    ("scaling up", "backend failed"): ("failed op=up", "WakeEnded(failed) Fail(failed)"),
    ("scaling up", "idle"): ("waking op=up held=1", ""),
    ("scaling up", "not quiet"): ("waking op=up held=1", ""),
    ("scaling up", "in flight"): ("waking op=up held=1", ""),
    ("scaling up", "deactivate"): ("sleeping op=up held=1", ""),
    ("scaling up", "drain"): ("waking op=up", "Fail(draining)"),
    ("scaling up", "remove"): ("waking op=up", "Fail(removed)"),
    ("scaling up", "suspend"): ("sleeping op=up Suspended", "Fail(suspended)"),
    ("scaling up", "keep running"): ("waking op=up held=1 Running", ""),
    ("scaling up", "auto"): ("waking op=up held=1", ""),
    ("waking", "hold"): ("waking held=2", ""),
    ("waking", "wake"): ("waking held=1", ""),
    ("waking", "left"): ("waking", ""),
    ("waking", "endpoints"): ("ready", "WakeEnded(ready) BecameReady Release"),
    ("waking", "no endpoints"): ("waking held=1", ""),
    ("waking", "scaled up"): ("ValueError", ""),
    ("waking", "scale-up failed"): ("ValueError", ""),
    ("waking", "scaled down"): ("ValueError", ""),
    ("waking", "refused down"): ("ValueError", ""),
    ("waking", "deadline"): ("failed", "WakeEnded(timeout) Fail(timeout)"),
    ("waking", "backend failed"): ("failed", "WakeEnded(failed) Fail(failed)"),
    ("waking", "idle"): ("waking held=1", ""),
    ("waking", "not quiet"): ("waking held=1", ""),
    ("waking", "in flight"): ("waking held=1", ""),
    ("waking", "deactivate"): ("sleeping op=down held=1", "ScaleDown"),
    ("waking", "drain"): ("waking", "Fail(draining)"),
    ("waking", "remove"): ("waking", "Fail(removed)"),
    ("waking", "suspend"): ("sleeping op=down Suspended", "Fail(suspended) ScaleDown"),
    ("waking", "keep running"): ("waking held=1 Running", ""),
    ("waking", "auto"): ("waking held=1", ""),
    ("ready", "hold"): ("ready", "Release"),
    ("ready", "wake"): ("ready", ""),
    ("ready", "left"): ("ValueError", ""),
    ("ready", "endpoints"): ("ready", ""),
    ("ready", "no endpoints"): ("unready", ""),
    ("ready", "scaled up"): ("ValueError", ""),
    ("ready", "scale-up failed"): ("ValueError", ""),
    ("ready", "scaled down"): ("ValueError", ""),
    ("ready", "refused down"): ("ValueError", ""),
    ("ready", "deadline"): ("ready", ""),
    ("ready", "backend failed"): ("ready", ""),
    ("ready", "idle"): ("sleeping op=down", "ScaleDown"),
    ("ready", "not quiet"): ("ready", ""),
    ("ready", "in flight"): ("ready", ""),
    ("ready", "deactivate"): ("sleeping op=down", "ScaleDown"),
    ("ready", "drain"): ("ready", ""),
    ("ready", "remove"): ("ready", ""),
    ("ready", "suspend"): ("sleeping op=down Suspended", "Fail(suspended) ScaleDown"),
    ("ready", "keep running"): ("ready Running", ""),
    ("ready", "auto"): ("ready", ""),
    ("unready", "hold"): ("waking op=up held=1", "WakeStarted ScaleUp"),
    ("unready", "wake"): ("waking op=up", "WakeStarted ScaleUp"),
    ("unready", "left"): ("ValueError", ""),
    ("unready", "endpoints"): ("ready", "BecameReady Release"),
    ("unready", "no endpoints"): ("unready", ""),
    ("unready", "scaled up"): ("ValueError", ""),
    ("unready", "scale-up failed"): ("ValueError", ""),
    ("unready", "scaled down"): ("ValueError", ""),
    ("unready", "refused down"): ("ValueError", ""),
    ("unready", "deadline"): ("unready", ""),
    ("unready", "backend failed"): ("failed", "Touch"),
    ("unready", "idle"): ("sleeping op=down", "ScaleDown"),
    ("unready", "not quiet"): ("unready", ""),
    ("unready", "in flight"): ("unready", ""),
    ("unready", "deactivate"): ("sleeping op=down", "ScaleDown"),
    ("unready", "drain"): ("unready", ""),
    ("unready", "remove"): ("unready", ""),
    ("unready", "suspend"): ("sleeping op=down Suspended", "Fail(suspended) ScaleDown"),
    ("unready", "keep running"): ("waking op=up Running", "WakeStarted ScaleUp"),
    ("unready", "auto"): ("unready", ""),
    ("failed", "hold"): ("waking op=up held=1", "WakeStarted ScaleUp"),
    ("failed", "wake"): ("waking op=up", "WakeStarted ScaleUp"),
    ("failed", "left"): ("ValueError", ""),
    ("failed", "endpoints"): ("ready", "BecameReady Release"),
    ("failed", "no endpoints"): ("failed", ""),
    ("failed", "scaled up"): ("ValueError", ""),
    ("failed", "scale-up failed"): ("ValueError", ""),
    ("failed", "scaled down"): ("ValueError", ""),
    ("failed", "refused down"): ("ValueError", ""),
    ("failed", "deadline"): ("failed", ""),
    ("failed", "backend failed"): ("failed", ""),
    ("failed", "idle"): ("sleeping op=down", "ScaleDown"),
    ("failed", "not quiet"): ("failed", ""),
    ("failed", "in flight"): ("failed", ""),
    ("failed", "deactivate"): ("sleeping op=down", "ScaleDown"),
    ("failed", "drain"): ("failed", ""),
    ("failed", "remove"): ("failed", ""),
    ("failed", "suspend"): ("sleeping op=down Suspended", "Fail(suspended) ScaleDown"),
    ("failed", "keep running"): ("waking op=up Running", "WakeStarted ScaleUp"),
    ("failed", "auto"): ("failed", ""),
    ("sleeping", "hold"): ("waking op=down held=1", "WakeStarted"),
    ("sleeping", "wake"): ("waking op=down", "WakeStarted"),
    ("sleeping", "left"): ("ValueError", ""),
    ("sleeping", "endpoints"): ("sleeping op=down", ""),
    ("sleeping", "no endpoints"): ("sleeping op=down", ""),
    ("sleeping", "scaled up"): ("ValueError", ""),
    ("sleeping", "scale-up failed"): ("ValueError", ""),
    ("sleeping", "scaled down"): ("asleep", "ForgetEndpoints"),
    ("sleeping", "refused down"): ("unready", ""),
    ("sleeping", "deadline"): ("sleeping op=down", ""),
    ("sleeping", "backend failed"): ("sleeping op=down", ""),
    ("sleeping", "idle"): ("sleeping op=down", ""),
    ("sleeping", "not quiet"): ("sleeping op=down", ""),
    ("sleeping", "in flight"): ("sleeping op=down", ""),
    ("sleeping", "deactivate"): ("sleeping op=down", ""),
    ("sleeping", "drain"): ("sleeping op=down", ""),
    ("sleeping", "remove"): ("sleeping op=down", ""),
    ("sleeping", "suspend"): ("sleeping op=down Suspended", "Fail(suspended)"),
    ("sleeping", "keep running"): ("waking op=down Running", "WakeStarted"),
    ("sleeping", "auto"): ("sleeping op=down", ""),
}


def shown(m: Machine) -> str:
    text = m.phase.value
    if m.op is not Op.NONE:
        text += f" op={m.op.value}"
    if m.held:
        text += f" held={m.held}"
    if m.mode is not Mode.AUTO:
        text += f" {m.mode.value}"
    return text


def names(actions: tuple[ps.Action, ...]) -> str:
    out = []
    for a in actions:
        name = type(a).__name__
        if isinstance(a, ps.Fail | ps.Reject):
            name += f"({a.reason})"
        elif isinstance(a, ps.WakeEnded):
            name += f"({a.result})"
        out.append(name)
    return " ".join(out)


def test_the_table_covers_every_phase_and_every_event() -> None:
    assert set(TABLE) == {(p, e) for p in BASE for e in EVENTS}
    assert {m.phase for m in BASE.values()} == set(Phase)
    assert set(ps.TRANSITIONS) == {type(e) for e in EVENTS.values()}


@pytest.mark.parametrize(("phase", "event"), sorted(TABLE))
def test_transition_table(phase: str, event: str) -> None:
    want_machine, want_actions = TABLE[phase, event]
    if want_machine == "ValueError":
        with pytest.raises(ValueError):
            ps.transition(BASE[phase], EVENTS[event])
        return
    after, actions = ps.transition(BASE[phase], EVENTS[event])
    assert (shown(after), names(actions)) == (want_machine, want_actions)
    ps.check(after)


# --- every reachable machine against every event ---------------------------------------------------------------


def events_for(m: Machine) -> list[ps.Event]:
    """Every event, with the wake ids that matter in ``m`` (the current wake and an older one)."""
    with_ids = ps.WakeDeadline | ps.ScaleUpDone | ps.ScaleDownDone
    out: list[ps.Event] = [e for e in EVENTS.values() if not isinstance(e, with_ids)]
    out += [ps.WakeDeadline(m.wake), ps.WakeDeadline(m.wake - 1)]
    if m.op is Op.UP:
        for wake in (m.wake, m.wake - 1):
            out += [ps.ScaleUpDone(wake, True), ps.ScaleUpDone(wake, False, unavailable=True, error="e")]
    if m.op is Op.DOWN:
        out += [ps.ScaleDownDone(True), ps.ScaleDownDone(False)]
    if m.held:
        out.append(ps.Left())
    else:
        out = [e for e in out if not isinstance(e, ps.Left)]
    return out


def reachable() -> set[Machine]:
    """Every machine reachable from the initial one (held requests capped at 2, wake ids at 4)."""
    seen = {INITIAL}
    todo = [INITIAL]
    while todo:
        m = todo.pop()
        for e in events_for(m):
            after, _ = ps.transition(m, e)
            if after.held <= 2 and after.wake <= 4 and after not in seen:
                seen.add(after)
                todo.append(after)
    return seen


REACHABLE = reachable()


def test_the_reachable_machines_are_many_and_all_possible() -> None:
    assert len(REACHABLE) > 100
    assert {m.phase for m in REACHABLE} == set(Phase) and {m.op for m in REACHABLE} == set(Op)
    assert {m.mode for m in REACHABLE} == set(Mode)
    for m in REACHABLE:
        ps.check(m)


def test_every_reachable_machine_against_every_event_keeps_the_rules() -> None:
    checked = 0
    for m in REACHABLE:
        for e in events_for(m):
            after, actions = ps.transition(m, e)
            ps.check(after)
            kinds = Counter(type(a) for a in actions)
            # One backend operation at a time: a new one only when none is in flight (or the one
            # in flight just finished), and the machine then records it.
            finished = isinstance(e, ps.ScaleUpDone | ps.ScaleDownDone)
            if kinds[ps.ScaleUp] or kinds[ps.ScaleDown]:
                assert kinds[ps.ScaleUp] + kinds[ps.ScaleDown] == 1
                assert m.op is Op.NONE or finished, (m, e)
                assert after.op is (Op.UP if kinds[ps.ScaleUp] else Op.DOWN)
            elif not finished:
                assert after.op is m.op
            # Held requests leave only by an answer, or one by one by Left.
            if after.held < m.held and not isinstance(e, ps.Left):
                assert kinds[ps.Release] + kinds[ps.Fail] == 1 and after.held == 0
            # An idle deadline sleeps only a quiet project with nothing in flight or held.
            if isinstance(e, ps.IdleDeadline) and kinds[ps.ScaleDown]:
                assert e.quiet and e.in_flight == 0 and m.held == 0 and m.mode is not Mode.RUNNING
            if isinstance(e, ps.IdleDeadline) and (not e.quiet or e.in_flight or m.mode is Mode.RUNNING):
                assert (after, actions) == (m, ())
            # Suspended: nothing wakes it; a request is rejected at once.
            if after.mode is Mode.SUSPENDED:
                assert not kinds[ps.ScaleUp] and not kinds[ps.WakeStarted] and not kinds[ps.Release]
                if isinstance(e, ps.Hold):
                    assert actions == (ps.Reject("suspended"),) and after.held == m.held
            if kinds[ps.Reject]:
                assert isinstance(e, ps.Hold) and m.mode is Mode.SUSPENDED
            # A wake is announced once, when the phase becomes waking.
            if kinds[ps.WakeStarted]:
                assert after.phase is Phase.WAKING and after.wake == m.wake + 1 and m.phase is not Phase.WAKING
            checked += 1
    assert checked > 1000


def test_impossible_events_are_refused() -> None:
    with pytest.raises(ValueError):
        ps.transition(INITIAL, ps.Left())
    with pytest.raises(ValueError):
        ps.transition(INITIAL, ps.ScaleUpDone(0, True))
    with pytest.raises(ValueError):
        ps.transition(INITIAL, ps.ScaleDownDone(True))


def test_check_names_the_broken_rule() -> None:
    with pytest.raises(AssertionError, match="held requests while asleep"):
        ps.check(Machine(held=1))
    with pytest.raises(AssertionError, match="ready without an endpoint"):
        ps.check(Machine(Phase.READY))
    with pytest.raises(AssertionError, match="suspended but awake"):
        ps.check(Machine(Phase.READY, endpoints=True, mode=Mode.SUSPENDED))


# --- random event sequences ------------------------------------------------------------------------------


@dataclass
class World:
    """What surrounds the machine: the backend call in flight, armed deadlines, held requests,
    requests in flight; it checks every action against what it knows."""

    m: Machine = INITIAL
    pending: tuple[str, int] | None = None  # ("up", wake) | ("down", 0)
    deadlines: set[int] = field(default_factory=set)
    held: list[int] = field(default_factory=list)
    answered: set[int] = field(default_factory=set)
    left: set[int] = field(default_factory=set)
    in_flight: int = 0
    scale_ups: Counter[int] = field(default_factory=Counter)
    next_id: int = 0

    def step(self, e: ps.Event) -> tuple[ps.Action, ...]:
        before = self.m
        self.m, actions = ps.transition(before, e)
        ps.check(self.m)
        for a in actions:
            if isinstance(a, ps.ScaleUp):
                assert self.pending is None, "a second backend operation while one is in flight"
                self.pending = ("up", a.wake)
                self.scale_ups[a.wake] += 1
                assert self.scale_ups[a.wake] == 1, "two scale-ups for one wake"
            elif isinstance(a, ps.ScaleDown):
                assert self.pending is None, "a second backend operation while one is in flight"
                self.pending = ("down", 0)
                if isinstance(e, ps.IdleDeadline):
                    assert self.in_flight == 0 and before.held == 0, "an idle scale-down with requests"
            elif isinstance(a, ps.ArmDeadline):
                self.deadlines.add(a.wake)
            elif isinstance(a, ps.Release | ps.Fail):
                self.answered.update(self.held)
                self.held.clear()
        return actions

    def hold(self) -> None:
        actions = self.step(ps.Hold())
        if any(isinstance(a, ps.Reject | ps.Release) for a in actions):
            self.answered.add(self.next_id)  # answered at once (suspended / ready)
        else:
            self.held.append(self.next_id)
        self.next_id += 1
        assert self.m.held == len(self.held)

    def finish(self, ok: bool, unavailable: bool) -> None:
        assert self.pending is not None
        kind, wake = self.pending
        self.pending = None
        self.step(ps.ScaleUpDone(wake, ok, unavailable, "e") if kind == "up" else ps.ScaleDownDone(ok))

    def settle(self) -> None:
        """Let every backend call finish and every armed deadline fire, as time would."""
        for _ in range(50):
            if self.pending is not None:
                self.finish(True, False)
            elif self.deadlines:
                for wake in sorted(self.deadlines):
                    self.step(ps.WakeDeadline(wake))
                self.deadlines.clear()
            else:
                return
        raise AssertionError("the machine never settles")


MOVES = st.one_of(
    st.just(("hold",)), st.just(("left",)), st.just(("wake",)), st.just(("begin",)), st.just(("end",)),
    st.tuples(st.just("endpoints"), st.booleans()),
    st.tuples(st.just("finish"), st.booleans(), st.booleans()),
    st.just(("deadline",)), st.just(("backend failed",)),
    st.tuples(st.just("idle"), st.booleans()),
    st.just(("deactivate",)), st.just(("drain",)),
    st.tuples(st.just("mode"), st.sampled_from(list(Mode))),
)


@settings(max_examples=400, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
@given(st.lists(MOVES, max_size=60))
def test_random_event_sequences_keep_every_promise(moves: list[tuple[object, ...]]) -> None:
    w = World()
    for move in moves:
        kind = move[0]
        if kind == "hold":
            w.hold()
        elif kind == "left" and w.held:
            gone = w.held[len(w.held) // 2]
            w.held.remove(gone)
            w.left.add(gone)
            w.step(ps.Left())
        elif kind == "wake":
            w.step(ps.Wake())
        elif kind == "begin":
            w.in_flight += 1
        elif kind == "end" and w.in_flight:
            w.in_flight -= 1
        elif kind == "endpoints":
            w.step(ps.EndpointsChanged(bool(move[1])))
        elif kind == "finish" and w.pending is not None:
            w.finish(bool(move[1]), bool(move[2]))
        elif kind == "deadline" and w.deadlines:
            wake = min(w.deadlines)
            w.deadlines.discard(wake)
            w.step(ps.WakeDeadline(wake))
        elif kind == "backend failed":
            w.step(ps.BackendFailed("CrashLoopBackOff"))
        elif kind == "idle":
            w.step(ps.IdleDeadline(bool(move[1]), w.in_flight))
        elif kind == "deactivate":
            w.step(ps.Deactivate())
        elif kind == "drain":
            w.step(ps.Drain())
        elif kind == "mode":
            mode = move[1]
            assert isinstance(mode, Mode)
            w.step(ps.ModeChanged(mode))
        assert w.m.held == len(w.held)
    # Whatever happened, once the backend answers and time passes, no held request is left waiting.
    w.settle()
    assert w.held == [] and w.m.held == 0
    assert w.answered | w.left == set(range(w.next_id)) and not w.answered & w.left
