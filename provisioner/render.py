"""Pure rendering: :class:`ProjectSpec` → the list of Kubernetes objects, in apply order.

``render`` is the single source of truth: ``wakegate project render`` prints exactly these objects
and ``wakegate project create`` applies exactly these objects (server-side apply). The output is
deterministic: the same spec and config checksum key always render byte-identical YAML (``create``
reads the key back from the cluster; ``render`` on the command line makes a new one).
"""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import json
import secrets
from typing import Any

import yaml

from gateway import contract as C

from .spec import ProjectSpec, Toleration

Obj = dict[str, Any]

PSA_MODES = ("enforce", "audit", "warn")
DEFAULT_DENY_POLICY = "wakegate-default-deny"
GATEWAY_INGRESS_POLICY = "wakegate-allow-gateway"
DNS_EGRESS_POLICY = "wakegate-allow-dns"
INTERNET_EGRESS_POLICY = "wakegate-allow-internet"
QUOTA_NAME = "wakegate-quota"
LIMITRANGE_NAME = "wakegate-limits"
TMP_VOLUME = "tmp"
DATA_VOLUME = "data"
WORKLOAD_IDENTITY_CLIENT_ID_ANNOTATION = "azure.workload.identity/client-id"
WORKLOAD_IDENTITY_USE_LABEL = "azure.workload.identity/use"
#: Internet egress never reaches these: private and shared ranges, loopback, link-local (cloud metadata
#: at 169.254.169.254), and Azure's host/platform address 168.63.129.16.
BLOCKED_IPV4 = ("0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "168.63.129.16/32",
                "169.254.0.0/16", "172.16.0.0/12", "192.168.0.0/16")
BLOCKED_IPV6 = ("fc00::/7", "fe80::/10")
#: CoreDNS (AKS and kubeadm) runs in kube-system with this label.
DNS_NAMESPACE = "kube-system"
DNS_POD_LABELS = {"k8s-app": "kube-dns"}
AUTOMATION_VERBS = ["get", "list", "watch", "create", "update", "patch", "delete"]
#: What a project's automation account (``<name>-bot``) may do in its own namespace.
AUTOMATION_RULES: list[Obj] = [
    {"apiGroups": ["apps"], "resources": ["deployments", "statefulsets"], "verbs": list(AUTOMATION_VERBS)},
    {"apiGroups": [""], "resources": ["services", "configmaps", "secrets", "pods"], "verbs": list(AUTOMATION_VERBS)},
    {"apiGroups": ["networking.k8s.io"], "resources": ["ingresses"], "verbs": list(AUTOMATION_VERBS)},
    {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
]
#: The RoleBinding of the automation account to :data:`~gateway.contract.AUTOMATION_CLUSTERROLE`.
AUTOMATION_BINDING = "wakegate-automation"
#: The Secret (not mounted, not in the pod's environment) holding the key of the config checksum, and
#: its data key. Whoever can read it can read the project's Secret too; Deployment readers cannot.
CHECKSUM_KEY_SECRET = "wakegate-checksum-key"
CHECKSUM_KEY_FIELD = "key"
CHECKSUM_KEY_BYTES = 32


def workload_serviceaccount(spec: ProjectSpec) -> str:
    """The ServiceAccount the app pod runs as (no API token is mounted)."""
    return spec.name


def automation_serviceaccount(spec: ProjectSpec) -> str:
    """The project's own automation account (``<name>-bot``), bound to :func:`automation_role`."""
    return f"{spec.name}-bot"


def automation_role(spec: ProjectSpec) -> str:
    """Role of the automation account (``<name>-ops``)."""
    return f"{spec.name}-ops"


def env_object_name(spec: ProjectSpec) -> str:
    """Name of both the ConfigMap and the Secret holding the environment."""
    return f"{spec.name}-env"


def data_claim_name(spec: ProjectSpec) -> str:
    """Name of the PersistentVolumeClaim (``--storage``)."""
    return f"{spec.name}-data"


def new_checksum_key() -> bytes:
    """A fresh random key for :func:`config_checksum` (``create`` keeps the one the cluster holds)."""
    return secrets.token_bytes(CHECKSUM_KEY_BYTES)


def config_checksum(spec: ProjectSpec, key: bytes) -> str:
    """``hmac-sha256:<hex>`` over the ConfigMap and Secret data, keyed with ``key``; goes on the pod
    template. A plain hash would let anyone who can read the Deployment test guesses of a secret
    value offline; without the key they cannot."""
    if len(key) < CHECKSUM_KEY_BYTES:
        raise ValueError(f"the config checksum key must have at least {CHECKSUM_KEY_BYTES} bytes, got {len(key)}")
    canonical = json.dumps({"config": dict(sorted(spec.config)), "secret": dict(sorted(spec.secret))},
                           sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "hmac-sha256:" + hmac.new(key, canonical.encode(), hashlib.sha256).hexdigest()


def _meta(spec: ProjectSpec, name: str, *, namespaced: bool = True, extra_labels: dict[str, str] | None = None,
          annotations: dict[str, str] | None = None) -> Obj:
    meta: Obj = {"name": name}
    if namespaced:
        meta["namespace"] = spec.namespace
    meta["labels"] = {**C.common_labels(spec.name), **(extra_labels or {})}
    if annotations:
        meta["annotations"] = annotations
    return meta


# --- objects -----------------------------------------------------------------------------------------


def namespace(spec: ProjectSpec) -> Obj:
    """The project namespace: managed-by and project labels, Pod Security ``restricted`` pinned."""
    psa: dict[str, str] = {}
    for mode in PSA_MODES:
        psa[f"pod-security.kubernetes.io/{mode}"] = "restricted"
        psa[f"pod-security.kubernetes.io/{mode}-version"] = spec.pod_security_version
    return {"apiVersion": "v1", "kind": "Namespace",
            "metadata": _meta(spec, spec.namespace, namespaced=False, extra_labels=psa)}


def service_accounts(spec: ProjectSpec) -> list[Obj]:
    """``default``, the workload's and the automation account; none gets an API token mounted."""
    workload_annotations = ({WORKLOAD_IDENTITY_CLIENT_ID_ANNOTATION: spec.workload_identity_client_id}
                            if spec.workload_identity_client_id else None)
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(spec, name, annotations=ann),
         "automountServiceAccountToken": False}
        for name, ann in (("default", None), (workload_serviceaccount(spec), workload_annotations),
                          (automation_serviceaccount(spec), None))
    ]


