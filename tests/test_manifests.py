"""The install manifests: they render, validate strictly, grant exactly what the backend uses, and
the gateway's pods meet the ``restricted`` Pod Security Standard. Every combination of the optional
components renders, in any order, and each setting (domain, trusted proxies, ingress namespace) lands
exactly where it is needed. The Project controller (base/controller.yaml) gets least-privilege RBAC and a pod as
restricted as the gateway's, outside what project NetworkPolicies admit. (The Helm chart is compared
with these objects in tests/test_helm_chart.py.)"""

from __future__ import annotations

import ipaddress
import itertools
import json
import os
import re
import shutil
import subprocess
from collections import defaultdict
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from gateway import config
from gateway import contract as L
from gateway.backends import kubernetes as kb
from gateway.config import option_names
from tests.cluster import helm as H
from tests.cluster.controlplane import bin_dir

ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = ROOT / "manifests"
KUSTOMIZATIONS = ["", "base", "overlays/monitoring", "overlays/gateway-api", "aks"]
CRD_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor"), ("monitoring.coreos.com/v1", "PodMonitor"),
             ("monitoring.coreos.com/v1", "PrometheusRule"), ("gateway.networking.k8s.io/v1", "HTTPRoute")}
# Every combination of the optional components (components/settings is in each).
COMBINATIONS = [c for n in range(len(H.COMPONENTS) + 1) for c in itertools.combinations(H.COMPONENTS, n)]
DEFAULT_DOMAIN = "env.example.com"
DEFAULT_TRUSTED_PROXIES = "10.244.0.0/16"
# Settings unlike the defaults, to see where each one lands.
SETTINGS = {"domain": "apps.test-domain.example", "trustedProxies": "10.1.0.0/16,192.168.7.0/24",
            "ingressNamespace": "edge-ingress"}
K8S_VERSION = "1.37.0"
CONTROLLER = "wakegate-controller"
#: (kind, name) of every object of base/controller.yaml, as written there.
CONTROLLER_OBJECTS = tuple((d["kind"], d["metadata"]["name"])
                           for d in H.parse((MANIFESTS / "base" / "controller.yaml").read_text()))
CONTROLLER_POD_LABELS = {"app.kubernetes.io/name": CONTROLLER}

Obj = dict[str, Any]


def kubectl() -> str:
    """The kubectl built with the test cluster (kustomize built in), else one on PATH."""
    own = bin_dir() / "kubectl"
    if own.exists():
        return str(own)
    found = shutil.which("kubectl")
    assert found, "kubectl is needed to render manifests/: run `make cluster-build` or install kubectl"
    return found


