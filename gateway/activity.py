"""Pure idle rules: when may a project be put to sleep?"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SharedActivity:
    """A project's activity on the other gateway replicas: the latest activity there (wall-clock
    seconds), requests open there, and the replicas that did not answer lately (``unknown``: while
    any did not, the project is never idle — the decision fails closed)."""

    last_s: float | None = None
    open: int = 0
    unknown: tuple[str, ...] = ()


#: A single gateway: nothing elsewhere.
ALONE = SharedActivity()


def is_idle(
    *,
    now_wall_s: float,
    idle_timeout_s: float,
    last_activity_wall_s: float | None,
    in_flight: int,
    held: int,
    shared: SharedActivity = ALONE,
) -> bool:
    """A project is idle when nothing is in flight or held on any gateway replica, no replica
    has recorded activity within ``idle_timeout_s``, and every other replica has answered lately.

    A project with no recorded activity at all (e.g. found running at start-up) is *not* idle:
    the caller stamps it when it first sees it, so it gets a full idle period.
    """
    if in_flight > 0 or held > 0 or shared.open > 0 or shared.unknown:
        return False
    latest = max(
        (t for t in (last_activity_wall_s, shared.last_s) if t is not None),
        default=None,
    )
    if latest is None:
        return False
    return now_wall_s - latest >= idle_timeout_s


def seconds_until_idle(
    *, now_wall_s: float, idle_timeout_s: float, last_activity_wall_s: float | None
) -> float | None:
    """How long until the project may be idle if nothing happens; ``None`` when unknown."""
    if last_activity_wall_s is None:
        return None
    return max(0.0, idle_timeout_s - (now_wall_s - last_activity_wall_s))