def resource_quota(spec: ProjectSpec) -> Obj:
    """Compute, storage and object-count quota; no LoadBalancer or NodePort Services."""
    return {"apiVersion": "v1", "kind": "ResourceQuota", "metadata": _meta(spec, QUOTA_NAME),
            "spec": {"hard": spec.quota_hard()}}


def limit_range(spec: ProjectSpec) -> Obj:
    """Container defaults, default requests and maxima (the app's own sizes); PVC maximum with storage."""
    r = spec.resources
    limits_ = {"cpu": r.cpu_limit, "memory": r.memory_limit, "ephemeral-storage": r.ephemeral_storage_limit}
    requests = {"cpu": r.cpu_request, "memory": r.memory_request, "ephemeral-storage": r.ephemeral_storage_request}
    items: list[Obj] = [{"type": "Container", "default": dict(limits_), "defaultRequest": requests,
                         "max": dict(limits_)}]
    if spec.storage:
        items.append({"type": "PersistentVolumeClaim", "max": {"storage": spec.storage.size}})
    return {"apiVersion": "v1", "kind": "LimitRange", "metadata": _meta(spec, LIMITRANGE_NAME),
            "spec": {"limits": items}}


def network_policies(spec: ProjectSpec) -> list[Obj]:
    """Default deny both ways; ingress to the app port from gateway pods only; DNS; optional internet."""
    def policy(name: str, body: Obj) -> Obj:
        return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": _meta(spec, name),
                "spec": body}

    out = [
        policy(DEFAULT_DENY_POLICY, {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}),
        policy(GATEWAY_INGRESS_POLICY, {
            "podSelector": {"matchLabels": C.selector_labels(spec.name)},
            "policyTypes": ["Ingress"],
            "ingress": [{
                # One peer: pods with the gateway's labels *in* the gateway namespace (both must match).
                "from": [{"namespaceSelector": {"matchLabels": {C.NAMESPACE_NAME_LABEL: spec.gateway_namespace}},
                          "podSelector": {"matchLabels": dict(C.GATEWAY_POD_LABELS)}}],
                "ports": [{"protocol": "TCP", "port": spec.port}],
            }],
        }),
        policy(DNS_EGRESS_POLICY, {
            "podSelector": {},
            "policyTypes": ["Egress"],
            "egress": [{
                "to": [{"namespaceSelector": {"matchLabels": {C.NAMESPACE_NAME_LABEL: DNS_NAMESPACE}},
                        "podSelector": {"matchLabels": dict(DNS_POD_LABELS)}}],
                "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
            }],
        }),
    ]
    if spec.allow_internet:
        out.append(policy(INTERNET_EGRESS_POLICY, {
            "podSelector": {},
            "policyTypes": ["Egress"],
            "egress": [{"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": list(BLOCKED_IPV4)}},
                               {"ipBlock": {"cidr": "::/0", "except": list(BLOCKED_IPV6)}}]}],
        }))
    return out