@cache
def render(path: str) -> tuple[Obj, ...]:
    out = subprocess.run([kubectl(), "kustomize", str(MANIFESTS / path)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    return tuple(d for d in yaml.safe_load_all(out.stdout) if d)


def find(objs: tuple[Obj, ...], kind: str, name: str | None = None) -> list[Obj]:
    return [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


def one(objs: tuple[Obj, ...], kind: str, name: str = "wakegate") -> Obj:
    found = find(objs, kind, name)
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


# --- rendering and schema -------------------------------------------------------------------------


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_every_object_validates_strictly(path: str) -> None:
    objs = render(path)
    assert objs
    for o in objs:
        if (o["apiVersion"], o["kind"]) in CRD_KINDS:
            continue
        kubernetes_validate.validate(o, K8S_VERSION, strict=True)


def test_base_installs_the_expected_objects() -> None:
    kinds = sorted((o["kind"], o["metadata"]["name"]) for o in render(""))
    assert kinds == sorted([
        ("Namespace", "wakegate-system"), ("ServiceAccount", "wakegate"), ("ClusterRole", "wakegate"),
        ("ClusterRoleBinding", "wakegate"), ("Role", "wakegate-leader-election"),
        ("RoleBinding", "wakegate-leader-election"), ("Deployment", "wakegate"), ("Service", "wakegate"),
        ("PodDisruptionBudget", "wakegate"), ("NetworkPolicy", "wakegate"), ("NetworkPolicy", "default-deny"),
        ("Ingress", "wakegate"), ("CustomResourceDefinition", L.PROJECT_CRD),
        ("ServiceAccount", CONTROLLER), ("ClusterRole", CONTROLLER), ("ClusterRoleBinding", CONTROLLER),
        ("ClusterRole", L.AUTOMATION_CLUSTERROLE), ("Role", "wakegate-controller-leader-election"),
        ("RoleBinding", "wakegate-controller-leader-election"), ("Deployment", CONTROLLER),
        ("NetworkPolicy", CONTROLLER), ("ValidatingAdmissionPolicy", "wakegate-controller-scope"),
        ("ValidatingAdmissionPolicyBinding", "wakegate-controller-scope"),
    ])
    for o in render(""):
        if o["kind"] not in ("Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition",
                             "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"):
            assert o["metadata"]["namespace"] == L.DEFAULT_GATEWAY_NAMESPACE, o["metadata"]["name"]


def test_the_default_install_needs_no_crds() -> None:
    assert not [o for o in render("") if (o["apiVersion"], o["kind"]) in CRD_KINDS]


def test_every_object_of_controller_yaml_is_installed() -> None:
    assert len(CONTROLLER_OBJECTS) == len(set(CONTROLLER_OBJECTS)) >= 8
    installed = {(o["kind"], o["metadata"]["name"]) for o in render("")}
    assert set(CONTROLLER_OBJECTS) <= installed, set(CONTROLLER_OBJECTS) - installed
    assert {k for k, _ in CONTROLLER_OBJECTS} == {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role",
                                                  "RoleBinding", "Deployment", "NetworkPolicy",
                                                  "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"}


def test_the_base_installs_the_generated_project_crd() -> None:
    from provisioner import crd

    installed = one(render(""), "CustomResourceDefinition", L.PROJECT_CRD)
    assert installed == crd.project_crd()
    assert installed["metadata"]["labels"] == {"app.kubernetes.io/part-of": "wakegate"}


def test_monitoring_overlay_adds_servicemonitor_rules_and_dashboard() -> None:
    objs = render("overlays/monitoring")
    assert one(objs, "PrometheusRule")["spec"]["groups"]
    sm = one(objs, "ServiceMonitor")
    svc = one(objs, "Service")
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert [e["port"] for e in sm["spec"]["endpoints"]] == ["admin"]
    assert "admin" in [p["name"] for p in svc["spec"]["ports"]]
    # The controller has no Service: a PodMonitor scrapes its pods' metrics port, and only its pods.
    pm = one(objs, "PodMonitor", CONTROLLER)
    assert pm["metadata"]["namespace"] == L.DEFAULT_GATEWAY_NAMESPACE
    assert pm["spec"]["namespaceSelector"] == {"matchNames": [L.DEFAULT_GATEWAY_NAMESPACE]}
    selector = pm["spec"]["selector"]["matchLabels"]
    dep = one(objs, "Deployment", CONTROLLER)
    assert selector.items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    assert not selector.items() <= one(objs, "Deployment")["spec"]["template"]["metadata"]["labels"].items()
    assert pm["spec"]["jobLabel"] in selector  # job="wakegate-controller", apart from the gateway's job
    (endpoint,) = pm["spec"]["podMetricsEndpoints"]
    assert (endpoint["port"], endpoint["path"]) == ("metrics", "/metrics")
    ports = {p["name"]: p["containerPort"] for p in dep["spec"]["template"]["spec"]["containers"][0]["ports"]}
    assert ports["metrics"] == 8081
    # Prometheus (a namespace labelled for admin access) may reach that port.
    pol = one(objs, "NetworkPolicy", CONTROLLER)
    assert any(p["port"] == ports["metrics"] for rule in pol["spec"]["ingress"] for p in rule["ports"])
    cm = one(objs, "ConfigMap", "wakegate-grafana-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(cm["data"]["wakegate-dashboard.json"])["uid"] == "wakegate-gateway"


def test_gateway_api_overlay_replaces_the_ingress() -> None:
    objs = render("overlays/gateway-api")
    assert not find(objs, "Ingress")
    route = one(objs, "HTTPRoute")
    assert route["spec"]["hostnames"] == [f"*.{DEFAULT_DOMAIN}"]
    assert route["spec"]["rules"][0]["backendRefs"] == [{"name": "wakegate", "port": 80}]


def test_aks_overlay_uses_the_app_routing_ingress_class() -> None:
    objs = render("aks")
    assert one(objs, "Ingress")["spec"]["ingressClassName"] == "webapprouting.kubernetes.azure.com"
    assert pod_spec(objs)["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert "Network policy engine" in (MANIFESTS / "aks" / "README.md").read_text()


def test_the_default_install_is_the_base_with_its_own_defaults() -> None:
    # manifests/kustomization.yaml writes its settings (the defaults) through components/settings; the
    # base objects carry the same defaults, so rendering the base alone changes nothing.
    assert sorted(map(json.dumps, render(""))) == sorted(map(json.dumps, render("base")))
    settings = one(tuple(H.parse((MANIFESTS / "base" / "settings.yaml").read_text())), "ConfigMap",
                   "wakegate-settings")
    assert settings["data"] == {"domain": DEFAULT_DOMAIN, "trustedProxies": DEFAULT_TRUSTED_PROXIES,
                                "ingressNamespace": H.DEFAULT_INGRESS_NAMESPACE}
    assert settings["metadata"]["annotations"]["config.kubernetes.io/local-config"] == "true"
    top = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())
    assert top["configMapGenerator"][0]["literals"] == [f"{k}={v}" for k, v in settings["data"].items()]
    assert top["components"] == ["components/settings"]


# --- components and settings -----------------------------------------------------------------------


def label(combo: tuple[str, ...]) -> str:
    return "+".join(combo) or "none"


@cache
def install(combo: tuple[str, ...], reverse: bool = False) -> tuple[Obj, ...]:
    names = ["settings", *combo]
    return tuple(H.kustomize_install(SETTINGS, names[::-1] if reverse else names))


def strings(node: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """Every string in ``node`` (keys too) with its path."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield f"{path}.{k}#key", str(k)
            yield from strings(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from strings(v, f"{path}[{i}]")
    elif isinstance(node, str):
        yield path, node


def where(objs: tuple[Obj, ...], needle: str) -> set[str]:
    return {f"{o['kind']}/{o['metadata']['name']}{path}" for o in objs for path, text in strings(o)
            if needle in text}


@pytest.mark.parametrize("combo", COMBINATIONS, ids=label)
def test_every_combination_of_components_renders_and_validates(combo: tuple[str, ...]) -> None:
    objs = install(combo)
    kinds = {o["kind"] for o in objs}
    assert ("Ingress" in kinds) != ("gateway-api" in combo)
    assert ("HTTPRoute" in kinds) == ("gateway-api" in combo)
    assert {"ServiceMonitor", "PodMonitor", "PrometheusRule"} <= kinds if "monitoring" in combo else not kinds & {
        "ServiceMonitor", "PodMonitor", "PrometheusRule"}
    assert not find(objs, "ConfigMap", "wakegate-settings"), "the settings ConfigMap must never be applied"
    for o in objs:
        if (o["apiVersion"], o["kind"]) not in CRD_KINDS:
            kubernetes_validate.validate(o, K8S_VERSION, strict=True)
    # the order in which components are listed does not matter
    assert install(combo, reverse=True) == objs


@pytest.mark.parametrize("combo", COMBINATIONS, ids=label)
def test_the_domain_lands_exactly_where_it_is_needed(combo: tuple[str, ...]) -> None:
    objs = install(combo)
    domain = SETTINGS["domain"]
    # The gateway's --domain and the controller's (each Project's status.url).
    expected = {"Deployment/wakegate.spec.template.spec.containers[0].env[4].value",
                "Deployment/wakegate-controller.spec.template.spec.containers[0].env[2].value"}
    if "gateway-api" in combo:
        expected |= {"HTTPRoute/wakegate.spec.hostnames[0]"}
        assert one(objs, "HTTPRoute")["spec"]["hostnames"] == [f"*.{domain}"]
    else:
        expected |= {"Ingress/wakegate.spec.rules[0].host", "Ingress/wakegate.spec.tls[0].hosts[0]"}
        ing = one(objs, "Ingress")
        assert ing["spec"]["rules"][0]["host"] == ing["spec"]["tls"][0]["hosts"][0] == f"*.{domain}"
    assert where(objs, domain) == expected
    assert where(objs, DEFAULT_DOMAIN) == set(), "the default domain is left somewhere"
    env = {e["name"]: e.get("value") for e in pod_spec(objs)["containers"][0]["env"]}
    assert env["WAKEGATE_DOMAIN"] == domain
    assert env["WAKEGATE_TRUSTED_PROXIES"] == SETTINGS["trustedProxies"]
    assert controller_settings(objs).domain == domain
    assert where(objs, SETTINGS["trustedProxies"]) == {
        "Deployment/wakegate.spec.template.spec.containers[0].env[5].value"}
    assert where(objs, DEFAULT_TRUSTED_PROXIES) == set()
    # The ingress namespace: only with components/ingress-namespace, only in the public port's rule.
    assert where(objs, SETTINGS["ingressNamespace"]) == (
        {"NetworkPolicy/wakegate.spec.ingress[0].from[0].namespaceSelector.matchLabels.kubernetes.io/metadata.name"}
        if "ingress-namespace" in combo else set())
    assert where(objs, H.DEFAULT_INGRESS_NAMESPACE) == set()


PUBLIC_RULE = {"ports": [{"protocol": "TCP", "port": 8080}]}
ADMIN_RULE = {"from": [{"namespaceSelector": {"matchLabels": {"wakegate.io/admin-access": "true"}}},
                       {"podSelector": {"matchLabels": L.GATEWAY_POD_LABELS}}],
              "ports": [{"protocol": "TCP", "port": 9090}]}


def admitting(namespace: str) -> list[Obj]:
    return [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}}]


def test_the_ingress_namespace_component_admits_only_that_namespace_to_the_public_port() -> None:
    without = one(install(()), "NetworkPolicy")
    assert without["spec"]["ingress"] == [PUBLIC_RULE, ADMIN_RULE]  # the public port: from anywhere
    defaults = {k: v for k, v in SETTINGS.items() if k != "ingressNamespace"}
    for objs, namespace in ((install(("ingress-namespace",)), SETTINGS["ingressNamespace"]),
                            (install(("ingress-namespace",), reverse=True), SETTINGS["ingressNamespace"]),
                            (tuple(H.kustomize_install(defaults, ["ingress-namespace", "settings"])),
                             H.DEFAULT_INGRESS_NAMESPACE)):
        pol = one(objs, "NetworkPolicy")
        public, admin = pol["spec"]["ingress"]
        assert public == {**PUBLIC_RULE, "from": admitting(namespace)}
        assert admin == ADMIN_RULE
        # Nothing else changes: the rest of this policy, the controller's, every other object.
        assert {**pol, "spec": {**pol["spec"], "ingress": without["spec"]["ingress"]}} == without
        assert [o for o in objs if o is not pol] == [o for o in install(()) if o is not without]


def gateway_settings(objs: tuple[Obj, ...] | list[Obj]) -> config.Settings:
    """The gateway's settings as the container's arguments and literal environment make them."""
    from gateway.cli import build_parser

    c = pod_spec(tuple(objs))["containers"][0]
    args = build_parser(project_actions=False).parse_args(c["args"])
    environ = {e["name"]: e["value"] for e in c["env"] if "value" in e}
    return config.load_settings({o.field: getattr(args, o.field) for o in config.OPTIONS}, environ=environ)


def controller_settings(objs: tuple[Obj, ...] | list[Obj]) -> Any:
    """The controller's settings (``provisioner.controller.ControllerSettings``) as its container's
    arguments and environment make them; ``metadata.namespace`` resolves to its Deployment's."""
    from gateway.cli import build_parser
    from provisioner import controller as ctl

    dep = one(tuple(objs), "Deployment", CONTROLLER)
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    args = build_parser().parse_args(c["args"])
    assert args.command == "controller"
    fields = {"metadata.namespace": dep["metadata"]["namespace"], "metadata.name": f"{CONTROLLER}-0"}
    environ = {e["name"]: e["value"] if "value" in e else fields[e["valueFrom"]["fieldRef"]["fieldPath"]]
               for e in c["env"]}
    settings = config.load_options(ctl.OPTIONS, args, ctl.ControllerSettings(), environ)
    ctl.validate(settings)
    return settings


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_the_gateway_trusts_only_the_configured_proxies(path: str) -> None:
    settings = gateway_settings(render(path))
    assert settings.domain == DEFAULT_DOMAIN
    assert settings.trusted_proxies == (DEFAULT_TRUSTED_PROXIES,)
    assert settings.trust_forwarded is False
    for net in settings.trusted_proxies:
        assert ipaddress.ip_network(net).prefixlen > 0, "never trust every address"
    custom = gateway_settings(install(()))
    assert (custom.domain, ",".join(custom.trusted_proxies)) == (SETTINGS["domain"], SETTINGS["trustedProxies"])
    for o in render(path):
        text = json.dumps(o).lower()
        assert "trust-forwarded" not in text and "trust_forwarded" not in text


def test_readme_documents_trusted_proxies_per_controller() -> None:
    text = (MANIFESTS / "README.md").read_text()
    for word in ("trustedProxies", "ingress-nginx", "application routing", "AGIC", "Traefik",
                 "externalTrafficPolicy", "0.0.0.0/0"):
        assert word in text, word


# --- RBAC ------------------------------------------------------------------------------------------


def grants(rules: list[Obj]) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = defaultdict(set)
    for rule in rules:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                out[(group, resource)] |= set(rule["verbs"])
    return dict(out)


def test_rbac_has_no_wildcards() -> None:
    for o in render(""):
        for rule in o.get("rules", []):
            for field in ("apiGroups", "resources", "verbs", "resourceNames"):
                assert "*" not in rule.get(field, []), f"{o['kind']} {o['metadata']['name']}: wildcard in {field}"
            assert "nonResourceURLs" not in rule


def test_cluster_role_grants_exactly_what_the_backend_uses() -> None:
    role = one(render(""), "ClusterRole")
    assert grants(role["rules"]) == {k: set(v) for k, v in kb.CLUSTER_PERMISSIONS.items()}
    # no writes to project objects from the cluster scope
    for (_, resource), verbs in grants(role["rules"]).items():
        if resource != "events":
            assert verbs <= {"get", "list", "watch"}, resource


def test_leader_election_role_is_limited_to_its_lease() -> None:
    objs = render("")
    role = one(objs, "Role", "wakegate-leader-election")
    assert role["metadata"]["namespace"] == L.DEFAULT_GATEWAY_NAMESPACE
    assert grants(role["rules"]) == {k: set(v) for k, v in kb.GATEWAY_NAMESPACE_PERMISSIONS.items()}
    named = [r for r in role["rules"] if "resourceNames" in r]
    assert named and all(r["resourceNames"] == [kb.LEASE_NAME] for r in named)
    assert [r["verbs"] for r in role["rules"] if "resourceNames" not in r] == [["create"]]


def test_bindings_name_the_gateway_serviceaccount() -> None:
    objs = render("")
    sa = one(objs, "ServiceAccount")
    assert (sa["metadata"]["name"], sa["metadata"]["namespace"]) == (L.GATEWAY_SERVICEACCOUNT,
                                                                      L.DEFAULT_GATEWAY_NAMESPACE)
    for kind, name, role_kind in (("ClusterRoleBinding", "wakegate", "ClusterRole"),
                                  ("RoleBinding", "wakegate-leader-election", "Role")):
        b = one(objs, kind, name)
        assert b["roleRef"]["kind"] == role_kind
        assert b["subjects"] == [{"kind": "ServiceAccount", "name": L.GATEWAY_SERVICEACCOUNT,
                                  "namespace": L.DEFAULT_GATEWAY_NAMESPACE}]


def test_provisioner_role_covers_the_project_namespace_writes() -> None:
    from provisioner.render import rbac
    from provisioner.spec import ProjectSpec

    spec = ProjectSpec(name="demo", image="example.test/app:1")
    role = next(o for o in rbac(spec) if o["kind"] == "Role" and o["metadata"]["name"] == L.GATEWAY_ROLE)
    for (group, resource), verbs in kb.PROJECT_NAMESPACE_PERMISSIONS.items():
        for verb in verbs:
            assert any(group in r["apiGroups"] and resource in r["resources"] and verb in r["verbs"]
                       and r.get("resourceNames") in (None, ["demo"]) for r in role["rules"]), (resource, verb)


# --- the controller's RBAC ------------------------------------------------------------------------


def test_controller_cluster_role_is_least_privilege() -> None:
    role = one(render(""), "ClusterRole", CONTROLLER)
    rules = role["rules"]
    for rule in rules:
        assert set(rule) <= {"apiGroups", "resources", "verbs", "resourceNames"}, rule
        for field in ("apiGroups", "resources", "verbs", "resourceNames"):
            assert not any("*" in v for v in rule.get(field, [])), (field, rule)
        assert not {"escalate", "impersonate"} & set(rule["verbs"]), rule
    flat = [(g, r, v, tuple(rule.get("resourceNames", []))) for rule in rules for g in rule["apiGroups"]
            for r in rule["resources"] for v in rule["verbs"]]
    resources = {r for _, r, _, _ in flat}
    # Never Secrets or ConfigMaps (a Project only references them), never exec or attach into pods.
    assert not resources & {"secrets", "configmaps", "pods/exec", "pods/attach", "pods/portforward",
                            "serviceaccounts/token", "users", "groups", "serviceaccounts/impersonate"}
    assert [(g, r, names) for g, r, v, names in flat if v == "bind"] == [
        ("rbac.authorization.k8s.io", "clusterroles", (L.AUTOMATION_CLUSTERROLE,))]
    # Cluster roles and their bindings: nothing but that one `bind`.
    assert {(r, v) for g, r, v, _ in flat if g == "rbac.authorization.k8s.io" and r.startswith("cluster")} == {
        ("clusterroles", "bind")}
    # Only its own status: pods are read, never written.
    assert {v for _, r, v, _ in flat if r == "pods"} == {"list", "watch"}
    # The Projects it reconciles, and their status.
    assert {v for g, r, v, _ in flat if (g, r) == ("wakegate.io", "projects/status")} == {"patch"}
    assert {v for g, r, v, _ in flat if (g, r) == ("wakegate.io", "projects")} == {"get", "list", "watch",
                                                                                   "patch"}


def test_controller_holds_what_the_project_gateway_role_grants() -> None:
    # Kubernetes refuses to create a Role granting what its creator lacks: the controller writes each
    # project's `wakegate-gateway` Role, so it must hold every verb of it (without resourceNames).
    from provisioner.render import rbac
    from provisioner.spec import ProjectSpec

    held = grants(one(render(""), "ClusterRole", CONTROLLER)["rules"])
    spec = ProjectSpec(name="demo", image="example.test/app:1")
    for o in rbac(spec):
        if o["kind"] == "Role":
            for (group, resource), verbs in grants(o["rules"]).items():
                assert verbs <= held.get((group, resource), set()), (o["metadata"]["name"], resource, verbs)


def test_project_automation_cluster_role_is_the_provisioners() -> None:
    from provisioner.render import AUTOMATION_RULES

    role = one(render(""), "ClusterRole", L.AUTOMATION_CLUSTERROLE)
    assert role["rules"] == AUTOMATION_RULES


def test_controller_bindings_and_lease() -> None:
    objs = render("")
    sa = one(objs, "ServiceAccount", L.CONTROLLER_SERVICEACCOUNT)
    assert sa["metadata"]["namespace"] == L.DEFAULT_GATEWAY_NAMESPACE
    subject = [{"kind": "ServiceAccount", "name": L.CONTROLLER_SERVICEACCOUNT,
                "namespace": L.DEFAULT_GATEWAY_NAMESPACE}]
    for kind, name, role_kind in (("ClusterRoleBinding", CONTROLLER, "ClusterRole"),
                                  ("RoleBinding", "wakegate-controller-leader-election", "Role")):
        b = one(objs, kind, name)
        assert (b["roleRef"]["kind"], b["roleRef"]["name"]) == (role_kind, name)
        assert b["subjects"] == subject
    # Nothing binds the automation role here: project namespaces do, to their own accounts.
    assert not [o for o in objs if o.get("roleRef", {}).get("name") == L.AUTOMATION_CLUSTERROLE]
    role = one(objs, "Role", "wakegate-controller-leader-election")
    assert role["metadata"]["namespace"] == L.DEFAULT_GATEWAY_NAMESPACE
    assert grants(role["rules"]) == {("coordination.k8s.io", "leases"): {"create", "get", "update"}}
    assert [(r["verbs"], r.get("resourceNames")) for r in role["rules"]] == [
        (["create"], None), (["get", "update"], [L.CONTROLLER_LEASE])]
    assert dep_spec(CONTROLLER)["serviceAccountName"] == L.CONTROLLER_SERVICEACCOUNT


# --- the gateway's Deployment ---------------------------------------------------------------------


def pod_spec(objs: tuple[Obj, ...] | None = None) -> Obj:
    spec: Obj = one(render("") if objs is None else objs, "Deployment")["spec"]["template"]["spec"]
    return spec


def test_deployment_runs_the_kubernetes_backend_highly_available() -> None:
    dep = one(render(""), "Deployment")
    assert dep["spec"]["replicas"] == 2
    c = pod_spec()["containers"][0]
    assert "--backend=kubernetes" in c["args"] and c["args"][0] == "serve"
    flags = {a.split("=", 1)[0] for a in c["args"][1:]}
    assert flags <= set(option_names()), flags - set(option_names())
    env = {e["name"]: e for e in c["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert c["image"] == "ghcr.io/example/wakegate:0.1.0"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]
    assert pod_spec()["affinity"]["podAntiAffinity"]
    assert pod_spec()["terminationGracePeriodSeconds"] > 30  # the drain timeout
    assert dep["spec"]["template"]["metadata"]["labels"].items() >= L.GATEWAY_POD_LABELS.items()
    pdb = one(render(""), "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()


RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                      "projected", "secret"}


def restricted_violations(spec: Obj) -> list[str]:
    """The ``restricted`` Pod Security Standard (v1.37) checks, as the admission plugin makes them."""
    bad = []
    psc = spec.get("securityContext", {})
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(flag):
            bad.append(flag)
    for v in spec.get("volumes", []):
        kinds = set(v) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            bad.append(f"volume {v['name']}: {kinds}")
    containers = spec.get("containers", []) + spec.get("initContainers", [])
    for c in containers:
        sc = c.get("securityContext", {})
        name = c["name"]
        if sc.get("privileged"):
            bad.append(f"{name}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            bad.append(f"{name}: allowPrivilegeEscalation must be false")
        caps = sc.get("capabilities", {})
        if "ALL" not in caps.get("drop", []):
            bad.append(f"{name}: must drop ALL capabilities")
        if set(caps.get("add", [])) - {"NET_BIND_SERVICE"}:
            bad.append(f"{name}: adds capabilities")
        if not (sc.get("runAsNonRoot", psc.get("runAsNonRoot"))):
            bad.append(f"{name}: runAsNonRoot")
        if sc.get("runAsUser", psc.get("runAsUser")) == 0:
            bad.append(f"{name}: runAsUser 0")
        seccomp = sc.get("seccompProfile", psc.get("seccompProfile", {})).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            bad.append(f"{name}: seccompProfile")
        if any(p.get("hostPort") for p in c.get("ports", [])):
            bad.append(f"{name}: hostPort")
    return bad


def dep_spec(name: str, objs: tuple[Obj, ...] | None = None) -> Obj:
    spec: Obj = one(render("") if objs is None else objs, "Deployment", name)["spec"]["template"]["spec"]
    return spec


@pytest.mark.parametrize("name", ["wakegate", CONTROLLER])
def test_pod_spec_satisfies_restricted(name: str) -> None:
    spec = dep_spec(name)
    assert restricted_violations(spec) == []
    assert all(c["securityContext"]["readOnlyRootFilesystem"] is True for c in spec["containers"])
    assert spec["securityContext"]["runAsUser"] != 0


# --- the controller's Deployment ------------------------------------------------------------------


def test_controller_runs_the_gateway_image_highly_available() -> None:
    objs = render("")
    dep = one(objs, "Deployment", CONTROLLER)
    assert dep["spec"]["replicas"] == 2
    (c,) = dep_spec(CONTROLLER)["containers"]
    assert c["image"] == pod_spec()["containers"][0]["image"] == "ghcr.io/example/wakegate:0.1.0"
    settings = controller_settings(objs)
    assert (settings.domain, settings.gateway_namespace) == (DEFAULT_DOMAIN, L.DEFAULT_GATEWAY_NAMESPACE)
    assert settings.log_format == "json"
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"metrics": settings.listen.port}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]
    assert dep_spec(CONTROLLER)["affinity"]["podAntiAffinity"]


def test_controller_pods_are_not_admitted_into_project_namespaces() -> None:
    # Project NetworkPolicies admit pods labelled as the gateway's; the controller never talks to a
    # project's pods, so its pods must not carry that label (nor match the gateway's selectors).
    from provisioner.render import network_policies
    from provisioner.spec import ProjectSpec

    dep = one(render(""), "Deployment", CONTROLLER)
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert labels["app.kubernetes.io/name"] == CONTROLLER and labels.items() >= CONTROLLER_POD_LABELS.items()
    assert not L.GATEWAY_POD_LABELS.items() <= labels.items()
    assert dep["spec"]["selector"]["matchLabels"] == CONTROLLER_POD_LABELS
    admitted = [peer["podSelector"]["matchLabels"]
                for pol in network_policies(ProjectSpec(name="demo", image="example.test/app:1"))
                for rule in pol["spec"].get("ingress", []) for peer in rule.get("from", [])
                if "podSelector" in peer]
    assert L.GATEWAY_POD_LABELS in admitted
    assert not [sel for sel in admitted if sel and sel.items() <= labels.items()]
    # Nor do the gateway's Service, PodDisruptionBudget and NetworkPolicy select them.
    gateway_selectors = [one(render(""), "Service")["spec"]["selector"],
                         one(render(""), "PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
                         one(render(""), "NetworkPolicy")["spec"]["podSelector"]["matchLabels"]]
    for selector in gateway_selectors:
        assert selector and not selector.items() <= labels.items(), selector


def test_controller_network_policy() -> None:
    pol = one(render(""), "NetworkPolicy", CONTROLLER)
    assert pol["spec"]["podSelector"]["matchLabels"] == CONTROLLER_POD_LABELS
    assert pol["spec"]["policyTypes"] == ["Ingress", "Egress"]
    (ingress,) = pol["spec"]["ingress"]
    assert ingress["from"] == [{"namespaceSelector": {"matchLabels": {"wakegate.io/admin-access": "true"}}}]
    assert ingress["ports"] == [{"protocol": "TCP", "port": 8081}]
    # DNS and the API server only: never the project namespaces.
    egress_ports = {p["port"] for rule in pol["spec"]["egress"] for p in rule["ports"]}
    assert egress_ports == {53, 443, 6443}
    assert all(rule.get("ports") for rule in pol["spec"]["egress"])


def test_restricted_checker_catches_violations() -> None:
    spec = {"hostNetwork": True, "volumes": [{"name": "h", "hostPath": {"path": "/"}}],
            "containers": [{"name": "c", "ports": [{"containerPort": 80, "hostPort": 80}],
                            "securityContext": {"privileged": True, "capabilities": {"add": ["SYS_ADMIN"]}}}]}
    found = " ".join(restricted_violations(spec))
    for word in ("hostNetwork", "hostPath", "privileged", "allowPrivilegeEscalation", "drop ALL", "adds",
                 "runAsNonRoot", "seccompProfile", "hostPort"):
        assert word in found


def test_namespace_enforces_restricted() -> None:
    ns = one(render(""), "Namespace", L.DEFAULT_GATEWAY_NAMESPACE)
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


# --- networking ------------------------------------------------------------------------------------


def test_service_ingress_and_network_policy_line_up() -> None:
    objs = render("")
    svc = one(objs, "Service")
    ports = {p["name"]: p for p in svc["spec"]["ports"]}
    assert set(ports) == {"http", "admin"}
    c = pod_spec()["containers"][0]
    container_ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert container_ports == {"http": 8080, "admin": 9090}
    assert "--listen=:8080" in c["args"] and "--admin-listen=:9090" in c["args"]
    ing = one(objs, "Ingress")
    assert ing["spec"]["rules"][0]["host"] == f"*.{DEFAULT_DOMAIN}"
    assert ing["spec"]["tls"][0]["secretName"]
    assert ing["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"] == {"name": "wakegate",
                                                                                "port": {"name": "http"}}
    pol = one(objs, "NetworkPolicy")
    assert pol["spec"]["podSelector"]["matchLabels"] == L.GATEWAY_POD_LABELS
    ingress_ports = {p["port"] for rule in pol["spec"]["ingress"] for p in rule["ports"]}
    assert ingress_ports == {8080, 9090}
    # egress to project pods is allowed by the managed-namespace label the provisioner sets
    assert {"namespaceSelector": {"matchLabels": {L.MANAGED_BY_LABEL: L.MANAGED_BY}}} in \
        [t for rule in pol["spec"]["egress"] for t in rule["to"]]
    deny = one(objs, "NetworkPolicy", "default-deny")
    assert deny["spec"] == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}


# --- the dashboard ---------------------------------------------------------------------------------

DASHBOARD_METRICS = ["wakegate_requests_total", "wakegate_request_duration_seconds", "wakegate_wakeups_total",
                     "wakegate_wakeup_duration_seconds", "wakegate_held_requests", "wakegate_held_rejected_total",
                     "wakegate_scale_operations_total", "wakegate_projects", "wakegate_inflight_requests",
                     "wakegate_upstream_errors_total"]


def test_dashboard_is_valid_json_covering_every_metric() -> None:
    dash = json.loads((MANIFESTS / "grafana" / "wakegate-dashboard.json").read_text())
    exprs = " ".join(t["expr"] for p in dash["panels"] for t in p["targets"])
    for metric in DASHBOARD_METRICS:
        assert metric in exprs, metric
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    titles = " ".join(p["title"].lower() for p in dash["panels"])
    for word in ("wake", "held", "latency", "scale errors", "request rate"):
        assert word in titles, word


def test_dashboard_metric_names_exist_in_the_gateway() -> None:
    source = (ROOT / "gateway" / "metrics.py").read_text()
    for metric in DASHBOARD_METRICS:
        assert f'"{metric}"' in source, metric


def test_alerting_rules_use_the_gateways_metrics() -> None:
    rule = one(render("overlays/monitoring"), "PrometheusRule")
    source = (ROOT / "gateway" / "metrics.py").read_text()
    rules = [r for g in rule["spec"]["groups"] for r in g["rules"]]
    assert {r["alert"] for r in rules} >= {"WakegateReplicaDown", "WakegateScaleErrors"}
    for r in rules:
        assert r["labels"]["severity"] in ("warning", "critical"), r["alert"]
        assert r["annotations"]["summary"] and r["annotations"]["description"], r["alert"]
        assert 'job="wakegate"' in r["expr"], r["alert"]  # the Service's name: the ServiceMonitor's job
        for metric in re.findall(r"\b(wakegate_[a-z_]+)", r["expr"]):
            family = re.sub(r"_(bucket|sum|count)$", "", metric) if metric.endswith("_seconds_bucket") else metric
            assert f'"{family}"' in source, (r["alert"], metric)
        for name, value in re.findall(r'(\w+)=~?"([^"]*)"', r["expr"]):
            if name == "result":
                assert set(value.split("|")) <= {"ready", "timeout", "failed", "error", "ok"}, value
            if name == "reason":
                assert set(value.split("|")) <= {"overflow", "timeout", "failed", "unavailable", "removed",
                                                  "draining", "rate_limited", "suspended"}, value


def test_the_readme_example_install_renders_with_its_settings(tmp_path: Path) -> None:
    # The kustomization manifests/README.md shows ("Settings and components"), with its paths made
    # to point at this manifests/ from tmp_path.
    text = (MANIFESTS / "README.md").read_text()
    block = re.search(r"```yaml\n(.*?)```", text, re.S)
    assert block, "manifests/README.md: no yaml example"
    rel = Path(os.path.relpath(MANIFESTS, tmp_path)).as_posix()
    (tmp_path / "kustomization.yaml").write_text(block.group(1).replace("../manifests", rel))
    objs = tuple(H.kustomize(tmp_path))
    c = pod_spec(objs)["containers"][0]
    assert c["image"] == "registry.example.com/wakegate:0.1.0"
    assert gateway_settings(objs).domain == "env.contoso.com"
    assert one(objs, "Ingress")["spec"]["ingressClassName"] == "webapprouting.kubernetes.azure.com"
    assert one(objs, "PrometheusRule") and where(objs, DEFAULT_DOMAIN) == set()
