"""Talk to the Kubernetes API: apply, inspect, list and delete projects.

Every write is a server-side apply (``application/apply-patch+yaml``) of a rendered object under
:data:`~gateway.contract.PROVISIONER_FIELD_MANAGER` with ``force=true`` and ``fieldValidation=Strict``, so
applying is idempotent and a re-run finishes whatever an interrupted run left. One
``ApiClient`` per command; every request carries a timeout.

``create_project`` order:

1. pre-flight (read-only): the namespace is absent, or managed by wakegate for this project and not
   terminating;
2. a brand-new namespace is created together with its ServiceAccounts (a Pod cannot even be
   dry-run without them), then every object is applied with ``dryRun=All`` and a Pod built from
   the Deployment's template is dry-run, so Pod Security ``restricted`` violations, quota and schema
   errors surface now rather than at the first wake. If that fails, a namespace created in step 2 is
   deleted again: nothing stays applied;
3. everything is applied in render order; the Deployment's ``spec.replicas`` is written only when
   the Deployment is created and is then handed to :data:`~gateway.contract.REPLICAS_FIELD_MANAGER`,
   so re-applying never scales a running project;
4. objects this project's managed set no longer contains are pruned (never PersistentVolumeClaims);
5. wait until the quota controller and the Deployment controller have seen the objects.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import copy
import json
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
from kubernetes_asyncio import client as k8s_client
from kubernetes_asyncio.client.exceptions import ApiException

from gateway import contract as C
from gateway.backends.k8s.client import CredentialsError, api_client

from .errors import ProvisionError, SpecError
from .render import (
    CHECKSUM_KEY_BYTES,
    CHECKSUM_KEY_FIELD,
    CHECKSUM_KEY_SECRET,
    Obj,
    find,
    new_checksum_key,
    pod_for_dry_run,
    render,
)
from .spec import ProjectSpec, parse_quantity

REQUEST_TIMEOUT_S = 30.0
POLL_INTERVAL_S = 0.5


@dataclass(frozen=True, slots=True)
class ResourceType:
    """Where a kind lives in the REST API."""

    api_version: str
    kind: str
    plural: str
    namespaced: bool = True

    def collection_path(self, namespace: str | None = None) -> str:
        """``/api/v1/namespaces/<ns>/<plural>`` and the like."""
        base = "/api/v1" if "/" not in self.api_version else f"/apis/{self.api_version}"
        if self.namespaced and namespace:
            return f"{base}/namespaces/{quote(namespace)}/{self.plural}"
        return f"{base}/{self.plural}"

    def object_path(self, name: str, namespace: str | None = None) -> str:
        """Path of one object."""
        return f"{self.collection_path(namespace)}/{quote(name)}"


_TYPES = [
    ResourceType("v1", "Namespace", "namespaces", namespaced=False),
    ResourceType("v1", "ServiceAccount", "serviceaccounts"),
    ResourceType("v1", "ResourceQuota", "resourcequotas"),
    ResourceType("v1", "LimitRange", "limitranges"),
    ResourceType("networking.k8s.io/v1", "NetworkPolicy", "networkpolicies"),
    ResourceType("rbac.authorization.k8s.io/v1", "Role", "roles"),
    ResourceType("rbac.authorization.k8s.io/v1", "RoleBinding", "rolebindings"),
    ResourceType("v1", "ConfigMap", "configmaps"),
    ResourceType("v1", "Secret", "secrets"),
    ResourceType("v1", "PersistentVolumeClaim", "persistentvolumeclaims"),
    ResourceType("apps/v1", "Deployment", "deployments"),
    ResourceType("v1", "Service", "services"),
    ResourceType("v1", "Pod", "pods"),
    ResourceType("v1", "PersistentVolume", "persistentvolumes", namespaced=False),
    ResourceType("discovery.k8s.io/v1", "EndpointSlice", "endpointslices"),
    ResourceType(C.PROJECT_API_VERSION, C.PROJECT_KIND, C.PROJECT_PLURAL, namespaced=False),
]
TYPES: dict[str, ResourceType] = {t.kind: t for t in _TYPES}
#: Kinds whose managed objects are deleted when the rendered set no longer contains them.
PRUNE_KINDS = ("ServiceAccount", "ResourceQuota", "LimitRange", "NetworkPolicy", "Role", "RoleBinding",
               "ConfigMap", "Secret", "Deployment", "Service")
#: What the controller prunes: never ConfigMaps and Secrets, which a Project only references (the
#: controller may not even read Secrets) and whose ``<name>-env`` ones the CLI applies.
CONTROLLER_PRUNE_KINDS = tuple(k for k in PRUNE_KINDS if k not in ("ConfigMap", "Secret"))


def resource_type(obj: Obj) -> ResourceType:
    """The :class:`ResourceType` of a rendered object; ``ProvisionError`` for kinds we do not apply."""
    t = TYPES.get(obj.get("kind", ""))
    if t is None or t.api_version != obj.get("apiVersion"):
        raise ProvisionError(f"cannot apply {obj.get('apiVersion')}/{obj.get('kind')}", exit_code=2)
    return t


def object_path(obj: Obj) -> str:
    """REST path of a rendered object."""
    meta = obj["metadata"]
    return resource_type(obj).object_path(meta["name"], meta.get("namespace"))


def describe(obj: Obj) -> str:
    """``Kind/name`` for messages."""
    return f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"


# --- client ------------------------------------------------------------------------------------------


class KubeError(ProvisionError):
    """An API request failed; ``status`` is the HTTP status (0 for transport failures)."""

    def __init__(self, message: str, status: int = 0, reason: str = "") -> None:
        super().__init__(message, exit_code=1)
        self.status = status
        self.reason = reason


async def connect(kubeconfig: str | Path | None = None, context: str | None = None) -> k8s_client.ApiClient:
    """An ``ApiClient`` from ``kubeconfig`` (or ``$KUBECONFIG``, ``~/.kube/config``; in a pod without
    either, the in-cluster ServiceAccount): :func:`gateway.backends.k8s.client.api_client`. Refreshed
    tokens are written back to the kubeconfig, as kubectl does."""
    try:
        return await api_client(kubeconfig, context, persist_config=True)
    except CredentialsError as exc:
        raise ProvisionError(f"this command needs a Kubernetes cluster: {exc} "
                             "(`wakegate project render` needs none)", exit_code=2) from None


class Kube:
    """Raw JSON requests over one ``ApiClient``; every request has a timeout. Collects server warnings."""

    def __init__(self, api: k8s_client.ApiClient, timeout_s: float = REQUEST_TIMEOUT_S) -> None:
        self.api = api
        self.timeout_s = timeout_s
        self.warnings: list[str] = []

    async def request(self, method: str, path: str, *, query: list[tuple[str, str]] | None = None,
                      body: Any = None, content_type: str = "application/json") -> Any:
        """Send one request; return the decoded JSON body. Raises :class:`KubeError`."""
        headers = {"Accept": "application/json", "Content-Type": content_type}
        try:
            data, _status, resp_headers = await self.api.call_api(
                path, method, query_params=query or [], header_params=headers, body=body,
                response_types_map={200: "object", 201: "object", 202: "object"},
                auth_settings=["BearerToken"], _return_http_data_only=False,
                _request_timeout=self.timeout_s)
        except ApiException as exc:
            raise _api_error(method, path, exc) from None
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            host = self.api.configuration.host
            raise KubeError(f"cannot reach the API server at {host}: {exc or type(exc).__name__}") from None
        for name, value in (resp_headers or {}).items():
            if name.lower() == "warning":
                text = value.split(" ", 2)[-1].strip().strip('"') if value[:3].isdigit() else value
                if text not in self.warnings:
                    self.warnings.append(text)
        return data

    async def get(self, path: str) -> Obj | None:
        """GET an object; ``None`` if it does not exist."""
        try:
            result: Obj = await self.request("GET", path)
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise
        return result

    async def list(self, kind: str, namespace: str | None = None, label_selector: str | None = None) -> list[Obj]:
        """All objects of ``kind`` (in ``namespace``, or cluster-wide), optionally by label selector."""
        query = [("labelSelector", label_selector)] if label_selector else []
        result = await self.request("GET", TYPES[kind].collection_path(namespace), query=query)
        items: list[Obj] = result.get("items") or []
        for item in items:  # lists omit kind/apiVersion per item
            item.setdefault("kind", kind)
            item.setdefault("apiVersion", TYPES[kind].api_version)
        return items

    async def apply(self, obj: Obj, *, manager: str = C.PROVISIONER_FIELD_MANAGER, force: bool = True,
                    dry_run: bool = False) -> Obj:
        """Server-side apply ``obj`` (strict field validation)."""
        query = [("fieldManager", manager), ("fieldValidation", "Strict")]
        if force:
            query.append(("force", "true"))
        if dry_run:
            query.append(("dryRun", "All"))
        result: Obj = await self.request("PATCH", object_path(obj), query=query, body=obj,
                                         content_type="application/apply-patch+yaml")
        return result

    async def create(self, obj: Obj, *, dry_run: bool = False) -> Obj:
        """POST ``obj`` (used for the dry-run Pod, which has only a ``generateName``)."""
        meta = obj["metadata"]
        query = [("fieldManager", C.PROVISIONER_FIELD_MANAGER), ("fieldValidation", "Strict")]
        if dry_run:
            query.append(("dryRun", "All"))
        result: Obj = await self.request("POST", resource_type(obj).collection_path(meta.get("namespace")),
                                         query=query, body=obj)
        return result

    async def delete(self, path: str, *, dry_run: bool = False, propagation: str = "Background") -> bool:
        """DELETE; ``False`` if it was already gone."""
        body: Obj = {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": propagation}
        if dry_run:
            body["dryRun"] = ["All"]
        try:
            await self.request("DELETE", path, body=body)
        except KubeError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    async def merge_patch(self, path: str, patch: Obj) -> Obj:
        """JSON merge patch (for objects the provisioner does not own, such as PersistentVolumes)."""
        result: Obj = await self.request("PATCH", path, body=patch, content_type="application/merge-patch+json",
                                         query=[("fieldManager", C.PROVISIONER_FIELD_MANAGER)])
        return result


def _api_error(method: str, path: str, exc: ApiException) -> KubeError:
    status = int(exc.status or 0)
    message, reason = "", str(exc.reason or "")
    try:
        body = json.loads(exc.body) if exc.body else {}
        message = str(body.get("message") or "")
        reason = str(body.get("reason") or reason)
    except (ValueError, TypeError, AttributeError):
        message = str(exc.body or "")[:300]
    message = " ".join((message or reason or f"HTTP {status}").split())
    return KubeError(f"{method} {path}: {message}", status=status, reason=reason)


def _refused(exc: KubeError, what: str) -> ProvisionError:
    """A request the server judged invalid during validation: bad input (exit 2)."""
    code = 2 if exc.status in (400, 403, 409, 422) else exc.exit_code
    message = str(exc).split(": ", 1)[-1]
    return ProvisionError(f"{what}: {message}", exit_code=code)


async def _poll(check: Callable[[], Awaitable[bool]], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while True:
        if await check():
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(POLL_INTERVAL_S)


# --- create ------------------------------------------------------------------------------------------


@dataclass
class ApplyReport:
    """What ``create_project`` did (or, with ``dry_run``, would do)."""

    namespace: str
    project: str
    dry_run: bool = False
    created: list[str] = field(default_factory=list)
    configured: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    pruned: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _is_managed(obj: Obj, project: str) -> bool:
    return C.managed_project(obj.get("metadata", {}).get("labels") or {}) == project


async def check_namespace(kube: Kube, namespace: str, project: str) -> Obj | None:
    """Pre-flight: the namespace, or ``None`` if absent. Refuses (exit 2) unmanaged or terminating ones."""
    ns = await kube.get(TYPES["Namespace"].object_path(namespace))
    if ns is None:
        return None
    ns_labels = ns.get("metadata", {}).get("labels") or {}
    if ns_labels.get(C.MANAGED_BY_LABEL) != C.MANAGED_BY:
        raise ProvisionError(f"namespace {namespace} already exists and is not managed by wakegate "
                             f"(no {C.MANAGED_BY_LABEL}={C.MANAGED_BY} label); refusing to touch it", exit_code=2)
    if ns_labels.get(C.PROJECT_LABEL) != project:
        raise ProvisionError(f"namespace {namespace} belongs to wakegate project "
                             f"{ns_labels.get(C.PROJECT_LABEL)!r}, not {project!r}", exit_code=2)
    if ns.get("metadata", {}).get("deletionTimestamp") or ns.get("status", {}).get("phase") == "Terminating":
        raise ProvisionError(f"namespace {namespace} is still terminating; wait until it is gone "
                             f"(wakegate project delete {project} --wait) and retry", exit_code=2)
    return ns


def _replicas_owned_elsewhere(deploy: Obj) -> bool:
    """Whether some manager other than the provisioner's main one owns ``spec.replicas``."""
    for entry in deploy.get("metadata", {}).get("managedFields") or []:
        if entry.get("manager") == C.PROVISIONER_FIELD_MANAGER:
            continue
        spec_fields = (entry.get("fieldsV1") or {}).get("f:spec") or {}
        if "f:replicas" in spec_fields:
            return True
    return False


