"""Pure translations of Kubernetes objects (plain JSON dicts) into what the gateway needs.

Which Deployments are projects, their per-project settings, the ready pod addresses of a
project's EndpointSlices, and why a wake cannot succeed (Deployment conditions, pod states).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from gateway import contract as C
from gateway.backends.base import Endpoint, ProjectInfo, ProjectSettings

Obj = Mapping[str, Any]

#: Container waiting reasons that mean "this pod will not become ready without a change".
FAILURE_REASONS = frozenset({
    "CrashLoopBackOff",
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
})
POD_TEMPLATE_HASH_LABEL = "pod-template-hash"
SLICE_MANAGED_BY_LABEL = "endpointslice.kubernetes.io/managed-by"
#: EndpointSlices written by Kubernetes itself (from the Service's selector, or mirrored from Endpoints),
#: which list only pods of the Service's own namespace. Hand-written slices are ignored, so a project's
#: automation cannot point the gateway at arbitrary addresses.
TRUSTED_SLICE_MANAGERS = frozenset({"endpointslice-controller.k8s.io", "endpointslicemirroring-controller.k8s.io"})
MAX_MESSAGE = 400


@dataclass(frozen=True, slots=True)
class ProjectRef:
    """A project found in the cluster: its settings and where its Deployment lives."""

    info: ProjectInfo
    namespace: str
    created: str = ""  # the Deployment's creationTimestamp, to settle duplicate claims

    @property
    def name(self) -> str:
        return self.info.name


def meta(obj: Obj) -> Mapping[str, Any]:
    m = obj.get("metadata")
    return m if isinstance(m, Mapping) else {}


def key_of(obj: Obj) -> tuple[str, str]:
    """``(namespace, name)`` of an object (namespace ``""`` for cluster-scoped ones)."""
    m = meta(obj)
    return str(m.get("namespace") or ""), str(m.get("name") or "")


def labels_of(obj: Obj) -> Mapping[str, str]:
    lab = meta(obj).get("labels")
    return lab if isinstance(lab, Mapping) else {}


def annotations_of(obj: Obj) -> Mapping[str, str]:
    ann = meta(obj).get("annotations")
    return ann if isinstance(ann, Mapping) else {}


# --- projects ------------------------------------------------------------------------------------


def namespace_project(namespace: Obj) -> str | None:
    """The project a managed Namespace belongs to (its ``wakegate.io/project`` label), else None.

    Namespace labels are written by the provisioner and cannot be changed by a project's own
    automation, so they are what proves a Deployment's claim to a project name.
    """
    return C.managed_project(labels_of(namespace))


def deployment_project(deployment: Obj) -> str | None:
    """The project a Deployment claims to be: managed-by wakegate, named after its project label."""
    name = C.managed_project(labels_of(deployment))
    return name if name is not None and meta(deployment).get("name") == name else None


def project_settings(annotations: Mapping[str, str]) -> tuple[ProjectSettings, list[str]]:
    """Per-project settings from Deployment annotations, plus a message for each invalid one
    (an invalid annotation falls back to the gateway default instead of hiding the project; an
    invalid ``wakegate.io/mode`` to ``Auto``)."""
    problems: list[str] = []
    values: dict[str, Any] = {}
    for key, field, parse in ((C.IDLE_TIMEOUT_ANNOTATION, "idle_timeout_s", C.parse_seconds),
                              (C.HOLD_TIMEOUT_ANNOTATION, "hold_timeout_s", C.parse_seconds),
                              (C.STRATEGY_ANNOTATION, "strategy", C.strategy),
                              (C.MODE_ANNOTATION, "mode", C.mode)):
        raw = annotations.get(key)
        if raw is None:
            continue
        try:
            values[field] = parse(raw)
        except ValueError as exc:
            problems.append(f"annotation {key}: {exc}; using the default")
    return ProjectSettings(**values), problems


def project_ref(deployment: Obj, namespace: Obj | None) -> tuple[ProjectRef | None, list[str]]:
    """The project a Deployment is, if its Namespace confirms the claim; with annotation problems."""
    name = deployment_project(deployment)
    if name is None or namespace is None or namespace_project(namespace) != name:
        return None, []
    settings, problems = project_settings(annotations_of(deployment))
    ns = key_of(deployment)[0]
    info = ProjectInfo(name=name, settings=settings, location=f"namespace {ns}, deployment {name}")
    return ProjectRef(info, ns, str(meta(deployment).get("creationTimestamp") or "")), problems


def build_table(deployments: Iterable[Obj], namespaces: Mapping[str, Obj]) -> dict[str, ProjectRef]:
    """The project table. Two confirmed claims to one name (only possible with two namespace
    prefixes) are settled in favour of the older Deployment, then the namespace name."""
    table: dict[str, ProjectRef] = {}
    for dep in deployments:
        ref, _ = project_ref(dep, namespaces.get(key_of(dep)[0]))
        if ref is None:
            continue
        other = table.get(ref.name)
        if other is None or (ref.created, ref.namespace) < (other.created, other.namespace):
            table[ref.name] = ref
    return table


def spec_replicas(deployment: Obj) -> int:
    """``spec.replicas`` (the API server defaults a missing value to 1)."""
    spec = deployment.get("spec")
    value = spec.get("replicas", 1) if isinstance(spec, Mapping) else 1
    return int(value) if isinstance(value, int) else 1


# --- endpoints -----------------------------------------------------------------------------------


def slice_port(ports: Sequence[Obj]) -> int | None:
    """The slice's port named ``http``, else its only port; None when there is no usable one."""
    usable = [p for p in ports if isinstance(p.get("port"), int)]
    for p in usable:
        if p.get("name") == C.PORT_NAME:
            return int(p["port"])
    return int(usable[0]["port"]) if len(usable) == 1 else None


