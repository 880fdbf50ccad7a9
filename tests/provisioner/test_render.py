"""Rendering: schema-valid objects (kubernetes-validate, strict) with every security property asserted."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from typing import Any

import kubernetes_validate
import pytest

from gateway import contract as C
from gateway.backends.kubernetes import PROJECT_NAMESPACE_PERMISSIONS
from provisioner.render import (
    AUTOMATION_BINDING,
    BLOCKED_IPV4,
    CHECKSUM_KEY_FIELD,
    CHECKSUM_KEY_SECRET,
    DEFAULT_DENY_POLICY,
    DNS_EGRESS_POLICY,
    GATEWAY_INGRESS_POLICY,
    INTERNET_EGRESS_POLICY,
    automation_clusterrole,
    config_checksum,
    find,
    from_yaml,
    new_checksum_key,
    pod_for_dry_run,
    render,
    to_yaml,
)
from provisioner.spec import ProjectSpec, Quota, Resources, SpecError, Storage, Toleration

K8S_VERSION = kubernetes_validate.latest_version()
IMAGE = "wakegate.test/echo:1"
SECRET_VALUE = "s3cr3t-Value-that-must-not-leak"
CLIENT_ID = "12345678-1234-1234-1234-123456789abc"
KEY = bytes(range(32))  # the config checksum key (create reads it back from the cluster)

Obj = dict[str, Any]


def make(**kw: Any) -> ProjectSpec:
    kw.setdefault("name", "demo")
    kw.setdefault("image", IMAGE)
    return ProjectSpec(**kw)


BASIC = make()
FULL = make(config=(("LOG_LEVEL", "debug"), ("GREETING", "hi\nthere")), secret=(("DB_PASSWORD", SECRET_VALUE),),
            storage=Storage("5Gi", "/data", "managed-csi"), allow_internet=True, runtime_class="kata-vm-isolation",
            workload_identity_client_id=CLIENT_ID, readiness_path="/healthz", idle_timeout_s=900,
            hold_timeout_s=2.5, strategy="page", port=8080, run_as_user=1001, run_as_group=1002,
            quota=Quota(pods=6, limits_cpu="4"))
SPECS = {"basic": BASIC, "full": FULL}


def objects(spec: ProjectSpec = BASIC) -> list[Obj]:
    return render(spec, KEY)


def deployment(spec: ProjectSpec = BASIC) -> Obj:
    return find(objects(spec), "Deployment")


def pod_spec(spec: ProjectSpec = BASIC) -> Obj:
    spec_: Obj = deployment(spec)["spec"]["template"]["spec"]
    return spec_


def container(spec: ProjectSpec = BASIC) -> Obj:
    c: Obj = pod_spec(spec)["containers"][0]
    return c


def policy(spec: ProjectSpec, name: str) -> Obj:
    body: Obj = find(objects(spec), "NetworkPolicy", name)["spec"]
    return body


# --- schema and shape -------------------------------------------------------------------------------


@pytest.mark.parametrize("which", SPECS)
def test_every_object_validates_strictly(which: str) -> None:
    objs = objects(SPECS[which])
    for obj in [*objs, pod_for_dry_run(find(objs, "Deployment"))]:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


@pytest.mark.parametrize("which", SPECS)
def test_yaml_round_trip_validates(which: str) -> None:
    objs = from_yaml(to_yaml(objects(SPECS[which])))
    assert objs == objects(SPECS[which])
    for obj in objs:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_schema_validation_would_catch_a_typo() -> None:
    broken = deployment()
    broken["spec"]["template"]["spec"]["containers"][0]["securityContex"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_apply_order_and_inventory() -> None:
    kinds = [(o["kind"], o["metadata"]["name"]) for o in objects(BASIC)]
    assert kinds == [
        ("Namespace", "wg-demo"),
        ("ServiceAccount", "default"), ("ServiceAccount", "demo"), ("ServiceAccount", "demo-bot"),
        ("ResourceQuota", "wakegate-quota"), ("LimitRange", "wakegate-limits"),
        ("NetworkPolicy", DEFAULT_DENY_POLICY), ("NetworkPolicy", GATEWAY_INGRESS_POLICY),
        ("NetworkPolicy", DNS_EGRESS_POLICY),
        ("RoleBinding", AUTOMATION_BINDING), ("Role", C.GATEWAY_ROLE), ("RoleBinding", C.GATEWAY_ROLE),
        ("Deployment", "demo"), ("Service", "demo"),
    ]
    full = [(o["kind"], o["metadata"]["name"]) for o in objects(FULL)]
    assert full.index(("ConfigMap", "demo-env")) < full.index(("Secret", "demo-env")) < full.index(
        ("Secret", CHECKSUM_KEY_SECRET)) < full.index(("Deployment", "demo"))
    assert ("NetworkPolicy", INTERNET_EGRESS_POLICY) in full
    assert full.index(("PersistentVolumeClaim", "demo-data")) < full.index(("Deployment", "demo"))


@pytest.mark.parametrize("which", SPECS)
def test_every_object_is_labelled_and_namespaced(which: str) -> None:
    spec = SPECS[which]
    for obj in objects(spec):
        meta = obj["metadata"]
        assert meta["labels"][C.MANAGED_BY_LABEL] == C.MANAGED_BY
        assert meta["labels"][C.PROJECT_LABEL] == spec.name
        if obj["kind"] != "Namespace":
            assert meta["namespace"] == spec.namespace


def test_rendering_is_deterministic() -> None:
    same = make(**{f: getattr(FULL, f) for f in FULL.__dataclass_fields__})
    assert to_yaml(render(FULL, KEY)) == to_yaml(render(same, bytes(KEY)))
    assert to_yaml(objects(FULL)).startswith("---\napiVersion: v1\nkind: Namespace\n")


# --- namespace -----------------------------------------------------------------------------------


def test_namespace_pod_security_restricted_and_pinned() -> None:
    ns_labels = objects(BASIC)[0]["metadata"]["labels"]
    for mode in ("enforce", "audit", "warn"):
        assert ns_labels[f"pod-security.kubernetes.io/{mode}"] == "restricted"
        assert ns_labels[f"pod-security.kubernetes.io/{mode}-version"] == BASIC.pod_security_version
    assert BASIC.pod_security_version.startswith("v1.")


# --- quota and limits ----------------------------------------------------------------------------


def test_quota() -> None:
    hard = find(objects(BASIC), "ResourceQuota")["spec"]["hard"]
    for key in ("requests.cpu", "limits.cpu", "requests.memory", "limits.memory", "requests.ephemeral-storage",
                "limits.ephemeral-storage", "pods", "configmaps", "secrets", "services", "count/deployments.apps"):
        assert key in hard
    assert hard["services.loadbalancers"] == "0"
    assert hard["services.nodeports"] == "0"
    assert hard["persistentvolumeclaims"] == "0" and hard["requests.storage"] == "0"
    assert int(hard["pods"]) >= 2  # room for the surge pod of a rolling update
    # An Ingress of the project's own could claim another project's hostname: none unless allowed.
    assert hard["count/ingresses.networking.k8s.io"] == "0"
    assert find(objects(make(quota=Quota(ingresses=2))), "ResourceQuota")["spec"]["hard"][
        "count/ingresses.networking.k8s.io"] == "2"
    full = find(objects(FULL), "ResourceQuota")["spec"]["hard"]
    assert full["persistentvolumeclaims"] == "1" and full["requests.storage"] == "5Gi"
    assert full["limits.cpu"] == "4" and full["pods"] == "6"


def test_limit_range_defaults_and_max() -> None:
    spec = make(resources=Resources(cpu_request="100m", cpu_limit="500m", memory_request="64Mi",
                                    memory_limit="128Mi"))
    (item,) = find(objects(spec), "LimitRange")["spec"]["limits"]
    assert item["type"] == "Container"
    assert item["default"] == item["max"] == {"cpu": "500m", "memory": "128Mi", "ephemeral-storage": "1Gi"}
    assert item["defaultRequest"] == {"cpu": "100m", "memory": "64Mi", "ephemeral-storage": "64Mi"}
    pvc_limit = find(objects(FULL), "LimitRange")["spec"]["limits"][1]
    assert pvc_limit == {"type": "PersistentVolumeClaim", "max": {"storage": "5Gi"}}


# --- network policies ------------------------------------------------------------------------------


def test_default_deny_both_ways() -> None:
    deny = policy(BASIC, DEFAULT_DENY_POLICY)
    assert deny == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}


def test_ingress_only_from_gateway_pods_on_the_app_port() -> None:
    spec = make(gateway_namespace="edge", port=8080)
    allow = policy(spec, GATEWAY_INGRESS_POLICY)
    assert allow["policyTypes"] == ["Ingress"]
    assert allow["podSelector"] == {"matchLabels": C.selector_labels("demo")}
    (rule,) = allow["ingress"]
    (peer,) = rule["from"]  # one peer: namespace AND pod selector
    assert peer == {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "edge"}},
                    "podSelector": {"matchLabels": C.GATEWAY_POD_LABELS}}
    assert rule["ports"] == [{"protocol": "TCP", "port": 8080}]
    ingress_rules = [p for p in objects(spec) if p["kind"] == "NetworkPolicy" and p["spec"].get("ingress")]
    assert len(ingress_rules) == 1


def test_egress_to_cluster_dns_only() -> None:
    dns = policy(BASIC, DNS_EGRESS_POLICY)
    assert dns["policyTypes"] == ["Egress"]
    (rule,) = dns["egress"]
    (peer,) = rule["to"]
    assert peer["namespaceSelector"] == {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}}
    assert peer["podSelector"] == {"matchLabels": {"k8s-app": "kube-dns"}}
    assert rule["ports"] == [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]
    names = [o["metadata"]["name"] for o in objects(BASIC) if o["kind"] == "NetworkPolicy"]
    assert INTERNET_EGRESS_POLICY not in names


def test_internet_egress_excludes_private_and_metadata_ranges() -> None:
    internet = policy(FULL, INTERNET_EGRESS_POLICY)
    assert internet["policyTypes"] == ["Egress"]
    (rule,) = internet["egress"]
    assert "ports" not in rule
    v4, v6 = (peer["ipBlock"] for peer in rule["to"])
    assert v4["cidr"] == "0.0.0.0/0" and v6["cidr"] == "::/0"
    for cidr in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16", "168.63.129.16/32",
                 "100.64.0.0/10", "127.0.0.0/8"):
        assert cidr in v4["except"]
    assert set(v4["except"]) == set(BLOCKED_IPV4)
    for cidr in ("fc00::/7", "fe80::/10"):
        assert cidr in v6["except"]


# --- service accounts and RBAC -----------------------------------------------------------------------


@pytest.mark.parametrize("which", SPECS)
def test_no_service_account_mounts_a_token(which: str) -> None:
    accounts = [o for o in objects(SPECS[which]) if o["kind"] == "ServiceAccount"]
    assert {a["metadata"]["name"] for a in accounts} == {"default", "demo", "demo-bot"}
    assert all(a["automountServiceAccountToken"] is False for a in accounts)
    assert pod_spec(SPECS[which])["automountServiceAccountToken"] is False
    assert pod_spec(SPECS[which])["serviceAccountName"] == "demo"


def test_workload_identity() -> None:
    sa = find(objects(FULL), "ServiceAccount", "demo")
    assert sa["metadata"]["annotations"] == {"azure.workload.identity/client-id": CLIENT_ID}
    assert deployment(FULL)["spec"]["template"]["metadata"]["labels"]["azure.workload.identity/use"] == "true"
    assert "annotations" not in find(objects(BASIC), "ServiceAccount", "demo")["metadata"]
    assert "azure.workload.identity/use" not in deployment(BASIC)["spec"]["template"]["metadata"]["labels"]


def _rules(role: Obj) -> list[Obj]:
    rules: list[Obj] = role["rules"]
    return rules


@pytest.mark.parametrize("which", ["automation", C.GATEWAY_ROLE])
def test_roles_have_no_wildcards_or_escalation(which: str) -> None:
    role = automation_clusterrole() if which == "automation" else find(objects(BASIC), "Role", which)
    for rule in _rules(role):
        for key in ("apiGroups", "resources", "verbs", "resourceNames"):
            assert "*" not in rule.get(key, [])
        assert not {"escalate", "bind", "impersonate", "deletecollection"} & set(rule["verbs"])
        assert not {"roles", "rolebindings", "clusterroles", "clusterrolebindings", "serviceaccounts/token",
                    "namespaces", "resourcequotas", "limitranges", "networkpolicies"} & set(rule["resources"])


def test_automation_role_matches_the_recipe() -> None:
    granted = {(g, r) for rule in _rules(automation_clusterrole())
               for g in rule["apiGroups"] for r in rule["resources"]}
    assert granted == {("apps", "deployments"), ("apps", "statefulsets"), ("", "services"), ("", "configmaps"),
                       ("", "secrets"), ("", "pods"), ("networking.k8s.io", "ingresses"), ("", "pods/log")}
    # bound in the project namespace only (a RoleBinding), never cluster-wide
    binding = find(objects(BASIC), "RoleBinding", AUTOMATION_BINDING)
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                  "name": C.AUTOMATION_CLUSTERROLE}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "demo-bot", "namespace": "wg-demo"}]


def test_gateway_role_is_exactly_what_the_gateway_needs() -> None:
    rules = _rules(find(objects(BASIC), "Role", C.GATEWAY_ROLE))
    flat = {(g, r, tuple(rule.get("resourceNames", ())), v)
            for rule in rules for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
    # Exactly the writes the Kubernetes backend makes in a project namespace, on this Deployment only;
    # its reads are cluster-wide (manifests/), so nothing else belongs here.
    assert flat == {(group, resource, ("demo",), verb)
                    for (group, resource), verbs in PROJECT_NAMESPACE_PERMISSIONS.items() for verb in verbs}
    binding = find(objects(make(gateway_namespace="edge")), "RoleBinding", C.GATEWAY_ROLE)
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "wakegate", "namespace": "edge"}]
    assert binding["roleRef"]["name"] == C.GATEWAY_ROLE


# --- configuration -----------------------------------------------------------------------------------


def test_config_map_and_secret() -> None:
    cm = find(objects(FULL), "ConfigMap")
    assert cm["data"] == {"GREETING": "hi\nthere", "LOG_LEVEL": "debug"}
    secret = find(objects(FULL), "Secret")
    assert secret["type"] == "Opaque"
    assert "stringData" not in secret
    assert base64.b64decode(secret["data"]["DB_PASSWORD"]).decode() == SECRET_VALUE
    refs = container(FULL)["envFrom"]
    assert refs == [{"configMapRef": {"name": "demo-env"}}, {"secretRef": {"name": "demo-env"}}]
    # no values, no objects and no envFrom
    assert not [o for o in objects(BASIC) if o["kind"] in ("ConfigMap", "Secret")]
    assert "envFrom" not in container(BASIC)


def test_referenced_env_sources_are_used_never_rendered() -> None:
    spec = make(env_config_map="settings", env_secret="credentials")
    assert container(spec)["envFrom"] == [{"configMapRef": {"name": "settings"}},
                                          {"secretRef": {"name": "credentials"}}]
    objs = render(spec, KEY)
    assert not [o for o in objs if o["kind"] in ("ConfigMap", "Secret")]
    assert "annotations" not in find(objs, "Deployment")["spec"]["template"]["metadata"]
    mixed = make(config=(("A", "1"),), env_secret="credentials")
    assert container(mixed)["envFrom"] == [{"configMapRef": {"name": "demo-env"}},
                                           {"secretRef": {"name": "credentials"}}]


@pytest.mark.parametrize("kw, problem", [
    ({"env_config_map": "Bad_Name"}, "--env-configmap 'Bad_Name' is not a valid object name"),
    ({"env_secret": "x" * 254}, "--env-secret"),
    ({"env_config_map": "cm", "config": (("A", "1"),)}, "--env-configmap cm and inline values both give the "
                                                        "ConfigMap environment"),
    ({"env_secret": "s", "secret": (("A", "1"),)}, "both give the Secret environment"),
    ({"mode": "Sometimes"}, "--mode: expected one of Auto, Running, Suspended, got 'Sometimes'"),
])
def test_bad_env_references_and_modes_are_refused(kw: dict[str, Any], problem: str) -> None:
    with pytest.raises(SpecError, match=re.escape(problem)):
        make(**kw)


@pytest.mark.parametrize("mode", C.MODES)
def test_the_mode_is_an_annotation_unless_auto(mode: str) -> None:
    annotations = deployment(make(mode=mode))["metadata"].get("annotations") or {}
    assert annotations.get(C.MODE_ANNOTATION) == (None if mode == "Auto" else mode)


def test_secret_values_appear_only_in_the_secret() -> None:
    encoded = base64.b64encode(SECRET_VALUE.encode()).decode()
    for obj in objects(FULL):
        text = to_yaml([obj])
        assert SECRET_VALUE not in text
        if obj["kind"] != "Secret":
            assert encoded not in text


def test_the_checksum_key_is_only_in_its_own_secret_which_nothing_mounts() -> None:
    objs = objects(FULL)
    holder = find(objs, "Secret", CHECKSUM_KEY_SECRET)
    assert holder["data"] == {CHECKSUM_KEY_FIELD: base64.b64encode(KEY).decode()}
    for obj in objs:
        if obj is not holder:
            text = to_yaml([obj])
            assert base64.b64encode(KEY).decode() not in text and KEY.hex() not in text
    assert CHECKSUM_KEY_SECRET not in json.dumps(deployment(FULL))  # neither in envFrom nor a volume


def _checksum(spec: ProjectSpec, key: bytes = KEY) -> str:
    template = find(render(spec, key), "Deployment")["spec"]["template"]
    value: str = template["metadata"]["annotations"][C.CONFIG_CHECKSUM_ANNOTATION]
    return value


def test_checksum_restarts_the_app_on_config_change_only() -> None:
    base = _checksum(make(config=(("A", "1"),), secret=(("S", "x"),)))
    assert base == config_checksum(make(config=(("A", "1"),), secret=(("S", "x"),)), KEY)
    assert base.startswith("hmac-sha256:") and len(base) == len("hmac-sha256:") + 64
    assert _checksum(make(config=(("A", "1"),), secret=(("S", "x"),), image="other:2")) == base
    assert _checksum(make(config=(("A", "2"),), secret=(("S", "x"),))) != base
    assert _checksum(make(config=(("A", "1"),), secret=(("S", "y"),))) != base
    # the split between ConfigMap and Secret matters
    assert _checksum(make(config=(("A", "1"), ("B", "x")))) != _checksum(make(config=(("A", "1"),),
                                                                             secret=(("B", "x"),)))


def test_checksum_is_keyed() -> None:
    spec = make(config=(("A", "1"),), secret=(("PASSWORD", "1234"),))
    other_key = bytes(reversed(KEY))
    assert _checksum(spec, KEY) == _checksum(spec, bytes(KEY))  # same key, same checksum: no rollout
    assert _checksum(spec, other_key) != _checksum(spec, KEY)
    # Not the plain sha256 of the data (which anyone reading the Deployment could test guesses against).
    canonical = json.dumps({"config": {"A": "1"}, "secret": {"PASSWORD": "1234"}}, sort_keys=True,
                           separators=(",", ":"), ensure_ascii=False).encode()
    digest = _checksum(spec).split(":", 1)[1]
    assert digest != hashlib.sha256(canonical).hexdigest()
    assert digest not in {hashlib.sha256(canonical + KEY).hexdigest(), hashlib.sha256(KEY + canonical).hexdigest()}


def test_a_short_checksum_key_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 32 bytes, got 16"):
        render(FULL, bytes(16))


def test_new_checksum_keys_are_random_32_bytes() -> None:
    keys = {new_checksum_key() for _ in range(8)}
    assert len(keys) == 8 and {len(k) for k in keys} == {32}


def test_without_a_key_there_is_no_checksum_and_no_key_secret() -> None:
    objs = render(BASIC)
    assert ("Secret", CHECKSUM_KEY_SECRET) not in [(o["kind"], o["metadata"]["name"]) for o in objs]
    assert "annotations" not in find(objs, "Deployment")["spec"]["template"]["metadata"]


# --- the deployment ----------------------------------------------------------------------------------


def test_deployment_starts_stopped_with_gateway_contract() -> None:
    d = deployment(FULL)
    assert d["metadata"]["name"] == "demo" and d["metadata"]["namespace"] == "wg-demo"
    assert d["spec"]["replicas"] == 0
    assert d["spec"]["selector"] == {"matchLabels": C.selector_labels("demo")}
    template_labels = d["spec"]["template"]["metadata"]["labels"]
    assert C.selector_labels("demo").items() <= template_labels.items()
    assert template_labels[C.PROJECT_LABEL] == "demo"
    assert d["metadata"]["annotations"] == {C.IDLE_TIMEOUT_ANNOTATION: "900", C.HOLD_TIMEOUT_ANNOTATION: "2.5",
                                            C.STRATEGY_ANNOTATION: "page"}
    assert C.LAST_ACTIVITY_ANNOTATION not in d["metadata"]["annotations"]  # the gateway owns it
    assert "annotations" not in deployment(BASIC)["metadata"]


@pytest.mark.parametrize("which", SPECS)
def test_pod_template_satisfies_restricted(which: str) -> None:
    spec = SPECS[which]
    pod = pod_spec(spec)
    psc = pod["securityContext"]
    assert psc["runAsNonRoot"] is True
    assert psc["runAsUser"] == spec.run_as_user and psc["runAsUser"] > 0
    assert psc["runAsGroup"] == spec.run_as_group
    assert psc["fsGroup"] == spec.effective_fs_group
    assert psc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["enableServiceLinks"] is False
    for key in ("hostNetwork", "hostPID", "hostIPC", "hostUsers", "initContainers", "ephemeralContainers"):
        assert key not in pod
    (c,) = pod["containers"]
    csc = c["securityContext"]
    assert csc["allowPrivilegeEscalation"] is False
    assert csc["capabilities"] == {"drop": ["ALL"]}
    assert csc["privileged"] is False
    assert csc["readOnlyRootFilesystem"] is True
    assert csc["runAsNonRoot"] is True and csc["runAsUser"] == spec.run_as_user
    assert csc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert "hostPort" not in c["ports"][0]
    for volume in pod["volumes"]:
        assert set(volume) - {"name"} <= {"emptyDir", "persistentVolumeClaim"}  # no hostPath
    assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]
    assert {"name": "tmp", "emptyDir": {"sizeLimit": spec.resources.tmp_size}} in pod["volumes"]


def test_container_resources_ports_and_probes() -> None:
    c = container(FULL)
    assert c["name"] == C.CONTAINER_NAME and c["image"] == IMAGE
    assert c["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    r = FULL.resources
    assert c["resources"] == {
        "requests": {"cpu": r.cpu_request, "memory": r.memory_request,
                     "ephemeral-storage": r.ephemeral_storage_request},
        "limits": {"cpu": r.cpu_limit, "memory": r.memory_limit, "ephemeral-storage": r.ephemeral_storage_limit},
    }
    assert c["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container(BASIC)["readinessProbe"]["tcpSocket"] == {"port": "http"}
    assert container(BASIC)["ports"][0]["containerPort"] == 3001


def test_storage_volume_and_recreate_strategy() -> None:
    pvc = find(objects(FULL), "PersistentVolumeClaim")
    assert pvc["metadata"]["name"] == "demo-data"
    assert pvc["spec"] == {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "5Gi"}},
                           "storageClassName": "managed-csi"}
    assert {"name": "data", "mountPath": "/data"} in container(FULL)["volumeMounts"]
    assert {"name": "data", "persistentVolumeClaim": {"claimName": "demo-data"}} in pod_spec(FULL)["volumes"]
    assert pod_spec(FULL)["securityContext"]["fsGroupChangePolicy"] == "OnRootMismatch"
    assert deployment(FULL)["spec"]["strategy"] == {"type": "Recreate"}
    assert deployment(BASIC)["spec"]["strategy"] == {
        "type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    no_class = make(storage=Storage("1Gi", "/work"))
    assert "storageClassName" not in find(objects(no_class), "PersistentVolumeClaim")["spec"]


def test_runtime_class() -> None:
    assert pod_spec(FULL)["runtimeClassName"] == "kata-vm-isolation"
    assert "runtimeClassName" not in pod_spec(BASIC)


# --- service and dry-run pod -------------------------------------------------------------------------


def test_service() -> None:
    svc = find(objects(BASIC), "Service")
    assert svc["metadata"]["name"] == "demo"
    assert svc["spec"] == {"type": "ClusterIP", "selector": C.selector_labels("demo"),
                           "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]}


def test_pod_for_dry_run() -> None:
    d = deployment(FULL)
    pod = pod_for_dry_run(d)
    assert pod["metadata"]["generateName"] == "demo-dry-run-"
    assert pod["metadata"]["namespace"] == "wg-demo"
    assert pod["metadata"]["labels"] == d["spec"]["template"]["metadata"]["labels"]
    assert pod["spec"] == d["spec"]["template"]["spec"]
    pod["spec"]["containers"][0]["image"] = "changed"
    assert container(FULL)["image"] == IMAGE  # a copy


def test_contract_helpers() -> None:
    assert C.namespace_for("demo") == "wg-demo"
    assert C.app_label_selector("demo") == "app.kubernetes.io/component=app,wakegate.io/project=demo"
    assert C.MANAGED_SELECTOR == "app.kubernetes.io/managed-by=wakegate"


# --- placement: node selector, tolerations, priority class ---------------------------------------------

SPOT = "kubernetes.azure.com/scalesetpriority"
PLACED = make(node_selector=((SPOT, "spot"), ("agentpool", "agents"), ("disktype", "")),
              tolerations=(Toleration(SPOT, "NoSchedule", "spot"), Toleration("dedicated", "NoExecute"),
                           Toleration("dedicated", "NoSchedule", "agents"), Toleration("blank", "NoSchedule", "")),
              priority_class="agents-low")


def test_placement_objects_validate_strictly() -> None:
    objs = objects(PLACED)
    for obj in [*objs, pod_for_dry_run(find(objs, "Deployment"))]:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    assert from_yaml(to_yaml(objs)) == objs


def test_placement_lands_in_the_pod_template() -> None:
    pod = pod_spec(PLACED)
    assert pod["nodeSelector"] == {"agentpool": "agents", "disktype": "", SPOT: "spot"}
    assert list(pod["nodeSelector"]) == sorted(pod["nodeSelector"])
    assert pod["tolerations"] == [
        {"key": "blank", "operator": "Equal", "effect": "NoSchedule"},  # KEY=:EFFECT: the empty value only
        {"key": "dedicated", "operator": "Exists", "effect": "NoExecute"},
        {"key": "dedicated", "operator": "Equal", "value": "agents", "effect": "NoSchedule"},
        {"key": SPOT, "operator": "Equal", "value": "spot", "effect": "NoSchedule"},
    ]
    assert pod["priorityClassName"] == "agents-low"
    # and the dry-run pod (Priority admission checks the class exists, Pod Security the rest) has them too
    assert {k: pod_for_dry_run(deployment(PLACED))["spec"][k] for k in ("nodeSelector", "tolerations",
                                                                         "priorityClassName")} == \
        {k: pod[k] for k in ("nodeSelector", "tolerations", "priorityClassName")}


def test_placement_changes_only_the_pod_template() -> None:
    plain = objects(make())
    placed = objects(PLACED)
    assert [o for o in placed if o["kind"] != "Deployment"] == [o for o in plain if o["kind"] != "Deployment"]
    placed_pod = find(placed, "Deployment")["spec"]["template"]["spec"]
    plain_pod = find(plain, "Deployment")["spec"]["template"]["spec"]
    assert {k: v for k, v in placed_pod.items()
            if k not in ("nodeSelector", "tolerations", "priorityClassName")} == plain_pod
    # The quota has no scopes (no PriorityClass scopeSelector): it counts a pod with a class like any other.
    quota = find(placed, "ResourceQuota")["spec"]
    assert set(quota) == {"hard"}


def test_placement_is_deterministic_whatever_the_flag_order() -> None:
    shuffled = make(node_selector=tuple(reversed(PLACED.node_selector)),
                    tolerations=tuple(reversed(PLACED.tolerations)), priority_class="agents-low")
    assert to_yaml(render(shuffled, KEY)) == to_yaml(render(PLACED, KEY))
    assert to_yaml(render(PLACED)) == to_yaml(render(PLACED))


@pytest.mark.parametrize("which", SPECS)
def test_without_placement_nothing_new_is_rendered(which: str) -> None:
    pod = pod_spec(SPECS[which])
    for key in ("nodeSelector", "tolerations", "priorityClassName", "affinity", "priority"):
        assert key not in pod
    assert list(pod) == ["serviceAccountName", "automountServiceAccountToken", "enableServiceLinks",
                         "securityContext", "containers", "volumes"] + (["runtimeClassName"] if which == "full" else [])