def _without_replicas(deploy: Obj) -> Obj:
    body = copy.deepcopy(deploy)
    body["spec"].pop("replicas", None)
    return body


async def _apply_deployment(kube: Kube, deploy: Obj, current: Obj | None, *, dry_run: bool) -> Obj:
    """Apply the Deployment; ``spec.replicas`` only at creation (see module docstring)."""
    if current is None:
        created = await kube.apply(deploy, dry_run=dry_run)  # replicas: 0 as rendered
        if dry_run:
            return created
        current = created
    if not dry_run and not _replicas_owned_elsewhere(current):
        claim = {"apiVersion": deploy["apiVersion"], "kind": deploy["kind"],
                 "metadata": {"name": deploy["metadata"]["name"], "namespace": deploy["metadata"]["namespace"]},
                 "spec": {"replicas": int(current.get("spec", {}).get("replicas") or 0)}}
        try:
            await kube.apply(claim, manager=C.REPLICAS_FIELD_MANAGER, force=False)
        except KubeError as exc:
            if exc.status != 409:  # 409: someone scaled it meanwhile; then they own the count
                raise
    return await kube.apply(_without_replicas(deploy), dry_run=dry_run)


def _comparable(obj: Obj) -> Obj:
    out = {k: v for k, v in obj.items() if k != "status"}
    out["metadata"] = {k: v for k, v in (obj.get("metadata") or {}).items()
                       if k not in ("resourceVersion", "managedFields", "generation", "creationTimestamp")}
    return out


