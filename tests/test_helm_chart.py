"""The Helm chart ``charts/wakegate``: the same objects as ``manifests/`` for the same settings.

For every combination of the kustomize components (aks, monitoring, gateway-api; settings always),
the chart rendered with the equivalent values (:func:`tests.cluster.helm.helm_values_for`) and the
kustomize install rendered with the same settings must hold the same objects (kind, namespace, name)
with the same content after :func:`normalise`. helm is the pinned build of tests/cluster/build.sh.
The cluster tests hand every object the chart makes to the real test API server.
"""

from __future__ import annotations

import base64
import copy
import difflib
import ipaddress
import json
import os
import re
from collections import defaultdict
from collections.abc import Generator
from functools import cache
from typing import Any

import pytest
import yaml

from gateway import contract as C
from gateway.backends import kubernetes as kb
from tests.cluster import helm as H
from tests.cluster.controlplane import Cluster
from tests.test_manifests import COMBINATIONS, CRD_KINDS, SETTINGS, gateway_settings, label

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


@cache
def chart(values_json: str, namespace: str = C.DEFAULT_GATEWAY_NAMESPACE) -> tuple[Obj, ...]:
    return tuple(H.helm_template(json.loads(values_json), namespace=namespace))


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


def test_the_image_tag_defaults_to_the_app_version_as_in_manifests() -> None:
    c = find(template({}), "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert c["image"] == f"ghcr.io/example/wakegate:{chart_meta()['appVersion']}"
    base = yaml.safe_load((H.MANIFESTS / "base" / "kustomization.yaml").read_text())
    assert base["images"] == [{"name": "wakegate", "newName": "ghcr.io/example/wakegate",
                               "newTag": H.package_version()}]
    c = find(template({"image": {"tag": "1.2.3"}}), "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert c["image"] == "ghcr.io/example/wakegate:1.2.3"


def test_helm_is_the_pinned_build() -> None:
    out = H.helm("version", "--short")
    assert out.stdout.strip().startswith(H.helm_version()), out.stdout


# --- lint ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("extra", [[], ["--set", "monitoring.enabled=true", "--set", "gatewayAPI.enabled=true",
                                        "--set", "namespace.create=true"]], ids=["defaults", "everything"])
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


def test_helm_labels_are_the_only_difference_and_stay_out_of_selectors() -> None:
    objs = template(H.helm_values_for(SETTINGS, H.COMPONENTS))
    for o in objs:
        assert o["metadata"]["labels"].keys() >= HELM_LABELS, key(o)
        text = json.dumps({k: v for k, v in o.items() if k != "metadata"})
        for label_key, value in o["metadata"]["labels"].items():
            if label_key in HELM_LABELS:
                assert json.dumps({label_key: value})[1:-1] not in text, (key(o), label_key)
    dep = find(objs, "Deployment")
    assert dep["spec"]["selector"]["matchLabels"] == C.GATEWAY_POD_LABELS
    assert dep["spec"]["template"]["metadata"]["labels"] == {**C.GATEWAY_POD_LABELS,
                                                             "app.kubernetes.io/component": "gateway"}


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
], ids=["ipv4-everyone", "ipv6-everyone", "wildcard-domain", "url-domain", "no-domain", "no-replicas",
        "no-trust-everyone-switch"])
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
    objs = H.helm_template(values, namespace=namespace)
    # No CRDs for these in the test control plane; their content is compared with manifests/ above.
    assert not [o for o in objs if (o["apiVersion"], o["kind"]) in CRD_KINDS]
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
        dep = next(o for o in accepted if o["kind"] == "Deployment")
        env = {e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert env["WAKEGATE_TRUSTED_PROXIES"] == "10.244.0.0/16" and env["WAKEGATE_DOMAIN"] == "apps.example.org"
    finally:
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


@pytest.mark.cluster
def test_the_chart_grants_exactly_the_rbac_of_manifests(cluster: Cluster) -> None:
    rbac_kinds = {"ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "ServiceAccount"}
    ours = [o for o in H.helm_template({}) if o["kind"] in rbac_kinds]
    theirs = [o for o in H.kustomize_install(DEFAULT_SETTINGS, ["settings"]) if o["kind"] in rbac_kinds]
    assert sorted(map(key, ours)) == sorted(map(key, theirs))
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


def permissions(cluster: Cluster, namespace: str) -> list[str]:
    """What the gateway's ServiceAccount may do in ``namespace``, as the API server answers."""
    sa = f"system:serviceaccount:{C.DEFAULT_GATEWAY_NAMESPACE}:{C.GATEWAY_SERVICEACCOUNT}"
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
    chart_permissions = {n: permissions(c, n) for n in (ns, "default")}
    assert "deployments.apps [] [] [get list watch]" in chart_permissions["default"], chart_permissions
    assert f"leases.coordination.k8s.io [] [{C.REAPER_LEASE}] [get update]" in chart_permissions[ns]

    # An upgrade keeps the generated token (looked up in the cluster).
    helm("upgrade", "wakegate", str(H.CHART), "-n", ns, "--set", "domain=env.contoso.com", "--set", "replicas=3")
    assert admin_token(c, ns) == token
    assert json.loads(c.kubectl("-n", ns, "get", "deployment", "wakegate", "-o", "json").stdout)["spec"][
        "replicas"] == 3

    # Uninstalling removes the cluster-scoped objects too.
    helm("uninstall", "wakegate", "-n", ns, "--wait")
    assert c.kubectl("get", "clusterrole,clusterrolebinding", "wakegate", check=False).returncode != 0
    assert c.kubectl("-n", ns, "get", "secret", "wakegate-admin-token", check=False).returncode != 0

    # manifests/'s RBAC gives the same ServiceAccount exactly the same permissions.
    rbac = [o for o in H.kustomize_install(DEFAULT_SETTINGS, ["settings"])
            if o["kind"] in {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}]
    c.kubectl("apply", "--server-side", "--field-manager=wakegate-helm-test", "-f", "-",
              input=yaml.safe_dump_all(rbac))
    assert {n: permissions(c, n) for n in (ns, "default")} == chart_permissions
    c.kubectl("delete", "-f", "-", input=yaml.safe_dump_all(rbac))

    # With Helm 4 (server-side apply) the chart may own its namespace: --create-namespace makes it,
    # the chart's Namespace object then labels it.
    other = "wakegate-own-ns"
    helm("install", "wg2", str(H.CHART), "-n", other, "--create-namespace", "--set", "namespace.create=true")
    labels = json.loads(c.kubectl("get", "namespace", other, "-o", "json").stdout)["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    helm("uninstall", "wg2", "-n", other)
