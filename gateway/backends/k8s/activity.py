"""Shared activity between gateway replicas, recorded as annotations on the project's Deployment.

Each replica owns one annotation ``wakegate.io/activity.<replica>`` whose value is
``"<last activity>;<open connections>;<written at>"`` (wall-clock seconds). A replica writes its own
key only (merge patches of different keys never conflict), at most once per write interval per
project, and keeps writing while it has connections open, so a claim of open connections that has
not been refreshed for :data:`STALE_INTERVALS` intervals is from a dead replica and is ignored.
``wakegate.io/last-activity`` (RFC 3339) is written alongside for people and ``wakegate project status``.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

from gateway.backends.k8s.objects import format_time, parse_time
from provisioner import labels as L

ACTIVITY_PREFIX = "wakegate.io/activity."
#: A record not rewritten for this many write intervals no longer proves open connections.
STALE_INTERVALS = 3.0
_NAME_PART_MAX = 63
_SAFE = re.compile(r"[^a-z0-9._-]+")


@dataclass(frozen=True, slots=True)
class ActivityRecord:
    last_activity_s: float
    in_flight: int
    written_s: float


def replica_key(replica_id: str) -> str:
    """The annotation key a replica writes. The name part must be a valid annotation name (at most
    63 characters of ``[a-z0-9._-]``, alphanumeric at both ends); other ids get a stable hash."""
    room = _NAME_PART_MAX - len("activity.")
    cleaned = _SAFE.sub("-", replica_id.lower()).strip("._-")
    if not cleaned or cleaned != replica_id or len(cleaned) > room:
        digest = hashlib.sha256(replica_id.encode()).hexdigest()[:12]
        cleaned = f"{cleaned[: room - 13].strip('._-')}-{digest}".strip("-")
    return ACTIVITY_PREFIX + cleaned


def encode(record: ActivityRecord) -> str:
    return f"{record.last_activity_s:.3f};{record.in_flight};{record.written_s:.3f}"


def decode(value: str) -> ActivityRecord | None:
    """Parse a record; None for anything malformed (a hand-edited annotation must not break reaping)."""
    parts = value.split(";")
    if len(parts) != 3:
        return None
    try:
        last, in_flight, written = float(parts[0]), int(parts[1]), float(parts[2])
    except ValueError:
        return None
    if not (math.isfinite(last) and math.isfinite(written)) or in_flight < 0:
        return None
    return ActivityRecord(last, in_flight, written)


def records(annotations: Mapping[str, str]) -> dict[str, ActivityRecord]:
    """Every well-formed replica record on a Deployment, by annotation key."""
    out = {}
    for key, value in annotations.items():
        if key.startswith(ACTIVITY_PREFIX) and isinstance(value, str):
            rec = decode(value)
            if rec is not None:
                out[key] = rec
    return out


def shared_activity(annotations: Mapping[str, str], own_key: str, now_s: float,
                    write_interval_s: float) -> tuple[float | None, int]:
    """Latest activity and open connections that *other* replicas recorded. Open connections count
    only while their record is fresh (rewritten within ``STALE_INTERVALS`` write intervals)."""
    latest: float | None = None
    in_flight = 0
    for key, rec in records(annotations).items():
        if key == own_key:
            continue
        latest = rec.last_activity_s if latest is None else max(latest, rec.last_activity_s)
        if rec.in_flight and now_s - rec.written_s <= STALE_INTERVALS * write_interval_s:
            in_flight += rec.in_flight
    return latest, in_flight


def prunable(annotations: Mapping[str, str], now_s: float, keep_s: float) -> list[str]:
    """Keys of records that no longer matter (neither written nor active within ``keep_s``): what
    replicas long gone leave behind. Malformed records are pruned too."""
    out = []
    for key, value in annotations.items():
        if not key.startswith(ACTIVITY_PREFIX):
            continue
        rec = decode(value) if isinstance(value, str) else None
        if rec is None or now_s - max(rec.written_s, rec.last_activity_s) > keep_s:
            out.append(key)
    return sorted(out)


def activity_patch(own_key: str, record: ActivityRecord, previous_last_activity: str | None) -> dict[str, object]:
    """Merge patch writing this replica's record, and ``wakegate.io/last-activity`` unless another
    replica already recorded a later time (it never moves backwards)."""
    ann: dict[str, str | None] = {own_key: encode(record)}
    prev = parse_time(previous_last_activity)
    if prev is None or record.last_activity_s > prev:
        ann[L.LAST_ACTIVITY_ANNOTATION] = format_time(record.last_activity_s)
    return {"metadata": {"annotations": ann}}


def prune_patch(keys: list[str]) -> dict[str, object]:
    """Merge patch deleting ``keys``."""
    return {"metadata": {"annotations": {k: None for k in keys}}}