def _changed(before: Obj, after: Obj, *, dry_run: bool) -> bool:
    if dry_run:  # a dry run does not bump resourceVersion; compare content
        return _comparable(before) != _comparable(after)
    return bool(before.get("metadata", {}).get("resourceVersion") != after.get("metadata", {}).get("resourceVersion"))


async def _apply_one(kube: Kube, obj: Obj, *, dry_run: bool, seen: dict[str, Obj | None]) -> str:
    """Apply one object; return ``created``, ``configured`` or ``unchanged``.

    ``seen`` carries each object's state from the dry run to the real apply, so it is read once.
    """
    key = describe(obj)
    before = seen.pop(key) if key in seen and not dry_run else await kube.get(object_path(obj))
    if dry_run:
        seen[key] = before
    if obj["kind"] == "Deployment":
        after = await _apply_deployment(kube, obj, before, dry_run=dry_run)
    else:
        after = await kube.apply(obj, dry_run=dry_run)
    if before is None:
        return "created"
    return "configured" if _changed(before, after, dry_run=dry_run) else "unchanged"


def _record(report: ApplyReport, obj: Obj, outcome: str) -> None:
    {"created": report.created, "configured": report.configured, "unchanged": report.unchanged}[outcome].append(
        describe(obj))


_RESOURCE_REFUSAL = re.compile(r"(maximum|minimum) \S+ usage per (Container|Pod)|limit to request ratio|"
                               r"exceeded quota|must specify")


