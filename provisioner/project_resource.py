"""A ``Project`` custom resource as a :class:`ProjectSpec`, and back (pure).

``from_resource`` reads what ``kubectl get project NAME -o json`` returns (the API server has already
checked the schema and the CEL rules of :mod:`provisioner.crd`) and builds the same
:class:`ProjectSpec` the CLI builds from flags, so the controller renders exactly the objects
``wakegate project create`` applies. Problems only the spec can find (a quota too small for a rolling
update, an unknown time zone) raise :class:`~provisioner.errors.SpecError` naming the resource's field
(``spec.quota.pods``), not the CLI flag.

``to_resource`` is the other way, for ``wakegate project create`` on a cluster with the CRD: the spec's
environment values are never written into the Project; it references the project's ``<name>-env``
ConfigMap and Secret, which the CLI applies next to it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any

from gateway import contract as C

from .errors import SpecError
from .keep_warm import Window, WindowError, parse_windows
from .render import env_object_name
from .spec import ProjectSpec, Quota, Resources, Storage, Toleration

Obj = dict[str, Any]

#: The CLI flag each :class:`ProjectSpec` check names, and the Project field it comes from.
FLAG_FIELDS: dict[str, str] = {
    "--image": "spec.image", "--port": "spec.port", "--mode": "spec.mode",
    "--env-configmap": "spec.env.configMapRef.name", "--env-secret": "spec.env.secretRef.name",
    "--tmp-size": "spec.resources.tmpSize", "--readiness-path": "spec.readinessPath",
    "--idle-timeout": "spec.idleTimeout", "--hold-timeout": "spec.holdTimeout", "--strategy": "spec.strategy",
    "--run-as-user": "spec.securityContext.runAsUser", "--run-as-group": "spec.securityContext.runAsGroup",
    "--fs-group": "spec.securityContext.fsGroup", "--quota-pods": "spec.quota.pods",
    "--quota-objects": "spec.quota.objects", "--storage": "spec.storage.size", "--storage-path": "spec.storage.path",
    "--storage-class": "spec.storage.storageClassName", "--runtime-class": "spec.runtimeClassName",
    "--workload-identity-client-id": "spec.workloadIdentityClientId",
    "--pod-security-version": "spec.podSecurityVersion", "--node-selector": "spec.nodeSelector",
    "--toleration": "spec.tolerations", "--priority-class": "spec.priorityClassName",
    **{f"--{resource}-{kind[:-1] if kind == 'requests' else 'limit'}": f"spec.resources.{kind}.{resource}"
       for resource in ("cpu", "memory", "ephemeral-storage") for kind in ("requests", "limits")},
    **{f"--quota-{kind}-{resource}": f"spec.quota.{kind}.{resource}"
       for resource in ("cpu", "memory", "ephemeral-storage") for kind in ("requests", "limits")},
}
_FLAG = re.compile(r"--[a-z][a-z-]*")
_RESOURCE_NAMES = ("cpu", "memory", "ephemeral-storage")


@dataclass(frozen=True, slots=True)
class ProjectResource:
    """A Project as the controller acts on it."""

    spec: ProjectSpec
    keep_warm: tuple[Window, ...] = ()
    #: ``spec.storage.keepOnDelete``: deleting the Project keeps the volume's data.
    keep_data: bool = False

    @property
    def name(self) -> str:
        return self.spec.name


def in_resource_terms(message: str) -> str:
    """A :class:`SpecError` message with each CLI flag replaced by the Project field it comes from
    (outside quoted values, which are the user's own text)."""
    parts = re.split(r"('[^']*')", message)
    return "".join(part if i % 2 else _FLAG.sub(lambda m: FLAG_FIELDS.get(m.group(0), m.group(0)), part)
                   for i, part in enumerate(parts))


def _mapping(value: object, path: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise SpecError(f"{path}: expected an object, got {type(value).__name__}")
    return value


def _quantity(value: object) -> str | None:
    """Quantities are int-or-string in the schema; the spec keeps them as text."""
    if value is None:
        return None
    return str(value)


def _seconds(value: object, path: str) -> float | None:
    if value is None:
        return None
    try:
        return C.parse_duration(value) if isinstance(value, str) else C.positive_seconds(value)
    except ValueError as exc:
        raise SpecError(f"{path}: {exc}") from None


def _ref(env: Mapping[str, Any], key: str) -> str | None:
    name = _mapping(env.get(key), f"spec.env.{key}").get("name")
    return None if name is None else str(name)


def from_resource(obj: Mapping[str, Any], *, namespace_prefix: str = C.DEFAULT_NAMESPACE_PREFIX,
                  gateway_namespace: str = C.DEFAULT_GATEWAY_NAMESPACE) -> ProjectResource:
    """The :class:`ProjectResource` of a Project object; :class:`SpecError` naming the field otherwise."""
    name = str(_mapping(obj.get("metadata"), "metadata").get("name") or "")
    spec = _mapping(obj.get("spec"), "spec")
    res = _mapping(spec.get("resources"), "spec.resources")
    requests = _mapping(res.get("requests"), "spec.resources.requests")
    limits = _mapping(res.get("limits"), "spec.resources.limits")
    defaults = Resources()
    resources = Resources(**{
        f"{r.replace('-', '_')}_{kind}": _quantity(given.get(r)) or getattr(defaults, f"{r.replace('-', '_')}_{kind}")
        for r in _RESOURCE_NAMES for kind, given in (("request", requests), ("limit", limits))},
        tmp_size=_quantity(res.get("tmpSize")) or defaults.tmp_size)
    q = _mapping(spec.get("quota"), "spec.quota")
    q_requests = _mapping(q.get("requests"), "spec.quota.requests")
    q_limits = _mapping(q.get("limits"), "spec.quota.limits")
    quota_defaults = Quota()
    quota = Quota(
        pods=q.get("pods", quota_defaults.pods), objects=q.get("objects", quota_defaults.objects),
        ingresses=q.get("ingresses", quota_defaults.ingresses),
        **{f"{kind}_{r.replace('-', '_')}": _quantity(given.get(r))
           for r in _RESOURCE_NAMES for kind, given in (("requests", q_requests), ("limits", q_limits))})
    sc = _mapping(spec.get("securityContext"), "spec.securityContext")
    st = spec.get("storage")
    storage = keep_data = None
    if st is not None:
        st = _mapping(st, "spec.storage")
        storage = Storage(size=str(st.get("size") or ""), path=str(st.get("path") or ""),
                          storage_class=st.get("storageClassName"))
        keep_data = bool(st.get("keepOnDelete", False))
    env = _mapping(spec.get("env"), "spec.env")
    tolerations = []
    for i, tol in enumerate(spec.get("tolerations") or []):
        tol = _mapping(tol, f"spec.tolerations[{i}]")
        tolerations.append(Toleration(key=str(tol.get("key") or ""), effect=str(tol.get("effect") or ""),
                                      value=None if tol.get("value") is None else str(tol["value"])))
    try:
        windows = parse_windows(spec.get("keepWarm"), "spec.keepWarm")
    except WindowError as exc:
        raise SpecError(str(exc)) from None
    try:
        project = ProjectSpec(
            name=name, image=str(spec.get("image") or ""), port=spec.get("port", C.DEFAULT_CONTAINER_PORT),
            env_config_map=_ref(env, "configMapRef"), env_secret=_ref(env, "secretRef"),
            mode=spec.get("mode", C.MODES[0]), resources=resources, quota=quota,
            run_as_user=sc.get("runAsUser", 1000), run_as_group=sc.get("runAsGroup", 1000),
            fs_group=sc.get("fsGroup"), readiness_path=spec.get("readinessPath"),
            idle_timeout_s=_seconds(spec.get("idleTimeout"), "spec.idleTimeout"),
            hold_timeout_s=_seconds(spec.get("holdTimeout"), "spec.holdTimeout"),
            strategy=spec.get("strategy"), gateway_namespace=gateway_namespace, namespace_prefix=namespace_prefix,
            allow_internet=bool(spec.get("allowInternet", False)), storage=storage,
            runtime_class=spec.get("runtimeClassName"),
            workload_identity_client_id=spec.get("workloadIdentityClientId"),
            pod_security_version=spec.get("podSecurityVersion", ProjectSpec.__dataclass_fields__[
                "pod_security_version"].default),
            node_selector=tuple(sorted((str(k), str(v)) for k, v in
                                       _mapping(spec.get("nodeSelector"), "spec.nodeSelector").items())),
            tolerations=tuple(tolerations), priority_class=spec.get("priorityClassName"))
    except SpecError as exc:
        raise SpecError(in_resource_terms(str(exc))) from None
    return ProjectResource(spec=project, keep_warm=windows, keep_data=bool(keep_data))


def _duration(seconds: float | None) -> int | str | None:
    """Whole seconds as a number, else ``2.5s``."""
    if seconds is None:
        return None
    if float(seconds).is_integer():
        return int(seconds)
    return f"{Decimal(repr(float(seconds))):f}s"  # never an exponent: the CRD's pattern has none


def to_resource(spec: ProjectSpec, *, keep_data: bool = False) -> Obj:
    """The Project for ``spec`` (``wakegate project create`` on a cluster with the CRD). Inline
    environment values become references to the project's ``<name>-env`` ConfigMap and Secret.
    Only what differs from the defaults is written, so the object reads like one a person wrote."""
    defaults = ProjectSpec(name=spec.name, image=spec.image)
    body: Obj = {"image": spec.image}
    if spec.port != defaults.port:
        body["port"] = spec.port
    if spec.mode != defaults.mode:
        body["mode"] = spec.mode
    env: Obj = {}
    config_map = spec.env_config_map or (env_object_name(spec) if spec.config else None)
    secret = spec.env_secret or (env_object_name(spec) if spec.secret else None)
    if config_map:
        env["configMapRef"] = {"name": config_map}
    if secret:
        env["secretRef"] = {"name": secret}
    if env:
        body["env"] = env
    r, d = spec.resources, defaults.resources
    resources: Obj = {}
    for kind, suffix in (("requests", "request"), ("limits", "limit")):
        given = {res: getattr(r, f"{res.replace('-', '_')}_{suffix}") for res in _RESOURCE_NAMES
                 if getattr(r, f"{res.replace('-', '_')}_{suffix}") != getattr(d, f"{res.replace('-', '_')}_{suffix}")}
        if given:
            resources[kind] = given
    if r.tmp_size != d.tmp_size:
        resources["tmpSize"] = r.tmp_size
    if resources:
        body["resources"] = resources
    q, dq = spec.quota, defaults.quota
    quota: Obj = {k: getattr(q, k) for k in ("pods", "objects", "ingresses") if getattr(q, k) != getattr(dq, k)}
    for kind in ("requests", "limits"):
        given = {res: getattr(q, f"{kind}_{res.replace('-', '_')}") for res in _RESOURCE_NAMES
                 if getattr(q, f"{kind}_{res.replace('-', '_')}") is not None}
        if given:
            quota[kind] = given
    if quota:
        body["quota"] = quota
    sc = {field: getattr(spec, attr) for field, attr in (("runAsUser", "run_as_user"), ("runAsGroup", "run_as_group"),
                                                         ("fsGroup", "fs_group"))
          if getattr(spec, attr) != getattr(defaults, attr)}
    if sc:
        body["securityContext"] = sc
    optional: tuple[tuple[str, Any], ...] = (
        ("readinessPath", spec.readiness_path),
        ("idleTimeout", _duration(spec.idle_timeout_s)), ("holdTimeout", _duration(spec.hold_timeout_s)),
        ("strategy", spec.strategy), ("runtimeClassName", spec.runtime_class),
        ("workloadIdentityClientId", spec.workload_identity_client_id), ("priorityClassName", spec.priority_class))
    body.update({key: value for key, value in optional if value is not None})
    if spec.allow_internet:
        body["allowInternet"] = True
    if spec.storage is not None:
        storage: Obj = {"size": spec.storage.size, "path": spec.storage.path}
        if spec.storage.storage_class:
            storage["storageClassName"] = spec.storage.storage_class
        if keep_data:
            storage["keepOnDelete"] = True
        body["storage"] = storage
    if spec.pod_security_version != defaults.pod_security_version:
        body["podSecurityVersion"] = spec.pod_security_version
    if spec.node_selector:
        body["nodeSelector"] = dict(spec.node_selector)
    if spec.tolerations:
        body["tolerations"] = [{"key": t.key, **({} if t.value is None else {"value": t.value}), "effect": t.effect}
                               for t in spec.tolerations]
    return {"apiVersion": C.PROJECT_API_VERSION, "kind": C.PROJECT_KIND,
            "metadata": {"name": spec.name, "labels": {C.MANAGED_BY_LABEL: C.MANAGED_BY}}, "spec": body}


def effective(resource: ProjectResource, mode: str) -> ProjectSpec:
    """The spec rendered for ``mode`` (``Running`` while a keep-warm window is open)."""
    return resource.spec if mode == resource.spec.mode else replace(resource.spec, mode=mode)
