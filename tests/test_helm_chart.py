"""The Helm chart ``charts/wakegate``: the same objects as ``manifests/`` for the same settings.

For every combination of the kustomize components (aks, monitoring, gateway-api, ingress-namespace;
settings always), the chart rendered with the equivalent values
(:func:`tests.cluster.helm.helm_values_for`) and the kustomize install rendered with the same settings
must hold the same objects (kind, namespace, name) with the same content after :func:`normalise`. The
chart is rendered with ``--include-crds``, so its ``crds/`` (the Project CRD) is compared too. With
``controller.enabled=false`` it makes the same objects less the controller's (the CRD stays: Helm never
templates nor deletes crds/). helm is the pinned build of tests/cluster/build.sh. The cluster tests
hand every object the chart makes to the real test API server.
"""

from __future__ import annotations

import base64
import copy
import difflib
import io
import ipaddress
import json
import os
import re
import tempfile
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Generator
from contextlib import redirect_stderr, redirect_stdout
from functools import cache
from typing import Any

import pytest
import yaml

from gateway import contract as C
from gateway.backends import kubernetes as kb
from provisioner.cli import main as project_cli
from tests.cluster import gateway_install
from tests.cluster import helm as H
from tests.cluster.controlplane import Cluster, wait_for
from tests.test_manifests import (
    COMBINATIONS,
    CONTROLLER,
    CONTROLLER_OBJECTS,
    CONTROLLER_POD_LABELS,
    CRD_KINDS,
    SETTINGS,
    controller_settings,
    gateway_settings,
    label,
)

Obj = dict[str, Any]
Key = tuple[str, str, str]

# The only thing the comparison normalises: the four labels Helm's conventions put on every object a
# release owns (helm.sh/chart: chart name and version; app.kubernetes.io/managed-by: Helm;
# app.kubernetes.io/instance: the release name; app.kubernetes.io/version: appVersion). They record
# which release and chart made an object, which manifests/ has no notion of; both installs give every
# object the same app.kubernetes.io/name and part-of labels. Only metadata.labels lose them: selectors
# and pod template labels carry none of them and are compared as they are, since project namespaces'
# NetworkPolicies select the gateway's pods by those labels.
HELM_LABELS = frozenset({"helm.sh/chart", "app.kubernetes.io/managed-by", "app.kubernetes.io/instance",
                         "app.kubernetes.io/version"})
DEFAULT_SETTINGS = {"domain": C.DEFAULT_DOMAIN, "trustedProxies": "10.244.0.0/16"}
CRD_KEY = ("CustomResourceDefinition", "", C.PROJECT_CRD)
# The controller's objects in the default namespace, and its PodMonitor (components/monitoring).
PODMONITOR_KEY = ("PodMonitor", C.DEFAULT_GATEWAY_NAMESPACE, CONTROLLER)
CONTROLLER_KEYS = frozenset(
    {(kind, "" if kind.startswith(("Cluster", "ValidatingAdmissionPolicy")) else C.DEFAULT_GATEWAY_NAMESPACE, name)
     for kind, name in CONTROLLER_OBJECTS} | {PODMONITOR_KEY})


def normalise(obj: Obj) -> Obj:
    out = copy.deepcopy(obj)
    labels = out["metadata"].get("labels", {})
    for key in HELM_LABELS & labels.keys():
        del labels[key]
    if "labels" in out["metadata"] and not labels:
        del out["metadata"]["labels"]
    return out


def key(o: Obj) -> Key:
    return o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"]


def by_key(objs: list[Obj]) -> dict[Key, Obj]:
    out = {key(o): o for o in objs}
    assert len(out) == len(objs), "two objects with the same kind, namespace and name"
    return out