async def dry_run_pod(kube: Kube, deploy: Obj, *, timeout_s: float = 30.0, limits_changing: bool = False) -> None:
    """Dry-run a Pod from the Deployment's template; refusals (Pod Security, limits, quota) exit 2.

    With ``limits_changing`` (this run also changes the ResourceQuota or LimitRange, which are applied
    before the Deployment), a refusal by the *current* limits is not final: the Pod is dry-run again
    without resources, so Pod Security and everything else are still checked. A refusal by the quota
    alone is only a warning: quota admission runs last, and the dry-run pod is one more than the
    project will run.
    """
    pod = pod_for_dry_run(deploy)
    name = deploy["metadata"]["name"]
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            await kube.create(pod, dry_run=True)
            return
        except KubeError as exc:
            # A quota the controller has not yet computed refuses every pod for a moment.
            if "status unknown for quota" in str(exc) and time.monotonic() < deadline:
                await asyncio.sleep(POLL_INTERVAL_S)
                continue
            if "exceeded quota" in str(exc):
                # ResourceQuota admits last: everything else (Pod Security, limits) has passed. Running or
                # terminating pods use the quota right now; the dry-run pod would be one more.
                kube.warnings.append(f"the quota has no room for another pod right now (running or terminating "
                                     f"pods use it), so only Pod Security and limits were checked: "
                                     f"{str(exc).split(': ', 1)[-1]}")
                return
            if limits_changing and _RESOURCE_REFUSAL.search(str(exc)):
                limits_changing = False
                for container in pod["spec"].get("containers") or []:
                    container.pop("resources", None)
                continue
            raise _refused(exc, f"the pod template of Deployment {name} was refused (server-side dry run)") from None


async def _validate(kube: Kube, objs: list[Obj], *, timeout_s: float, report: ApplyReport | None = None,
                    seen: dict[str, Obj | None] | None = None) -> None:
    """Server-side dry run of every object, then of a Pod from the Deployment's template."""
    limits_changing = False
    for obj in objs:
        try:
            outcome = await _apply_one(kube, obj, dry_run=True, seen={} if seen is None else seen)
        except KubeError as exc:
            raise _refused(exc, f"{describe(obj)} was refused (server-side dry run)") from None
        if report is not None:
            _record(report, obj, outcome)
        if obj["kind"] in ("ResourceQuota", "LimitRange") and outcome != "unchanged":
            limits_changing = True
    await dry_run_pod(kube, find(objs, "Deployment"), timeout_s=timeout_s, limits_changing=limits_changing)