def rbac(spec: ProjectSpec) -> list[Obj]:
    """The automation account's RoleBinding and the gateway's Role/RoleBinding (namespace-scoped).

    The automation account's rights are the ClusterRole :data:`~gateway.contract.AUTOMATION_CLUSTERROLE`
    (installed with the gateway, see :data:`AUTOMATION_RULES`), bound here in the project namespace
    only: the controller that writes this binding needs ``bind`` on that one ClusterRole instead of
    holding every right it grants (Kubernetes refuses to let anyone grant rights they lack)."""
    rbac_v1 = "rbac.authorization.k8s.io/v1"
    # Exactly what the gateway's Kubernetes backend writes here; it reads cluster-wide through the
    # ClusterRole that manifests/ installs, so it can scale managed projects and nothing else.
    gateway_rules = [
        # patch: scale 0<->1 and the per-replica activity annotations; only on this project's Deployment.
        {"apiGroups": ["apps"], "resources": ["deployments", "deployments/scale"], "resourceNames": [spec.name],
         "verbs": ["patch"]},
    ]
    return [
        {"apiVersion": rbac_v1, "kind": "RoleBinding", "metadata": _meta(spec, AUTOMATION_BINDING),
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                     "name": C.AUTOMATION_CLUSTERROLE},
         "subjects": [{"kind": "ServiceAccount", "name": automation_serviceaccount(spec),
                       "namespace": spec.namespace}]},
        {"apiVersion": rbac_v1, "kind": "Role", "metadata": _meta(spec, C.GATEWAY_ROLE), "rules": gateway_rules},
        {"apiVersion": rbac_v1, "kind": "RoleBinding", "metadata": _meta(spec, C.GATEWAY_ROLE),
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": C.GATEWAY_ROLE},
         "subjects": [{"kind": "ServiceAccount", "name": C.GATEWAY_SERVICEACCOUNT,
                       "namespace": spec.gateway_namespace}]},
    ]


def automation_clusterrole() -> Obj:
    """The ClusterRole :data:`~gateway.contract.AUTOMATION_CLUSTERROLE` (``manifests/`` installs it)."""
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": C.AUTOMATION_CLUSTERROLE}, "rules": copy.deepcopy(AUTOMATION_RULES)}


def env_objects(spec: ProjectSpec) -> list[Obj]:
    """The ConfigMap (``--env-file``) and the Secret (``--secret-env-file``), both named ``<name>-env``,
    each only when it has values (a referenced or an absent source renders nothing)."""
    name = env_object_name(spec)
    out: list[Obj] = []
    if spec.config:
        out.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(spec, name),
                    "data": dict(sorted(spec.config))})
    if spec.secret:
        secret_data = {k: base64.b64encode(v.encode()).decode("ascii") for k, v in sorted(spec.secret)}
        out.append({"apiVersion": "v1", "kind": "Secret", "metadata": _meta(spec, name), "type": "Opaque",
                    "data": secret_data})
    return out


def env_from(spec: ProjectSpec) -> list[Obj]:
    """The container's ``envFrom``: the referenced ConfigMap/Secret, or the inline ``<name>-env`` ones."""
    out: list[Obj] = []
    config_map = spec.env_config_map or (env_object_name(spec) if spec.config else None)
    secret = spec.env_secret or (env_object_name(spec) if spec.secret else None)
    if config_map:
        out.append({"configMapRef": {"name": config_map}})
    if secret:
        out.append({"secretRef": {"name": secret}})
    return out


def has_inline_env(spec: ProjectSpec) -> bool:
    """Whether the spec carries environment values (only then is there a config checksum)."""
    return bool(spec.config or spec.secret)


