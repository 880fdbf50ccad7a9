"""Activity shared between gateway replicas without the API server — pure logic.

Every replica keeps its projects' activity (last activity, open connections, held requests) in
memory. The reaper Lease holder finds the other replicas in the gateway Service's EndpointSlices
(:func:`peers_from_slices`) and pulls one compact map from each on the admin port
(``GET /api/v1/activity``: :func:`encode_activity` on the serving side, :func:`decode_activity` on the
pulling side). Pulling rather than pushing keeps the holder the only party that needs to know who
its peers are, and a peer's silence is itself information: a replica that has not answered
recently blocks sleeps (:func:`verdict`) — the design fails closed. The API server sees no write for
any of this; its only role is the EndpointSlice (who the replicas are) and the Lease (who reaps).

Why fail closed is bounded: a replica whose pod is gone is gone from the EndpointSlice, and so
are its claims. Replicas listed as ready or terminating (a terminating replica drains open
connections) count; one that is neither receives no traffic and is ignored.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from gateway.activity import SharedActivity

Obj = dict[str, Any]

#: A snapshot older than this many pull intervals no longer speaks for its replica.
STALE_PULL_INTERVALS = 3.0


@dataclass(frozen=True, slots=True, order=True)
class Peer:
    """Another gateway replica, as its Service's EndpointSlice lists it."""

    name: str  # the pod's name (targetRef), else its address
    host: str
    port: int

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Activity:
    """One project's activity on one replica: last activity (wall-clock seconds, ``None`` if never)
    and requests open there now (in flight or held)."""

    last_s: float | None
    open: int


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What a peer answered: its projects' activity, as of ``asked_s`` (wall-clock time when the
    pull was sent, so anything the peer saw before answering is covered)."""

    asked_s: float
    projects: Mapping[str, Activity]


def peers_from_slices(slices: Iterable[Obj], port_name: str, own_name: str,
                      own_ip: str | None = None) -> tuple[Peer, ...]:
    """The other replicas in a Service's EndpointSlices: endpoints that are ready or terminating,
    at the port named ``port_name``, except this replica (its pod name ``own_name`` as targetRef,
    or its address ``own_ip``)."""
    found: set[Peer] = set()
    for s in slices:
        port = next((p.get("port") for p in s.get("ports") or [] if p.get("name") == port_name), None)
        if not isinstance(port, int):
            continue
        for ep in s.get("endpoints") or []:
            cond = ep.get("conditions") or {}
            # "ready" unset means ready (discovery.k8s.io/v1); terminating endpoints drain connections.
            if not (cond.get("ready") is not False or cond.get("terminating") is True):
                continue
            ref = ep.get("targetRef") or {}
            addrs = [a for a in ep.get("addresses") or [] if isinstance(a, str)]
            if not addrs:
                continue
            ref_name = ref.get("name")
            name = ref_name if isinstance(ref_name, str) else addrs[0]
            if name == own_name or (own_ip is not None and own_ip in addrs):
                continue
            found.add(Peer(name, addrs[0], port))
    return tuple(sorted(found))


def encode_activity(replica: str, now_s: float, projects: Mapping[str, Activity], since_s: float) -> Obj:
    """The answer to ``GET /api/v1/activity?since=…``: projects with requests open, or with activity
    at or after ``since_s`` (the others cannot matter to an idle decision)."""
    return {
        "replica": replica,
        "now": round(now_s, 3),
        "projects": {
            name: [None if a.last_s is None else round(a.last_s, 3), a.open]
            for name, a in projects.items()
            if a.open > 0 or (a.last_s is not None and a.last_s >= since_s)
        },
    }


def decode_activity(payload: Any, asked_s: float) -> Snapshot:
    """Parse a peer's answer. Raises ``ValueError`` naming the problem: a malformed answer counts as
    no answer."""
    if not isinstance(payload, dict) or not isinstance(payload.get("projects"), dict):
        raise ValueError("the answer is not an activity map")
    projects: dict[str, Activity] = {}
    for name, value in payload["projects"].items():
        if not (isinstance(name, str) and isinstance(value, list) and len(value) == 2):
            raise ValueError(f"bad entry for {name!r}")
        last, open_ = value
        if last is not None and not (isinstance(last, int | float) and math.isfinite(last)):
            raise ValueError(f"bad last activity for {name!r}")
        if not isinstance(open_, int) or isinstance(open_, bool) or open_ < 0:
            raise ValueError(f"bad open count for {name!r}")
        projects[name] = Activity(None if last is None else float(last), open_)
    return Snapshot(asked_s, projects)


def verdict(peers: Iterable[Peer], snapshots: Mapping[str, Snapshot], name: str, *, now_s: float,
            max_age_s: float) -> SharedActivity:
    """The other replicas' activity for project ``name``: every peer must have a snapshot taken
    within ``max_age_s``, or it is listed as unknown. A peer's missing entry means no activity
    there since the snapshot's ``since``."""
    last: float | None = None
    open_ = 0
    unknown: list[str] = []
    for peer in peers:
        snap = snapshots.get(peer.name)
        if snap is None or now_s - snap.asked_s > max_age_s:
            unknown.append(peer.name)
            continue
        a = snap.projects.get(name)
        if a is None:
            continue
        open_ += a.open
        if a.last_s is not None and (last is None or a.last_s > last):
            last = a.last_s
    return SharedActivity(last, open_, tuple(unknown))


def confirms_idle(seen: SharedActivity, confirmed: SharedActivity) -> bool:
    """Whether the peers' answers just before a sleep (``confirmed``) uphold the idle decision made
    from the last pulls (``seen``): every peer answered, none has requests open for the project, and
    none reports activity later than what the decision saw."""
    if confirmed.unknown or confirmed.open:
        return False
    return confirmed.last_s is None or (seen.last_s is not None and confirmed.last_s <= seen.last_s)