def _identity(objs: list[Obj]) -> tuple[str, str]:
    if not objs or objs[0].get("kind") != "Namespace":
        raise ProvisionError("the first object must be the project's Namespace", exit_code=2)
    ns = objs[0]["metadata"]
    project = (ns.get("labels") or {}).get(C.PROJECT_LABEL)
    if not project:
        raise ProvisionError(f"Namespace {ns['name']} has no {C.PROJECT_LABEL} label", exit_code=2)
    for obj in objs[1:]:
        resource_type(obj)
        if obj["metadata"].get("namespace") != ns["name"]:
            raise ProvisionError(f"{describe(obj)} is not in namespace {ns['name']}", exit_code=2)
    return str(ns["name"]), str(project)


async def create_project(kube: Kube, objs: list[Obj], *, dry_run: bool = False,
                         wait_timeout_s: float = 120.0) -> ApplyReport:
    """Apply the rendered ``objs`` (Namespace first); see the module docstring for the order."""
    namespace, project = _identity(objs)
    report = ApplyReport(namespace=namespace, project=project, dry_run=dry_run)
    existing = await check_namespace(kube, namespace, project)

    if dry_run:
        if existing is None:
            try:
                await kube.apply(objs[0], dry_run=True)
            except KubeError as exc:
                raise _refused(exc, f"{describe(objs[0])} was refused (server-side dry run)") from None
            report.created = [describe(o) for o in objs]
            report.warnings.append(f"namespace {namespace} does not exist yet, so the server dry-ran only the "
                                   "Namespace; the other objects are checked when they are created")
        else:
            await _validate(kube, objs, timeout_s=wait_timeout_s, report=report)
            report.pruned = await prune(kube, objs, namespace, project, dry_run=True)
        report.warnings += kube.warnings
        return report

    seen: dict[str, Obj | None] = {}
    if existing is None:
        # A Pod can be dry-run only in an existing namespace whose ServiceAccounts exist.
        for obj in objs:
            if obj["kind"] in ("Namespace", "ServiceAccount"):
                await kube.apply(obj)
        try:
            await _validate(kube, objs, timeout_s=wait_timeout_s, seen=seen)
        except ProvisionError:
            # Undo: the namespace did not exist before this run, so nothing must stay behind.
            with contextlib.suppress(ProvisionError):
                await kube.delete(TYPES["Namespace"].object_path(namespace))
            raise
    else:
        await _validate(kube, objs, timeout_s=wait_timeout_s, seen=seen)

    for obj in objs:
        outcome = await _apply_one(kube, obj, dry_run=False, seen=seen)
        _record(report, obj, "created" if existing is None else outcome)
    report.pruned = await prune(kube, objs, namespace, project)
    await _check_automation_clusterrole(kube)
    report.warnings += kube.warnings
    await wait_ready(kube, objs, timeout_s=wait_timeout_s)
    return report


async def _check_automation_clusterrole(kube: Kube) -> None:
    """Warn when the ClusterRole a project's automation account is bound to is not installed."""
    try:
        found = await kube.get(f"/apis/rbac.authorization.k8s.io/v1/clusterroles/{C.AUTOMATION_CLUSTERROLE}")
    except KubeError:  # not allowed to look: nothing to say
        return
    if found is None:
        kube.warnings.append(f"ClusterRole {C.AUTOMATION_CLUSTERROLE} is not installed (`kubectl apply -k "
                             "manifests/` installs it): the project's automation account has no rights until it is")


async def apply_objects(kube: Kube, objs: list[Obj], *, prune_kinds: tuple[str, ...] = ()) -> ApplyReport:
    """Apply the rendered ``objs`` in order and prune what this project's managed set of
    ``prune_kinds`` no longer contains: what the controller does on every change of a Project. No
    dry run first (the CRD already validated the spec; a pod the cluster refuses shows in the
    Project's status at the next wake), and no waiting for the controllers."""
    namespace, project = _identity(objs)
    report = ApplyReport(namespace=namespace, project=project)
    existing = await check_namespace(kube, namespace, project)
    for obj in objs:
        outcome = await _apply_one(kube, obj, dry_run=False, seen={})
        _record(report, obj, "created" if existing is None else outcome)
    report.pruned = await prune(kube, objs, namespace, project, kinds=prune_kinds)
    report.warnings += kube.warnings
    return report


async def stored_checksum_key(kube: Kube, namespace: str) -> bytes | None:
    """The config checksum key kept in ``namespace`` (Secret :data:`~provisioner.render.CHECKSUM_KEY_SECRET`),
    or ``None`` when there is none or it is unusable (then a warning says a new one replaces it)."""
    secret = await kube.get(TYPES["Secret"].object_path(CHECKSUM_KEY_SECRET, namespace))
    if secret is None:
        return None
    raw = (secret.get("data") or {}).get(CHECKSUM_KEY_FIELD)
    try:
        key = base64.b64decode(raw, validate=True) if isinstance(raw, str) else b""
    except (binascii.Error, ValueError):
        key = b""
    if len(key) < CHECKSUM_KEY_BYTES:
        kube.warnings.append(f"Secret {CHECKSUM_KEY_SECRET} holds no usable config checksum key; a new one "
                             "replaces it (the app restarts once)")
        return None
    return key