def ready_endpoints(slices: Iterable[Obj]) -> tuple[Endpoint, ...]:
    """Every ready, non-terminating pod address of a Service's EndpointSlices, sorted and unique.

    ``conditions.ready`` unset means unknown, which the API says consumers should treat as ready.
    Only the first address of an endpoint is used (the others are the same pod's).
    """
    found: set[Endpoint] = set()
    for s in slices:
        if s.get("addressType") not in ("IPv4", "IPv6"):
            continue
        port = slice_port(s.get("ports") or [])
        if port is None:
            continue
        for ep in s.get("endpoints") or []:
            cond = ep.get("conditions") or {}
            if cond.get("ready") is False or cond.get("terminating") is True:
                continue
            addresses = ep.get("addresses") or []
            if addresses:
                found.add(Endpoint(str(addresses[0]), port))
    return tuple(sorted(found, key=lambda e: (e.host, e.port)))


def slice_service(slice_: Obj) -> str | None:
    """The Service a Kubernetes-managed EndpointSlice belongs to; None for other slices."""
    lab = labels_of(slice_)
    if lab.get(SLICE_MANAGED_BY_LABEL) not in TRUSTED_SLICE_MANAGERS:
        return None
    return lab.get(C.SERVICE_NAME_LABEL) or None


# --- failures ------------------------------------------------------------------------------------


def _clip(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 1] + "…"


def deployment_failure(deployment: Obj) -> str | None:
    """Why the Deployment cannot create its pods (``ReplicaFailure``, e.g. quota or Pod Security).

    Only a status that reflects the current spec counts (``observedGeneration`` caught up), and only
    while it should run pods, so a condition left over from before a wake is not reported.
    """
    if spec_replicas(deployment) < 1:
        return None
    status = deployment.get("status") or {}
    generation = meta(deployment).get("generation")
    observed = status.get("observedGeneration")
    if isinstance(generation, int) and (not isinstance(observed, int) or observed < generation):
        return None
    for cond in status.get("conditions") or []:
        if cond.get("type") == "ReplicaFailure" and cond.get("status") == "True":
            ns, name = key_of(deployment)
            reason = cond.get("reason") or "ReplicaFailure"
            return _clip(f"deployment {ns}/{name} cannot create pods: {reason}: {cond.get('message') or ''}")
    return None


def current_pods(pods: Iterable[Obj]) -> list[Obj]:
    """The pods that decide a wake: not being deleted, and of the newest pod template (a rollout's
    old pods do not count once a newer template's pod exists)."""
    live = [p for p in pods if not meta(p).get("deletionTimestamp")]
    if not live:
        return []
    newest = max(live, key=lambda p: str(meta(p).get("creationTimestamp") or ""))
    template = labels_of(newest).get(POD_TEMPLATE_HASH_LABEL)
    return [p for p in live if labels_of(p).get(POD_TEMPLATE_HASH_LABEL) == template]