def helm_template(values: dict[str, Any], namespace: str = C.DEFAULT_GATEWAY_NAMESPACE) -> list[Obj]:
    """``helm template --include-crds``: the chart's templates and its crds/, as ``helm install`` applies
    them (:func:`tests.cluster.helm.helm_template` leaves crds/ out, as ``helm template`` does)."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix="wakegate-values-") as f:
        yaml.safe_dump(values, f)
        f.flush()
        out = H.helm("template", "wakegate", str(H.CHART), "--namespace", namespace, "--values", f.name,
                     "--include-crds")
    return H.parse(out.stdout)


@cache
def chart(values_json: str, namespace: str = C.DEFAULT_GATEWAY_NAMESPACE) -> tuple[Obj, ...]:
    return tuple(helm_template(json.loads(values_json), namespace=namespace))


def template(values: dict[str, Any], namespace: str = C.DEFAULT_GATEWAY_NAMESPACE) -> list[Obj]:
    return copy.deepcopy(list(chart(json.dumps(values, sort_keys=True), namespace)))


def find(objs: list[Obj], kind: str, name: str = "wakegate") -> Obj:
    found = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def diff(a: Obj, b: Obj) -> str:
    left = yaml.safe_dump(a, sort_keys=True).splitlines()
    right = yaml.safe_dump(b, sort_keys=True).splitlines()
    return "\n".join(difflib.unified_diff(left, right, "manifests/", "charts/wakegate", lineterm=""))


# --- versions --------------------------------------------------------------------------------------


def chart_meta() -> Obj:
    meta: Obj = yaml.safe_load((H.CHART / "Chart.yaml").read_text())
    return meta


def test_chart_app_version_is_the_package_version() -> None:
    assert chart_meta()["appVersion"] == H.package_version()
    assert chart_meta()["apiVersion"] == "v2" and chart_meta()["name"] == "wakegate"


def images(objs: list[Obj]) -> dict[str, tuple[str, str]]:
    """Deployment name → its one container's (image, imagePullPolicy)."""
    out = {}
    for o in objs:
        if o["kind"] == "Deployment":
            (c,) = o["spec"]["template"]["spec"]["containers"]
            out[o["metadata"]["name"]] = (c["image"], c["imagePullPolicy"])
    return out


def test_the_image_tag_defaults_to_the_app_version_as_in_manifests() -> None:
    # The gateway and the controller run the same image, from the same values.
    default = ("ghcr.io/example/wakegate:" + chart_meta()["appVersion"], "IfNotPresent")
    assert images(template({})) == {"wakegate": default, CONTROLLER: default}
    base = yaml.safe_load((H.MANIFESTS / "base" / "kustomization.yaml").read_text())
    assert base["images"] == [{"name": "wakegate", "newName": "ghcr.io/example/wakegate",
                               "newTag": H.package_version()}]
    custom = ("registry.example.com/wg:1.2.3", "Always")
    assert images(template({"image": {"repository": "registry.example.com/wg", "tag": "1.2.3",
                                      "pullPolicy": "Always"}})) == {"wakegate": custom, CONTROLLER: custom}


def test_helm_is_the_pinned_build() -> None:
    out = H.helm("version", "--short")
    assert out.stdout.strip().startswith(H.helm_version()), out.stdout


# --- lint ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("extra", [[], ["--set", "monitoring.enabled=true", "--set", "gatewayAPI.enabled=true",
                                        "--set", "namespace.create=true"],
                                   ["--set", "monitoring.enabled=true", "--set", "controller.enabled=false"]],
                         ids=["defaults", "everything", "no-controller"])
def test_helm_lint_passes_strictly(extra: list[str]) -> None:
    out = H.helm("lint", "--strict", str(H.CHART), "--namespace", C.DEFAULT_GATEWAY_NAMESPACE, *extra)
    assert "1 chart(s) linted, 0 chart(s) failed" in out.stdout, out.stdout
    assert "[WARNING]" not in out.stdout and "[ERROR]" not in out.stdout, out.stdout


# --- the chart against manifests/ ------------------------------------------------------------------


@pytest.mark.parametrize("settings", [SETTINGS, DEFAULT_SETTINGS], ids=["settings", "defaults"])
@pytest.mark.parametrize("combo", COMBINATIONS, ids=label)
def test_the_chart_makes_the_objects_manifests_makes(combo: tuple[str, ...], settings: dict[str, str]) -> None:
    ours = by_key([normalise(o) for o in template(H.helm_values_for(settings, combo))])
    theirs = by_key(H.kustomize_install(settings, ["settings", *combo]))
    assert sorted(ours) == sorted(theirs), (
        f"only in the chart: {sorted(set(ours) - set(theirs))}; only in manifests/: {sorted(set(theirs) - set(ours))}")
    for k, obj in theirs.items():
        assert ours[k] == obj, f"{k} differs:\n{diff(obj, ours[k])}"
    # The comparison covers the CRD (crds/, --include-crds) and every controller object.
    assert CRD_KEY in ours and CONTROLLER_KEYS - {PODMONITOR_KEY} <= set(ours)
    assert (PODMONITOR_KEY in ours) == ("monitoring" in combo)