async def create_from_spec(kube: Kube, spec: ProjectSpec, *, dry_run: bool = False,
                           wait_timeout_s: float = 120.0) -> ApplyReport:
    """Render ``spec`` with the project's config checksum key (read back from the cluster; a new random
    one for a new project) and apply it with :func:`create_project`. The same input therefore renders
    the same checksum and changes nothing; a changed config or secret value changes it."""
    key = None
    if await check_namespace(kube, spec.namespace, spec.name) is not None:
        key = await stored_checksum_key(kube, spec.namespace)
    objs = render(spec, key if key is not None else new_checksum_key())
    return await create_project(kube, objs, dry_run=dry_run, wait_timeout_s=wait_timeout_s)


async def prune(kube: Kube, objs: list[Obj], namespace: str, project: str, *, dry_run: bool = False,
                kinds: tuple[str, ...] = PRUNE_KINDS) -> list[str]:
    """Delete managed objects of ``kinds`` of this project that ``objs`` no longer contains (never
    volumes; a claim no longer mounted is a warning)."""
    wanted = {(o["kind"], o["metadata"]["name"]) for o in objs}
    selector = f"{C.MANAGED_SELECTOR},{C.PROJECT_LABEL}={project}"
    pruned: list[str] = []
    for kind in kinds:
        for item in await kube.list(kind, namespace, selector):
            name = item["metadata"]["name"]
            if (kind, name) not in wanted:
                await kube.delete(TYPES[kind].object_path(name, namespace), dry_run=dry_run)
                pruned.append(f"{kind}/{name}")
    for item in await kube.list("PersistentVolumeClaim", namespace, selector):
        if ("PersistentVolumeClaim", item["metadata"]["name"]) not in wanted:
            kube.warnings.append(f"PersistentVolumeClaim {item['metadata']['name']} is no longer mounted; its data "
                                 "is kept until `wakegate project delete`")
    return pruned


def _same_quantity(a: str, b: str) -> bool:
    try:
        return parse_quantity(str(a)) == parse_quantity(str(b))
    except SpecError:
        return str(a) == str(b)


async def wait_ready(kube: Kube, objs: list[Obj], *, timeout_s: float) -> None:
    """Wait until the quota is computed and the Deployment controller has seen the current spec."""
    deploy = find(objs, "Deployment")
    quotas = [o for o in objs if o["kind"] == "ResourceQuota"]

    async def settled() -> bool:
        for quota in quotas:
            current = await kube.get(object_path(quota))
            # Quota admission enforces status.hard: wait until the controller copied the new sizes there.
            hard = (current or {}).get("status", {}).get("hard") or {}
            if set(hard) != set(quota["spec"]["hard"]) or any(
                    not _same_quantity(hard[key], value) for key, value in quota["spec"]["hard"].items()):
                return False
        current = await kube.get(object_path(deploy))
        if current is None:
            return False
        generation = current["metadata"].get("generation", 0)
        return bool(current.get("status", {}).get("observedGeneration", -1) >= generation)

    if not await _poll(settled, timeout_s):
        raise ProvisionError(f"objects applied, but the controllers did not catch up within {timeout_s:g}s "
                             "(is kube-controller-manager running?); re-run to wait again")


# --- status and list ---------------------------------------------------------------------------------


def _pod_summary(pod: Obj) -> dict[str, Any]:
    status = pod.get("status") or {}
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
    reasons: list[str] = []
    restarts = 0
    for cs in status.get("containerStatuses") or []:
        restarts += int(cs.get("restartCount") or 0)
        for state in ("waiting", "terminated"):
            reason = ((cs.get("state") or {}).get(state) or {}).get("reason")
            if reason:
                reasons.append(reason)
    return {"name": pod["metadata"]["name"], "phase": status.get("phase", "Unknown"), "ready": ready,
            "restarts": restarts, "reasons": reasons,
            "terminating": bool(pod["metadata"].get("deletionTimestamp"))}