def checksum_key_secret(spec: ProjectSpec, key: bytes) -> Obj:
    """The Secret :data:`CHECKSUM_KEY_SECRET` holding ``key``; nothing mounts it."""
    return {"apiVersion": "v1", "kind": "Secret", "metadata": _meta(spec, CHECKSUM_KEY_SECRET), "type": "Opaque",
            "data": {CHECKSUM_KEY_FIELD: base64.b64encode(key).decode("ascii")}}


def persistent_volume_claim(spec: ProjectSpec) -> Obj | None:
    """The data volume (``--storage``); scale to zero never touches it."""
    if spec.storage is None:
        return None
    claim_spec: Obj = {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": spec.storage.size}}}
    if spec.storage.storage_class:
        claim_spec["storageClassName"] = spec.storage.storage_class
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": _meta(spec, data_claim_name(spec)),
            "spec": claim_spec}


def _toleration(tol: Toleration) -> Obj:
    out: Obj = {"key": tol.key, "operator": tol.operator}
    if tol.value:  # Equal with an empty value is the API's default form: no "value" field
        out["value"] = tol.value
    out["effect"] = tol.effect
    return out


def placement(spec: ProjectSpec) -> Obj:
    """The pod spec's ``nodeSelector`` (by key), ``tolerations`` (sorted: their order means nothing) and
    ``priorityClassName``; only those the spec sets, so a spec without placement renders nothing new."""
    out: Obj = {}
    if spec.node_selector:
        out["nodeSelector"] = dict(sorted(spec.node_selector))
    if spec.tolerations:
        ordered = sorted(spec.tolerations, key=lambda t: (t.key, t.effect, t.value is not None, t.value or ""))
        out["tolerations"] = [_toleration(t) for t in ordered]
    if spec.priority_class:
        out["priorityClassName"] = spec.priority_class
    return out


def deployment(spec: ProjectSpec, checksum_key: bytes | None = None) -> Obj:
    """The app, created with ``replicas: 0``; its pod template satisfies Pod Security ``restricted`` and,
    given ``checksum_key``, carries the config checksum (a config change restarts the app)."""
    r = spec.resources
    selector = C.selector_labels(spec.name)
    annotations: dict[str, str] = {}
    if spec.idle_timeout_s is not None:
        annotations[C.IDLE_TIMEOUT_ANNOTATION] = C.format_seconds(spec.idle_timeout_s)
    if spec.hold_timeout_s is not None:
        annotations[C.HOLD_TIMEOUT_ANNOTATION] = C.format_seconds(spec.hold_timeout_s)
    if spec.strategy is not None:
        annotations[C.STRATEGY_ANNOTATION] = spec.strategy
    if spec.mode != C.MODES[0]:
        annotations[C.MODE_ANNOTATION] = spec.mode
    pod_labels = {**C.common_labels(spec.name), **selector}
    if spec.workload_identity_client_id:
        pod_labels[WORKLOAD_IDENTITY_USE_LABEL] = "true"

    probe: Obj = ({"httpGet": {"path": spec.readiness_path, "port": C.PORT_NAME}} if spec.readiness_path
                  else {"tcpSocket": {"port": C.PORT_NAME}})
    probe.update({"periodSeconds": 1, "timeoutSeconds": 1, "successThreshold": 1, "failureThreshold": 3})
    mounts: list[Obj] = [{"name": TMP_VOLUME, "mountPath": "/tmp"}]
    volumes: list[Obj] = [{"name": TMP_VOLUME, "emptyDir": {"sizeLimit": r.tmp_size}}]
    if spec.storage:
        mounts.append({"name": DATA_VOLUME, "mountPath": spec.storage.path})
        volumes.append({"name": DATA_VOLUME, "persistentVolumeClaim": {"claimName": data_claim_name(spec)}})
    sources = env_from(spec)
    container: Obj = {
        "name": C.CONTAINER_NAME,
        "image": spec.image,
        "ports": [{"name": C.PORT_NAME, "containerPort": spec.port, "protocol": "TCP"}],
        **({"envFrom": sources} if sources else {}),
        "resources": {
            "requests": {"cpu": r.cpu_request, "memory": r.memory_request,
                         "ephemeral-storage": r.ephemeral_storage_request},
            "limits": {"cpu": r.cpu_limit, "memory": r.memory_limit,
                       "ephemeral-storage": r.ephemeral_storage_limit},
        },
        "readinessProbe": probe,
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "privileged": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "runAsUser": spec.run_as_user,
            "runAsGroup": spec.run_as_group,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": mounts,
    }
    pod_security: Obj = {
        "runAsNonRoot": True,
        "runAsUser": spec.run_as_user,
        "runAsGroup": spec.run_as_group,
        "fsGroup": spec.effective_fs_group,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    if spec.storage:
        pod_security["fsGroupChangePolicy"] = "OnRootMismatch"
    pod_spec: Obj = {
        "serviceAccountName": workload_serviceaccount(spec),
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": pod_security,
        "containers": [container],
        "volumes": volumes,
    }
    if spec.runtime_class:
        pod_spec["runtimeClassName"] = spec.runtime_class
    pod_spec.update(placement(spec))
    template_meta: Obj = {"labels": pod_labels}
    if checksum_key is not None and has_inline_env(spec):
        template_meta["annotations"] = {C.CONFIG_CHECKSUM_ANNOTATION: config_checksum(spec, checksum_key)}
    # A ReadWriteOnce volume cannot be attached to two nodes: replace the pod instead of surging.
    strategy: Obj = ({"type": "Recreate"} if spec.storage
                     else {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}})
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": _meta(spec, spec.name, extra_labels=selector, annotations=annotations or None),
        "spec": {
            "replicas": 0,
            "revisionHistoryLimit": 3,
            "selector": {"matchLabels": selector},
            "strategy": strategy,
            "template": {
                "metadata": template_meta,
                "spec": pod_spec,
            },
        },
    }


