"""A Project's ``status``, derived from what the controller observes (pure).

The controller never counts requests: the phase follows from the project's Deployment and pods
(which the gateway scales) and from the controller's own last apply. :func:`status_update` returns a
new status only when something a reader can see changed, so the API write rate is one status write
per transition (provisioned, woken, ready, put to sleep, failed, suspended), never per request.

Phases: ``Provisioning`` (objects not applied yet for this generation), ``Sleeping`` (no replicas),
``Waking`` (scaled up, no ready pod yet), ``Running`` (a ready pod), ``Suspended`` (``spec.mode``),
``Failed`` (the spec or the apply was refused, or the pods cannot start: the ``Failed`` condition
quotes the cause). A failed wake stays ``Failed`` after the gateway scaled the project back down,
until the next wake starts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gateway import contract as C
from gateway.backends.k8s import objects as K

Obj = dict[str, Any]

PHASES = ("Provisioning", "Sleeping", "Waking", "Running", "Suspended", "Failed")
CONDITION_TYPES = ("Provisioned", "Ready", "Failed")


@dataclass(frozen=True, slots=True)
class Problem:
    """Why the project is failed: a CamelCase ``reason`` and a message quoting the cause."""

    reason: str
    message: str


@dataclass(frozen=True, slots=True)
class Observed:
    """What the controller knows about one Project at one moment."""

    generation: int
    namespace: str
    url: str
    #: The effective mode (``Running`` while a keep-warm window is open).
    mode: str
    #: Every object of this generation has been applied.
    provisioned: bool
    #: The spec or the apply was refused (``InvalidSpec``, ``NamespaceConflict``, ``ApplyFailed``).
    refused: Problem | None = None
    deployment: Mapping[str, Any] | None = None
    pods: Sequence[Mapping[str, Any]] = ()
    #: End of the keep-warm window in effect (RFC 3339), if one is.
    keep_warm_until: str | None = None


def pod_problem(deployment: Mapping[str, Any] | None, pods: Sequence[Mapping[str, Any]]) -> Problem | None:
    """Why the project's pods cannot become ready (only while it is scaled up): the container's waiting
    reason (``CrashLoopBackOff``, ``ErrImagePull``, …), or ``QuotaExceeded``/``PodSecurity``/
    ``FailedCreate`` when the Deployment cannot create its pods."""
    if deployment is None or K.spec_replicas(deployment) < 1:
        return None
    failure = K.deployment_failure(deployment)
    if failure:
        reason = ("QuotaExceeded" if "exceeded quota" in failure
                  else "PodSecurity" if "PodSecurity" in failure else "FailedCreate")
        return Problem(reason, failure)
    for pod in sorted(K.current_pods(pods), key=K.key_of):
        failure = K.pod_failure(pod)
        if failure:
            return Problem(_waiting_reason(pod), failure)
    return None


def _waiting_reason(pod: Mapping[str, Any]) -> str:
    """The first container waiting reason of ``pod`` that means it will not start (as
    :func:`~gateway.backends.k8s.objects.pod_failure` reports it)."""
    status = pod.get("status") or {}
    for group in ("initContainerStatuses", "containerStatuses"):
        for cs in status.get(group) or []:
            reason = ((cs.get("state") or {}).get("waiting") or {}).get("reason")
            if reason in K.FAILURE_REASONS:
                return str(reason)
    return "PodFailed"


def _ready_replicas(deployment: Mapping[str, Any] | None) -> int:
    status = (deployment or {}).get("status") or {}
    value = status.get("readyReplicas") or 0
    return value if isinstance(value, int) else 0


#: Reasons of a refused spec or apply (a failed wake's reasons are the pods').
REFUSAL_REASONS = ("InvalidSpec", "NamespaceConflict", "ApplyFailed")


def _failed_wake(current: Mapping[str, Any], generation: int) -> Problem | None:
    """The failed wake ``current`` reports for this generation, if it reports one."""
    if current.get("phase") != "Failed":
        return None
    for cond in current.get("conditions") or []:
        if (isinstance(cond, Mapping) and cond.get("type") == "Failed" and cond.get("status") == "True"
                and cond.get("reason") not in REFUSAL_REASONS and cond.get("observedGeneration") == generation):
            return Problem(str(cond.get("reason")), str(cond.get("message") or ""))
    return None


def phase_of(o: Observed, current: Mapping[str, Any] | None = None) -> tuple[str, Problem | None]:
    """The phase, and the problem that makes it ``Failed`` (if it is)."""
    if o.refused is not None:
        return "Failed", o.refused
    if not o.provisioned or o.deployment is None:
        return "Provisioning", None
    if o.mode == "Suspended":
        return "Suspended", None
    problem = pod_problem(o.deployment, o.pods)
    if problem is not None:
        return "Failed", problem
    if _ready_replicas(o.deployment) > 0:
        return "Running", None
    if K.spec_replicas(o.deployment) > 0:
        return "Waking", None
    kept = _failed_wake(current or {}, o.generation)
    if kept is not None:
        return "Failed", kept  # the failed wake's cause stays until the next wake (or a new spec)
    return "Sleeping", None


def _condition(kind: str, ok: bool, reason: str, message: str, generation: int) -> Obj:
    return {"type": kind, "status": "True" if ok else "False", "observedGeneration": generation,
            "reason": reason, "message": message}


def desired_status(o: Observed, current: Mapping[str, Any] | None = None) -> Obj:
    """The status ``o`` calls for, without ``lastTransitionTime`` (see :func:`status_update`)."""
    current = current or {}
    phase, problem = phase_of(o, current)
    if o.refused is not None:
        provisioned = _condition("Provisioned", False, o.refused.reason, o.refused.message, o.generation)
    elif o.provisioned:
        provisioned = _condition("Provisioned", True, "Applied", f"every object is applied in namespace "
                                 f"{o.namespace}", o.generation)
    else:
        provisioned = _condition("Provisioned", False, "Applying", f"applying the objects of namespace "
                                 f"{o.namespace}", o.generation)
    ready = _condition("Ready", phase == "Running", phase, _READY_MESSAGES[phase], o.generation)
    failed = (_condition("Failed", True, problem.reason, problem.message, o.generation) if problem is not None
              else _condition("Failed", False, "NoFailure", "", o.generation))
    status: Obj = {"phase": phase, "url": o.url, "namespace": o.namespace, "observedGeneration": o.generation,
                   "conditions": [provisioned, ready, failed]}
    last = K.parse_time(K.annotations_of(o.deployment or {}).get(C.LAST_ACTIVITY_ANNOTATION))
    if last is not None:
        status["lastActivityTime"] = K.format_time(last)[:19] + "Z"
    elif current.get("lastActivityTime"):
        status["lastActivityTime"] = current["lastActivityTime"]
    if o.keep_warm_until:
        status["keepWarmUntil"] = o.keep_warm_until
    return status


_READY_MESSAGES = {
    "Provisioning": "the project's objects are being applied",
    "Sleeping": "scaled to zero; the next request wakes it",
    "Waking": "scaled up; waiting for a ready pod",
    "Running": "a pod is ready",
    "Suspended": "spec.mode is Suspended: requests are refused and it is never woken",
    "Failed": "see the Failed condition",
}


def status_update(current: Mapping[str, Any] | None, desired: Obj, now: str) -> Obj | None:
    """The status to write as a JSON merge patch, or ``None`` when ``current`` already says everything
    ``desired`` says. A condition keeps its ``lastTransitionTime`` while its ``status`` stays the
    same; a field ``desired`` no longer has (``keepWarmUntil`` after its window) is ``None``, which a
    merge patch deletes."""
    current = current or {}
    before = {c.get("type"): c for c in current.get("conditions") or [] if isinstance(c, Mapping)}
    conditions = []
    for cond in desired["conditions"]:
        old = before.get(cond["type"]) or {}
        since = old.get("lastTransitionTime") if old.get("status") == cond["status"] else None
        conditions.append({**cond, "lastTransitionTime": since or now})
    new = {**desired, "conditions": conditions}
    if dict(current) == new:
        return None
    return {**new, **{key: None for key in current if key not in new}}