async def project_status(kube: Kube, project: str, namespace: str, *, url: str | None = None) -> dict[str, Any]:
    """Replicas wanted/ready, endpoint readiness, last activity, settings, quota usage and pods."""
    ns = await kube.get(TYPES["Namespace"].object_path(namespace))
    if ns is None:
        raise ProvisionError(f"project {project} not found (namespace {namespace} does not exist)")
    if not _is_managed(ns, project):
        raise ProvisionError(f"namespace {namespace} is not managed by wakegate for project {project}", exit_code=2)
    deploy = await kube.get(TYPES["Deployment"].object_path(project, namespace)) or {}
    d_spec, d_status = deploy.get("spec") or {}, deploy.get("status") or {}
    annotations = (deploy.get("metadata") or {}).get("annotations") or {}
    slices = await kube.list("EndpointSlice", namespace, f"{C.SERVICE_NAME_LABEL}={project}")
    ready = not_ready = 0
    for eps in slices:
        for ep in eps.get("endpoints") or []:
            if (ep.get("conditions") or {}).get("ready", True):
                ready += 1
            else:
                not_ready += 1
    quota_usage: dict[str, dict[str, str]] = {}
    for quota in await kube.list("ResourceQuota", namespace, C.MANAGED_SELECTOR):
        q_status = quota.get("status") or {}
        for key, hard in sorted((q_status.get("hard") or {}).items()):
            quota_usage[key] = {"used": (q_status.get("used") or {}).get(key, "0"), "hard": hard}
    pods = await kube.list("Pod", namespace, C.app_label_selector(project))
    containers = (((d_spec.get("template") or {}).get("spec") or {}).get("containers")) or [{}]
    claims = await kube.list("PersistentVolumeClaim", namespace, C.MANAGED_SELECTOR)
    return {
        "project": project,
        "namespace": namespace,
        "phase": (ns.get("status") or {}).get("phase", "Unknown"),
        "url": url,
        "image": containers[0].get("image"),
        "deployment": bool(deploy),
        "replicas": {"wanted": int(d_spec.get("replicas") or 0), "ready": int(d_status.get("readyReplicas") or 0),
                     "available": int(d_status.get("availableReplicas") or 0),
                     "updated": int(d_status.get("updatedReplicas") or 0)},
        "endpoints": {"ready": ready, "notReady": not_ready},
        "lastActivity": annotations.get(C.LAST_ACTIVITY_ANNOTATION),
        "settings": {"idleTimeoutS": annotations.get(C.IDLE_TIMEOUT_ANNOTATION),
                     "holdTimeoutS": annotations.get(C.HOLD_TIMEOUT_ANNOTATION),
                     "strategy": annotations.get(C.STRATEGY_ANNOTATION)},
        "quota": quota_usage,
        "pods": [_pod_summary(p) for p in sorted(pods, key=lambda p: p["metadata"]["name"])],
        "volumes": [{"name": c["metadata"]["name"], "phase": (c.get("status") or {}).get("phase"),
                     "size": ((c.get("spec") or {}).get("resources") or {}).get("requests", {}).get("storage")}
                    for c in claims],
    }


async def list_projects(kube: Kube) -> list[dict[str, Any]]:
    """Every managed project: name, namespace, phase, replicas wanted/ready, last activity."""
    namespaces = await kube.list("Namespace", label_selector=C.MANAGED_SELECTOR)
    deployments = await kube.list("Deployment", label_selector=C.MANAGED_SELECTOR)
    by_key = {(d["metadata"]["namespace"], d["metadata"]["name"]): d for d in deployments}
    out: list[dict[str, Any]] = []
    for ns in namespaces:
        ns_name = ns["metadata"]["name"]
        project = (ns["metadata"].get("labels") or {}).get(C.PROJECT_LABEL)
        if not project:
            continue
        deploy = by_key.get((ns_name, project)) or {}
        out.append({
            "project": project, "namespace": ns_name,
            "phase": (ns.get("status") or {}).get("phase", "Unknown"),
            "wanted": int((deploy.get("spec") or {}).get("replicas") or 0),
            "ready": int((deploy.get("status") or {}).get("readyReplicas") or 0),
            "lastActivity": ((deploy.get("metadata") or {}).get("annotations") or {}).get(C.LAST_ACTIVITY_ANNOTATION),
        })
    return sorted(out, key=lambda p: str(p["project"]))


# --- delete ------------------------------------------------------------------------------------------


@dataclass
class DeleteReport:
    """What ``delete_project`` did."""

    namespace: str
    existed: bool = True
    gone: bool = False
    kept_volumes: list[str] = field(default_factory=list)