@pytest.mark.parametrize("combo", [(), H.COMPONENTS], ids=label)
def test_without_the_controller_the_chart_makes_the_rest_and_keeps_the_crd(combo: tuple[str, ...]) -> None:
    values = H.helm_values_for(SETTINGS, combo)
    ours = by_key([normalise(o) for o in template({**values, "controller": {"enabled": False}})])
    theirs = by_key(H.kustomize_install(SETTINGS, ["settings", *combo]))
    # Every controller object manifests/ installs (with components/monitoring its PodMonitor too) ...
    gone = CONTROLLER_KEYS if "monitoring" in combo else CONTROLLER_KEYS - {PODMONITOR_KEY}
    assert gone <= set(theirs)
    # ... and nothing else is left out; the CRD stays.
    assert sorted(ours) == sorted(set(theirs) - gone), sorted(set(ours) ^ (set(theirs) - gone))
    assert CRD_KEY in ours
    for k in ours:
        assert ours[k] == theirs[k], f"{k} differs:\n{diff(theirs[k], ours[k])}"
    assert not [o for o in ours.values() if CONTROLLER in json.dumps(o)]


def test_the_chart_ships_the_crd_of_manifests() -> None:
    shipped = H.CHART / "crds" / "projects.yaml"
    assert shipped.read_bytes() == (H.MANIFESTS / "base" / "crd-projects.yaml").read_bytes(), \
        "run `python -m provisioner.crd manifests/base/crd-projects.yaml charts/wakegate/crds/projects.yaml`"
    crds = [o for o in template({}) if o["kind"] == "CustomResourceDefinition"]
    assert crds == H.parse(shipped.read_text())
    # Only with --include-crds: `helm template` alone leaves crds/ out (and helm install applies them).
    assert not [o for o in H.helm_template({}) if o["kind"] == "CustomResourceDefinition"]


def test_helm_labels_are_the_only_difference_and_stay_out_of_selectors() -> None:
    objs = template(H.helm_values_for(SETTINGS, H.COMPONENTS))
    for o in objs:
        if o["kind"] == "CustomResourceDefinition":  # crds/ is applied as it is, never templated
            assert o["metadata"]["labels"].keys().isdisjoint(HELM_LABELS), key(o)
            continue
        assert o["metadata"]["labels"].keys() >= HELM_LABELS, key(o)
        text = json.dumps({k: v for k, v in o.items() if k != "metadata"})
        for label_key, value in o["metadata"]["labels"].items():
            if label_key in HELM_LABELS:
                assert json.dumps({label_key: value})[1:-1] not in text, (key(o), label_key)
    dep = find(objs, "Deployment")
    assert dep["spec"]["selector"]["matchLabels"] == C.GATEWAY_POD_LABELS
    assert dep["spec"]["template"]["metadata"]["labels"] == {**C.GATEWAY_POD_LABELS,
                                                             "app.kubernetes.io/component": "gateway"}
    # The controller's pods: never the gateway's label (project NetworkPolicies admit only those).
    ctl = find(objs, "Deployment", CONTROLLER)
    assert ctl["spec"]["selector"]["matchLabels"] == CONTROLLER_POD_LABELS
    assert ctl["spec"]["template"]["metadata"]["labels"] == {**CONTROLLER_POD_LABELS,
                                                             "app.kubernetes.io/component": "controller"}
    assert find(objs, "PodMonitor", CONTROLLER)["spec"]["selector"]["matchLabels"] == CONTROLLER_POD_LABELS


def test_the_chart_ships_the_manifests_dashboard_and_rules() -> None:
    shipped = (H.CHART / "files" / "wakegate-dashboard.json").read_bytes()
    assert shipped == (H.MANIFESTS / "grafana" / "wakegate-dashboard.json").read_bytes(), \
        "copy manifests/grafana/wakegate-dashboard.json to charts/wakegate/files/"
    rule = yaml.safe_load((H.MANIFESTS / "components" / "monitoring" / "prometheusrule.yaml").read_text())
    assert yaml.safe_load((H.CHART / "files" / "prometheusrule-spec.yaml").read_text()) == rule["spec"], \
        "charts/wakegate/files/prometheusrule-spec.yaml must be the spec of the manifests' PrometheusRule"


# --- the chart's own defaults and values ------------------------------------------------------------