def pod_failure(pod: Obj) -> str | None:
    """Why a pod cannot become ready (CrashLoopBackOff, image pull errors, bad config), with the
    kubelet's message and the last exit, so a person can act on it."""
    status = pod.get("status") or {}
    ns, name = key_of(pod)
    for group in ("initContainerStatuses", "containerStatuses"):
        for cs in status.get(group) or []:
            waiting = (cs.get("state") or {}).get("waiting") or {}
            reason = waiting.get("reason")
            if reason not in FAILURE_REASONS:
                continue
            text = f"pod {ns}/{name} container {cs.get('name')}: {reason}"
            if waiting.get("message"):
                text += f": {waiting['message']}"
            last = (cs.get("lastState") or {}).get("terminated") or {}
            if last:
                text += f"; last exit code {last.get('exitCode')}"
                if last.get("reason"):
                    text += f" ({last['reason']})"
                if last.get("message"):
                    text += f": {last['message']}"
            return _clip(text)
    return None


def wake_failure(deployment: Obj | None, pods: Iterable[Obj]) -> str | None:
    """Why the project cannot become ready right now, or None while it still may."""
    if deployment is not None:
        if spec_replicas(deployment) < 1:
            return None
        failure = deployment_failure(deployment)
        if failure:
            return failure
    for pod in sorted(current_pods(pods), key=lambda p: key_of(p)):
        failure = pod_failure(pod)
        if failure:
            return failure
    return None


# --- writes --------------------------------------------------------------------------------------


def scale_patch(replicas: int, resource_version: str | None = None) -> dict[str, Any]:
    """Merge patch for ``deployments/{name}/scale``; with a resourceVersion it is a precondition
    (the API server answers 409 Conflict when the Deployment changed since)."""
    body: dict[str, Any] = {"spec": {"replicas": replicas}}
    if resource_version is not None:
        body["metadata"] = {"resourceVersion": resource_version}
    return body


def sleep_patch(resource_version: str, last_activity_wall_s: float | None) -> dict[str, Any]:
    """Merge patch of a Deployment that puts it to sleep: ``replicas: 0`` and the project's last
    activity (for ``wakegate project status``), in one write, on the condition that the Deployment
    is still at ``resource_version`` (409 Conflict otherwise: a wake raced the decision)."""
    body: dict[str, Any] = {"metadata": {"resourceVersion": resource_version}, "spec": {"replicas": 0}}
    if last_activity_wall_s is not None:
        body["metadata"]["annotations"] = {C.LAST_ACTIVITY_ANNOTATION: format_time(last_activity_wall_s)}
    return body


def legacy_activity_keys(dep: Obj | None) -> list[str]:
    """The legacy per-replica activity annotations a Deployment still carries."""
    return sorted(k for k in annotations_of(dep) if k.startswith(C.LEGACY_ACTIVITY_PREFIX)) if dep else []


def remove_annotations_patch(keys: list[str]) -> dict[str, Any]:
    """Merge patch removing annotations ``keys``."""
    return {"metadata": {"annotations": dict.fromkeys(keys)}}


def event_body(deployment: Obj, reason: str, message: str, instance: str, now_wall_s: float) -> dict[str, Any]:
    """A ``Normal`` Event about ``deployment`` (woken, put to sleep) from gateway replica ``instance``."""
    ns, name = key_of(deployment)
    now = format_time(now_wall_s)[:19] + "Z"
    return {
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"generateName": f"{name}.", "namespace": ns},
        "involvedObject": {"apiVersion": "apps/v1", "kind": "Deployment", "namespace": ns, "name": name,
                           "uid": meta(deployment).get("uid")},
        "reason": reason, "message": message, "type": "Normal",
        "source": {"component": C.EVENT_COMPONENT},
        "reportingComponent": C.EVENT_COMPONENT, "reportingInstance": instance[:128],
        "firstTimestamp": now, "lastTimestamp": now, "count": 1,
    }


def format_time(wall_s: float) -> str:
    """RFC 3339 with microseconds in UTC (Kubernetes ``MicroTime``)."""
    return datetime.fromtimestamp(wall_s, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str | None) -> float | None:
    """Seconds since the epoch from an RFC 3339 timestamp, None when absent or malformed."""
    if not text:
        return None
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.timestamp()