async def delete_project(kube: Kube, project: str, namespace: str, *, wait: bool = False, keep_data: bool = False,
                         timeout_s: float = 300.0) -> DeleteReport:
    """Delete the project's namespace (and with it everything in it).

    Persistent volumes bound to the project's claims are deleted with them, or, with ``keep_data``,
    switched to ``Retain`` and labelled with the project so the data can be found again.
    """
    ns_path = TYPES["Namespace"].object_path(namespace)
    report = DeleteReport(namespace=namespace)
    ns = await kube.get(ns_path)
    if ns is None:
        report.existed, report.gone = False, True
        return report
    if not _is_managed(ns, project):
        raise ProvisionError(f"namespace {namespace} is not managed by wakegate for project {project}; "
                             "refusing to delete it", exit_code=2)
    for claim in await kube.list("PersistentVolumeClaim", namespace):
        volume = (claim.get("spec") or {}).get("volumeName")
        if not volume:
            continue
        pv_path = TYPES["PersistentVolume"].object_path(volume)
        pv = await kube.get(pv_path)
        if pv is None:
            continue
        policy = "Retain" if keep_data else "Delete"
        patch: Obj = {}
        if (pv.get("spec") or {}).get("persistentVolumeReclaimPolicy") != policy:
            patch["spec"] = {"persistentVolumeReclaimPolicy": policy}
        if keep_data:
            patch["metadata"] = {"labels": C.common_labels(project)}
            report.kept_volumes.append(volume)
        if patch:
            await kube.merge_patch(pv_path, patch)
    await kube.delete(ns_path)
    if not wait:
        return report

    async def gone() -> bool:
        return await kube.get(ns_path) is None

    if await _poll(gone, timeout_s):
        report.gone = True
        return report
    stuck = await kube.get(ns_path) or {}
    conditions = [f"{c.get('type')}: {c.get('message') or c.get('reason')}"
                  for c in (stuck.get("status") or {}).get("conditions") or [] if c.get("status") == "True"]
    finalizers = (stuck.get("spec") or {}).get("finalizers") or []
    detail = "; ".join(conditions) or (f"finalizers {finalizers}" if finalizers else "no conditions reported")
    raise ProvisionError(f"namespace {namespace} is still terminating after {timeout_s:g}s: {detail}")


# --- Project objects (when the CRD is installed) -----------------------------------------------------


async def crd_installed(kube: Kube) -> bool:
    """Whether the API server serves ``projects.wakegate.io`` (discovery, readable by every user)."""
    return await kube.get(f"/apis/{C.PROJECT_API_VERSION}") is not None


def project_path(name: str) -> str:
    """REST path of the Project ``name``."""
    return TYPES[C.PROJECT_KIND].object_path(name)


async def get_project_resource(kube: Kube, name: str) -> Obj | None:
    """The Project ``name``, or ``None``."""
    return await kube.get(project_path(name))


async def apply_project_resource(kube: Kube, project: Obj, env: list[Obj], *, dry_run: bool = False,
                                 wait_timeout_s: float = 120.0) -> Obj:
    """Apply the Project (server-side apply; the CRD validates it), then the project's environment
    objects ``env`` once its namespace exists, then wait until the controller has acted on this
    generation; returns the Project with its status. A refused spec is a :class:`ProvisionError`
    (exit 2) quoting the controller's reason."""
    name = project["metadata"]["name"]
    try:
        applied = await kube.apply(project, dry_run=dry_run)
    except KubeError as exc:
        raise _refused(exc, f"Project {name} was refused") from None
    if dry_run:
        return applied
    generation = applied["metadata"].get("generation", 0)
    latest: Obj = applied

    async def acted() -> bool:
        nonlocal latest
        latest = await kube.get(project_path(name)) or latest
        status = latest.get("status") or {}
        return bool(status.get("observedGeneration", 0) >= generation and status.get("phase") != "Provisioning")

    if not await _poll(acted, wait_timeout_s):
        raise ProvisionError(f"Project {name} applied, but no controller acted on it within {wait_timeout_s:g}s "
                             "(is `wakegate controller` running? see `kubectl -n wakegate-system get pods`)")
    status = latest.get("status") or {}
    refused = next((c for c in status.get("conditions") or [] if c.get("type") == "Provisioned"
                    and c.get("status") == "False"), None)
    if refused is not None:
        raise ProvisionError(f"Project {name}: {refused.get('reason')}: {refused.get('message')}", exit_code=2)
    for obj in env:
        await kube.apply(obj)
    return latest


async def delete_project_resource(kube: Kube, name: str, *, keep_data: bool = False, wait: bool = False,
                                  timeout_s: float = 300.0) -> bool:
    """Delete the Project ``name`` (its controller deletes the namespace first); ``False`` if there was
    none. ``keep_data`` first sets ``spec.storage.keepOnDelete`` when the project has a volume."""
    current = await get_project_resource(kube, name)
    if current is None:
        return False
    if keep_data and (current.get("spec") or {}).get("storage"):
        await kube.request("PATCH", project_path(name), body={"spec": {"storage": {"keepOnDelete": True}}},
                           content_type="application/merge-patch+json",
                           query=[("fieldManager", C.PROVISIONER_FIELD_MANAGER)])
    await kube.delete(project_path(name))
    if not wait:
        return True

    async def gone() -> bool:
        return await get_project_resource(kube, name) is None

    if not await _poll(gone, timeout_s):
        raise ProvisionError(f"Project {name} is still being deleted after {timeout_s:g}s (its namespace "
                             "is terminating, or no controller is running)")
    return True
