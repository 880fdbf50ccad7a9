"""Leader election decisions over a ``coordination.k8s.io/v1`` Lease (pure).

Like client-go's leader election, expiry is judged by *local observation*: a Lease held by another
replica is taken over only when its record has not changed for a full lease duration as seen by this
replica's monotonic clock, so clock skew between machines does not matter. Every write carries the
Lease's resourceVersion; a 409 Conflict means another replica won.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gateway.backends.k8s.objects import format_time, meta


class Action(enum.StrEnum):
    CREATE = "create"  # no Lease yet
    RENEW = "renew"  # we hold it
    TAKE_OVER = "take_over"  # released, or expired as observed locally
    FOLLOW = "follow"  # someone else holds it


@dataclass(frozen=True, slots=True)
class LeaseRecord:
    holder: str | None
    duration_s: float
    resource_version: str
    transitions: int
    acquire_time: str | None

    @property
    def version(self) -> tuple[str | None, str]:
        """What identifies a change of the record (a renewal changes the resourceVersion)."""
        return self.holder, self.resource_version


def parse_lease(lease: Mapping[str, Any]) -> LeaseRecord:
    spec = lease.get("spec") or {}
    duration = spec.get("leaseDurationSeconds")
    return LeaseRecord(
        holder=spec.get("holderIdentity") or None,
        duration_s=float(duration) if isinstance(duration, int) and duration > 0 else 0.0,
        resource_version=str(meta(lease).get("resourceVersion") or ""),
        transitions=int(spec.get("leaseTransitions") or 0),
        acquire_time=spec.get("acquireTime"),
    )


def decide(record: LeaseRecord | None, me: str, observed_at_s: float, now_s: float,
           default_duration_s: float) -> Action:
    """What this replica should do with the Lease. ``observed_at_s`` is when (monotonic) this
    replica first saw the record's current version."""
    if record is None:
        return Action.CREATE
    if record.holder == me:
        return Action.RENEW
    if record.holder is None:
        return Action.TAKE_OVER
    duration = record.duration_s or default_duration_s
    return Action.TAKE_OVER if now_s - observed_at_s >= duration else Action.FOLLOW


def lease_body(name: str, namespace: str, me: str, duration_s: float, now_wall_s: float,
               previous: LeaseRecord | None) -> dict[str, Any]:
    """The Lease to create, or to replace ``previous`` with (keeping its resourceVersion as the
    precondition). A change of holder bumps ``leaseTransitions`` and resets ``acquireTime``."""
    now = format_time(now_wall_s)
    metadata: dict[str, Any] = {"name": name, "namespace": namespace}
    spec: dict[str, Any] = {
        "holderIdentity": me,
        "leaseDurationSeconds": max(1, round(duration_s)),
        "renewTime": now,
    }
    if previous is None:
        spec.update(acquireTime=now, leaseTransitions=0)
    else:
        metadata["resourceVersion"] = previous.resource_version
        same = previous.holder == me
        spec["acquireTime"] = (previous.acquire_time or now) if same else now
        spec["leaseTransitions"] = previous.transitions if same else previous.transitions + 1
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": metadata, "spec": spec}


def release_body(name: str, namespace: str, previous: LeaseRecord, now_wall_s: float) -> dict[str, Any]:
    """Give the Lease up on shutdown so another replica takes over at once, not after expiry."""
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": name, "namespace": namespace, "resourceVersion": previous.resource_version},
        "spec": {
            "holderIdentity": None,
            "leaseDurationSeconds": 1,
            "renewTime": format_time(now_wall_s),
            "acquireTime": previous.acquire_time,
            "leaseTransitions": previous.transitions,
        },
    }