def test_defaults_generate_the_admin_token_and_leave_the_namespace_to_the_operator() -> None:
    objs = template({})
    equivalent = template(H.helm_values_for(DEFAULT_SETTINGS, ()))
    assert sorted(map(key, objs)) == sorted(
        [k for k in map(key, equivalent) if k[0] != "Namespace"] + [("Secret", C.DEFAULT_GATEWAY_NAMESPACE,
                                                                     "wakegate-admin-token")])
    secret = find(objs, "Secret", "wakegate-admin-token")
    token = base64.b64decode(secret["data"]["token"]).decode()
    assert re.fullmatch(r"[A-Za-z0-9]{64}", token)
    volumes = find(objs, "Deployment")["spec"]["template"]["spec"]["volumes"]
    assert {"name": "admin-token", "secret": {"secretName": "wakegate-admin-token", "defaultMode": 0o440}} in volumes
    named = template({"adminToken": {"existingSecret": "mine"}})
    assert not [o for o in named if o["kind"] == "Secret"]
    volumes = find(named, "Deployment")["spec"]["template"]["spec"]["volumes"]
    assert volumes[0]["secret"]["secretName"] == "mine"


def test_values_reach_the_gateway_and_its_objects() -> None:
    objs = template({"domain": "apps.example.org", "trustedProxies": ["10.9.0.0/16", "fd00::/64"], "replicas": 3,
                     "resources": {"requests": {"cpu": "1"}}, "ingress": {"className": "traefik",
                                                                         "tlsSecretName": "certs"},
                     "networkPolicy": {"adminAccessNamespaceLabels": {"team": "ops", "wakegate.io/admin-access": None},
                                       "publicNamespaceLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}},
                    namespace="edge")
    settings = gateway_settings(objs)
    assert settings.domain == "apps.example.org"
    assert settings.trusted_proxies == ("10.9.0.0/16", "fd00::/64") and settings.trust_forwarded is False
    dep = find(objs, "Deployment")
    assert dep["spec"]["replicas"] == 3 and dep["metadata"]["namespace"] == "edge"
    assert dep["spec"]["template"]["spec"]["containers"][0]["resources"] == {  # Helm merges maps
        "requests": {"cpu": "1", "memory": "128Mi"}, "limits": {"memory": "512Mi"}}
    ing = find(objs, "Ingress")
    assert ing["spec"]["ingressClassName"] == "traefik"
    assert ing["spec"]["tls"] == [{"hosts": ["*.apps.example.org"], "secretName": "certs"}]
    pol = find(objs, "NetworkPolicy")
    public, admin = pol["spec"]["ingress"]
    assert public == {"ports": [{"protocol": "TCP", "port": 8080}], "from": [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}]}
    assert admin["from"][0] == {"namespaceSelector": {"matchLabels": {"team": "ops"}}}
    for kind in ("ClusterRoleBinding",):
        assert find(objs, kind)["subjects"][0]["namespace"] == "edge"
    assert find(objs, "NetworkPolicy", CONTROLLER)["spec"]["ingress"][0]["from"] == [
        {"namespaceSelector": {"matchLabels": {"team": "ops"}}}]
    # The controller: the same domain; its own replicas and resources; bound in the release namespace.
    ctl = controller_settings(objs)
    assert (ctl.domain, ctl.gateway_namespace) == ("apps.example.org", "edge")
    for kind, name in CONTROLLER_OBJECTS:
        o = find(objs, kind, name)
        assert o["metadata"].get("namespace", "edge") == "edge"
        assert all(s["namespace"] == "edge" for s in o.get("subjects", [])), (kind, name)
    ctl_dep = find(objs, "Deployment", CONTROLLER)
    assert ctl_dep["spec"]["replicas"] == 2
    custom = template({"controller": {"replicas": 3, "resources": {"limits": {"memory": "1Gi"}}}})
    ctl_dep = find(custom, "Deployment", CONTROLLER)
    assert ctl_dep["spec"]["replicas"] == 3 and find(custom, "Deployment")["spec"]["replicas"] == 2
    assert ctl_dep["spec"]["template"]["spec"]["containers"][0]["resources"] == {
        "requests": {"cpu": "50m", "memory": "96Mi"}, "limits": {"memory": "1Gi"}}
    route = find(template({"gatewayAPI": {"enabled": True, "parentRefs": [{"name": "gw"}]}}), "HTTPRoute")
    assert route["spec"]["parentRefs"] == [{"name": "gw"}]


@pytest.mark.parametrize("values,message", [
    ({"trustedProxies": ["10.0.0.0/8", "0.0.0.0/0"]}, "trustedProxies"),
    ({"trustedProxies": ["::/0"]}, "trustedProxies"),
    ({"domain": "*.env.example.com"}, "domain"),
    ({"domain": "https://env.example.com"}, "domain"),
    ({"domain": ""}, "domain"),
    ({"replicas": 0}, "replicas"),
    ({"trustForwarded": True}, "trustForwarded"),
    ({"controller": {"replicas": 0}}, "controller"),
    ({"controller": {"enabled": "no"}}, "controller"),
    ({"controller": {"logLevel": "debug"}}, "logLevel"),
], ids=["ipv4-everyone", "ipv6-everyone", "wildcard-domain", "url-domain", "no-domain", "no-replicas",
        "no-trust-everyone-switch", "no-controller-replicas", "controller-enabled-not-a-boolean",
        "unknown-controller-value"])
def test_the_chart_refuses_unsafe_or_broken_values(values: dict[str, Any], message: str) -> None:
    with pytest.raises(AssertionError, match=message):
        template(values)


def test_trusted_proxies_default_is_a_pod_cidr_and_never_everyone() -> None:
    defaults = yaml.safe_load((H.CHART / "values.yaml").read_text())
    assert defaults["trustedProxies"] == [DEFAULT_SETTINGS["trustedProxies"]]
    for net in defaults["trustedProxies"]:
        assert ipaddress.ip_network(net).is_private and ipaddress.ip_network(net).prefixlen >= 8


# --- on the API server -----------------------------------------------------------------------------


def grants(rules: list[Obj]) -> dict[tuple[str, str, str], set[str]]:
    """(group, resource, resourceName or "") → verbs."""
    out: dict[tuple[str, str, str], set[str]] = defaultdict(set)
    for rule in rules:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for name in rule.get("resourceNames") or [""]:
                    out[(group, resource, name)] |= set(rule["verbs"])
    return dict(out)


def server_dry_run(cluster: Cluster, objs: list[Obj]) -> tuple[list[Obj], str]:
    """Server-side apply of ``objs`` with ``--dry-run=server``: the API server validates (strict field
    validation), defaults and admits each one (RBAC escalation checks, Pod Security warnings) and
    answers with what it would store, without storing it."""
    out = cluster.kubectl("apply", "--server-side", "--dry-run=server", "--force-conflicts",
                          "--field-manager=wakegate-helm-test", "--validate=strict", "-o", "json", "-f", "-",
                          input=yaml.safe_dump_all(objs), timeout=120, check=False)
    assert out.returncode == 0, f"the API server refused:\n{out.stderr}"
    doc = json.loads(out.stdout)
    items: list[Obj] = doc["items"] if doc.get("kind") == "List" else [doc]
    return items, out.stderr


@pytest.mark.cluster
def test_the_api_server_accepts_every_object_of_the_chart(cluster: Cluster) -> None:
    namespace = f"wakegate-helm-{os.urandom(3).hex()}"
    values = {"domain": "apps.example.org", "trustedProxies": ["10.244.0.0/16"], "namespace": {"create": True},
              "nodeSelector": {"kubernetes.io/os": "linux"},
              "networkPolicy": {"publicNamespaceLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}
    objs = helm_template(values, namespace=namespace)  # with crds/: the Project CRD
    # No CRDs for these in the test control plane; their content is compared with manifests/ above.
    assert not [o for o in objs if (o["apiVersion"], o["kind"]) in CRD_KINDS]
    assert CRD_KEY in set(map(key, objs))
    ns = [o for o in objs if o["kind"] == "Namespace"]
    rest = [o for o in objs if o["kind"] != "Namespace"]
    assert [o["metadata"]["name"] for o in ns] == [namespace]
    # The namespace for real (namespaced objects cannot be dry-run into a namespace that does not exist).
    cluster.kubectl("apply", "--server-side", "--field-manager=wakegate-helm-test", "-f", "-",
                    input=yaml.safe_dump_all(ns))
    try:
        accepted, warnings = server_dry_run(cluster, rest)
        assert sorted(map(key, accepted)) == sorted(map(key, rest))
        assert "PodSecurity" not in warnings, warnings  # the namespace enforces `restricted`
        labels = cluster.request("GET", f"/api/v1/namespaces/{namespace}")["metadata"]["labels"]
        assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
        dep = find(accepted, "Deployment")
        env = {e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert env["WAKEGATE_TRUSTED_PROXIES"] == "10.244.0.0/16" and env["WAKEGATE_DOMAIN"] == "apps.example.org"
        assert controller_settings(accepted).domain == "apps.example.org"
        crd = find(accepted, "CustomResourceDefinition", C.PROJECT_CRD)
        assert crd["spec"]["names"]["kind"] == C.PROJECT_KIND
    finally:
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


@pytest.mark.cluster
def test_the_chart_grants_exactly_the_rbac_of_manifests(cluster: Cluster) -> None:
    rbac_kinds = {"ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "ServiceAccount"}
    ours = [o for o in H.helm_template({}) if o["kind"] in rbac_kinds]
    theirs = [o for o in H.kustomize_install(DEFAULT_SETTINGS, ["settings"]) if o["kind"] in rbac_kinds]
    assert sorted(map(key, ours)) == sorted(map(key, theirs))
    assert {k for k in CONTROLLER_KEYS if k[0] in rbac_kinds} <= set(map(key, ours))
    # The namespace must exist for the namespaced ones (as in every session that ran the backend tests).
    cluster.kubectl("apply", "--server-side", "--field-manager=wakegate-helm-test", "-f", "-",
                    input=yaml.safe_dump({"apiVersion": "v1", "kind": "Namespace",
                                          "metadata": {"name": C.DEFAULT_GATEWAY_NAMESPACE}}))
    stored = {}
    for name, objs in (("chart", ours), ("manifests", theirs)):
        accepted, _ = server_dry_run(cluster, objs)
        stored[name] = {key(o): o for o in accepted}
    for k in stored["manifests"]:
        a, b = stored["manifests"][k], stored["chart"][k]
        for field in ("rules", "roleRef", "subjects"):
            assert a.get(field) == b.get(field), (k, field)
    cluster_role = stored["chart"][("ClusterRole", "", "wakegate")]
    assert {(g, r): v for (g, r, _), v in grants(cluster_role["rules"]).items()} == {
        k: set(v) for k, v in kb.CLUSTER_PERMISSIONS.items()}
    lease = stored["chart"][("Role", C.DEFAULT_GATEWAY_NAMESPACE, "wakegate-leader-election")]
    assert grants(lease["rules"]) == {("coordination.k8s.io", "leases", ""): {"create"},
                                      ("coordination.k8s.io", "leases", C.REAPER_LEASE): {"get", "update"}}
    lease = stored["chart"][("Role", C.DEFAULT_GATEWAY_NAMESPACE, "wakegate-controller-leader-election")]
    assert grants(lease["rules"]) == {("coordination.k8s.io", "leases", ""): {"create"},
                                      ("coordination.k8s.io", "leases", C.CONTROLLER_LEASE): {"get", "update"}}
    controller = grants(stored["chart"][("ClusterRole", "", CONTROLLER)]["rules"])
    assert {k for k, verbs in controller.items() if "bind" in verbs} == {
        ("rbac.authorization.k8s.io", "clusterroles", C.AUTOMATION_CLUSTERROLE)}
    assert not {r for _, r, _ in controller} & {"secrets", "configmaps", "pods/exec"}
    for o in stored["chart"].values():
        for rule in o.get("rules", []):
            for field in ("apiGroups", "resources", "verbs", "resourceNames"):
                assert "*" not in rule.get(field, []), (key(o), field)


# --- helm install, for real --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def own_cluster() -> Generator[Cluster, None, None]:
    """A control plane of this module's own. A release owns cluster-scoped objects named ``wakegate``
    (ClusterRole, ClusterRoleBinding) that other tests install from manifests/ into the session's
    ``cluster``: installing and uninstalling there would take them over, then delete them."""
    instance = Cluster.start()
    try:
        yield instance
    finally:
        instance.stop()


def permissions(cluster: Cluster, namespace: str, account: str = C.GATEWAY_SERVICEACCOUNT) -> list[str]:
    """What the ServiceAccount ``account`` (the gateway's unless named) may do in ``namespace``, as the
    API server answers."""
    sa = f"system:serviceaccount:{C.DEFAULT_GATEWAY_NAMESPACE}:{account}"
    out = cluster.kubectl("auth", "can-i", "--list", f"--as={sa}", "-n", namespace)
    return sorted(" ".join(line.split()) for line in out.stdout.splitlines()[1:] if line.strip())


def admin_token(cluster: Cluster, namespace: str) -> str:
    out = cluster.kubectl("-n", namespace, "get", "secret", "wakegate-admin-token", "-o", "jsonpath={.data.token}")
    return base64.b64decode(out.stdout).decode()


@pytest.mark.cluster
def test_helm_install_upgrade_and_uninstall(own_cluster: Cluster) -> None:
    c, ns = own_cluster, C.DEFAULT_GATEWAY_NAMESPACE

    def helm(*args: str) -> str:
        return H.helm(*args, kubeconfig=c.kubeconfig).stdout

    # As the README says: the namespace first, enforcing `restricted`, then the release in it.
    c.kubectl("create", "namespace", ns)
    c.kubectl("label", "namespace", ns, "pod-security.kubernetes.io/enforce=restricted")
    notes = helm("install", "wakegate", str(H.CHART), "-n", ns, "--set", "domain=env.contoso.com")
    assert "serves https://<project>.env.contoso.com/" in notes and "WARNING" not in notes, notes
    rendered = {key(o) for o in H.helm_template({"domain": "env.contoso.com"})}
    for kind, namespace, name in rendered:
        args = [kind.lower(), name, "-o", "json"] + (["-n", namespace] if namespace else [])
        live = json.loads(c.kubectl("get", *args).stdout)
        assert live["metadata"]["labels"]["app.kubernetes.io/instance"] == "wakegate", (kind, name)
    token = admin_token(c, ns)
    assert re.fullmatch(r"[A-Za-z0-9]{64}", token)
    chart_permissions = {(a, n): permissions(c, n, a) for n in (ns, "default")
                         for a in (C.GATEWAY_SERVICEACCOUNT, C.CONTROLLER_SERVICEACCOUNT)}
    gateway, controller = C.GATEWAY_SERVICEACCOUNT, C.CONTROLLER_SERVICEACCOUNT
    assert "deployments.apps [] [] [get list watch]" in chart_permissions[gateway, "default"], chart_permissions
    assert f"leases.coordination.k8s.io [] [{C.REAPER_LEASE}] [get update]" in chart_permissions[gateway, ns]
    assert f"leases.coordination.k8s.io [] [{C.CONTROLLER_LEASE}] [get update]" in chart_permissions[controller, ns]
    assert not [p for p in chart_permissions[controller, "default"] if p.startswith(("secrets", "configmaps"))]
    # helm install applied crds/: Projects can be created and listed.
    c.kubectl("wait", "--for=condition=Established", f"crd/{C.PROJECT_CRD}", "--timeout=60s", timeout=90)
    assert "No resources found" in c.kubectl("get", "projects").stderr

    # An upgrade keeps the generated token (looked up in the cluster).
    helm("upgrade", "wakegate", str(H.CHART), "-n", ns, "--set", "domain=env.contoso.com", "--set", "replicas=3")
    assert admin_token(c, ns) == token
    assert json.loads(c.kubectl("-n", ns, "get", "deployment", "wakegate", "-o", "json").stdout)["spec"][
        "replicas"] == 3

    # Uninstalling removes the cluster-scoped objects too.
    helm("uninstall", "wakegate", "-n", ns, "--wait")
    assert c.kubectl("get", "clusterrole,clusterrolebinding", "wakegate", check=False).returncode != 0
    for name in (CONTROLLER, C.AUTOMATION_CLUSTERROLE):
        assert c.kubectl("get", "clusterrole", name, check=False).returncode != 0, name
    assert c.kubectl("-n", ns, "get", "secret", "wakegate-admin-token", check=False).returncode != 0
    # ... but not the CRD (Helm never deletes crds/: that would delete every Project).
    assert c.kubectl("get", "crd", C.PROJECT_CRD, check=False).returncode == 0

    # manifests/'s RBAC gives the same ServiceAccount exactly the same permissions.
    rbac = [o for o in H.kustomize_install(DEFAULT_SETTINGS, ["settings"])
            if o["kind"] in {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}]
    c.kubectl("apply", "--server-side", "--field-manager=wakegate-helm-test", "-f", "-",
              input=yaml.safe_dump_all(rbac))
    assert {(a, n): permissions(c, n, a) for a, n in chart_permissions} == chart_permissions
    c.kubectl("delete", "-f", "-", input=yaml.safe_dump_all(rbac))

    # With Helm 4 (server-side apply) the chart may own its namespace: --create-namespace makes it,
    # the chart's Namespace object then labels it.
    other = "wakegate-own-ns"
    helm("install", "wg2", str(H.CHART), "-n", other, "--create-namespace", "--set", "namespace.create=true")
    labels = json.loads(c.kubectl("get", "namespace", other, "-o", "json").stdout)["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    helm("uninstall", "wg2", "-n", other)


def project(cluster: Cluster, *argv: str) -> tuple[int, str, str]:
    """``wakegate project ARGV --kubeconfig <admin>`` in-process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = project_cli([*argv, "--kubeconfig", str(cluster.kubeconfig)])
    return code, out.getvalue(), err.getvalue()


def log_events(log: str) -> list[Obj]:
    """The JSON lines of a gateway pod's log."""
    events = []
    for line in log.splitlines():
        if line.startswith("{"):
            try:
                events.append(json.loads(line))
            except ValueError:  # a line being written
                continue
    return events


@pytest.mark.cluster
def test_helm_install_with_the_test_image_serves_a_project(own_cluster: Cluster) -> None:
    """The chart with the test image: both Deployments roll out (the gateway on in-cluster config, as
    on AKS), the chart's controller turns a Project made with the CLI into its namespace, and a cold
    request from this host to a gateway pod wakes the project and gets the app's answer."""
    c, ns = own_cluster, gateway_install.GATEWAY_NAMESPACE
    domain, name = "env.chart.test", "charted"
    echo = "wakegate.test/echo:1"

    def helm(*args: str) -> str:
        return H.helm(*args, kubeconfig=c.kubeconfig, timeout=300).stdout

    # As the README says: the namespace enforcing `restricted` (it may be left from the test above).
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": {
        f"pod-security.kubernetes.io/{mode}": "restricted" for mode in ("enforce", "warn", "audit")}}}
    c.kubectl("apply", "--server-side", "--field-manager=wakegate-helm-test", "-f", "-",
              input=yaml.safe_dump(namespace))
    helm("install", "wakegate", str(H.CHART), "-n", ns, "--set", f"domain={domain}",
         "--set", f"image.repository={gateway_install.TEST_IMAGE}",
         "--set-string", f"image.tag={gateway_install.TEST_TAG}",
         "--set", f"trustedProxies={{{c.pod_cidr}}}")
    try:
        for deployment in gateway_install.DEPLOYMENTS:
            gateway_install.wait_rollout(c, deployment)
        installed = gateway_install.Install(domain=domain, admin_token=admin_token(c, ns),
                                            objects=H.parse(helm("get", "manifest", "wakegate", "-n", ns)))
        # Ready, not terminating: pods of the test above's release (image not pullable) may linger.
        gateways = installed.gateway_pods(c)
        assert gateways, "no ready gateway pod"
        gateway = gateways[0]
        assert gateway["spec"]["containers"][0]["image"] == f"{gateway_install.TEST_IMAGE}:{gateway_install.TEST_TAG}"

        # The CLI writes a Project (the CRD is installed) and waits for the chart's controller: the
        # URL it prints is the controller's, with the chart's domain.
        code, out, err = project(c, "create", name, "--image", echo, "--port", "8080", "--timeout", "120")
        assert code == 0, f"{out}\n{err}"
        assert out.strip() == f"https://{name}.{domain}/", f"{out}\n{err}"
        assert c.request("GET", f"/apis/apps/v1/namespaces/{C.namespace_for(name)}/deployments/{name}")[
            "spec"]["replicas"] == 0

        # A cold request to the gateway pod, from this host: held through the wake, then forwarded.
        request = urllib.request.Request(f"http://{gateway['status']['podIP']}:8080/hello",
                                         headers={"Host": f"{name}.{domain}"})
        pod_name = gateway["metadata"]["name"]
        try:
            with urllib.request.urlopen(request, timeout=90) as resp:
                status, headers, body = resp.status, resp.headers, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"{exc.code} {exc.read()[:500]!r}\n{c.pod_log(ns, pod_name)[-3000:]}") from exc
        assert status == 200
        assert float(headers["X-Wakegate-Cold-Start"]) > 0, dict(headers)
        assert body["image"] == echo and body["path"] == "/hello", body

        # The pod's log (copied by the node agent as the process writes it): on the API server
        # in-cluster, and the wake of this project.
        def logged(event: str, **fields: str) -> bool:
            return any(e.get("event") == event and all(e.get(k) == v for k, v in fields.items())
                       for e in log_events(c.pod_log(ns, pod_name)))

        wait_for("the gateway pod's log of the wake", lambda: logged("wake", project=name), timeout=60)
        assert logged("kubernetes_api_reachable"), c.pod_log(ns, pod_name)[-3000:]

        code, out, err = project(c, "delete", name, "--wait", "--timeout", "120")
        assert code == 0, f"{out}\n{err}"
    finally:
        helm("uninstall", "wakegate", "-n", ns, "--wait")