def service(spec: ProjectSpec) -> Obj:
    """ClusterIP Service ``<name>``: port 80 named ``http`` → the container port named ``http``."""
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": _meta(spec, spec.name, extra_labels=C.selector_labels(spec.name)),
            "spec": {"type": "ClusterIP", "selector": C.selector_labels(spec.name),
                     "ports": [{"name": C.PORT_NAME, "port": C.SERVICE_PORT, "targetPort": C.PORT_NAME,
                                "protocol": "TCP"}]}}


def render(spec: ProjectSpec, checksum_key: bytes | None = None) -> list[Obj]:
    """Every object of the project in apply order (Namespace first, Deployment and Service last).

    ``checksum_key`` keys the pod template's config checksum and is rendered into the Secret
    :data:`CHECKSUM_KEY_SECRET`; ``create`` passes the key the cluster already holds (or a new one),
    so the same input renders the same objects. Without it, or without inline environment values
    (a ``Project`` only references its ConfigMap and Secret), there is neither."""
    objs: list[Obj] = [namespace(spec), *service_accounts(spec), resource_quota(spec), limit_range(spec),
                       *network_policies(spec), *rbac(spec), *env_objects(spec)]
    if checksum_key is not None and has_inline_env(spec):
        objs.append(checksum_key_secret(spec, checksum_key))
    claim = persistent_volume_claim(spec)
    if claim is not None:
        objs.append(claim)
    objs += [deployment(spec, checksum_key), service(spec)]
    return objs


def to_yaml(objs: list[Obj]) -> str:
    """Multi-document YAML, deterministic, keys in the order rendered."""
    return yaml.safe_dump_all(objs, sort_keys=False, explicit_start=True, default_flow_style=False,
                              width=10_000, allow_unicode=True)


def from_yaml(text: str) -> list[Obj]:
    """Parse multi-document YAML (e.g. ``render`` output) back into objects, skipping empty documents."""
    return [doc for doc in yaml.safe_load_all(text) if doc]


def find(objs: list[Obj], kind: str, name: str | None = None) -> Obj:
    """The first object of ``kind`` (and ``name``); ``KeyError`` if there is none."""
    for obj in objs:
        if obj.get("kind") == kind and (name is None or obj["metadata"]["name"] == name):
            return obj
    raise KeyError(f"no {kind} {name or ''}".rstrip())


def pod_for_dry_run(deploy: Obj) -> Obj:
    """A Pod built from the Deployment's template, for a server-side dry run (Pod Security, quota)."""
    template = copy.deepcopy(deploy["spec"]["template"])
    meta = deploy["metadata"]
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"generateName": f"{meta['name']}-dry-run-", "namespace": meta["namespace"],
                         "labels": template.get("metadata", {}).get("labels", {}),
                         "annotations": template.get("metadata", {}).get("annotations", {})},
            "spec": template["spec"]}
