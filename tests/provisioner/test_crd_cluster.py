"""The ``Project`` CRD against the real API server: it is accepted as structural with its CEL rules within
the cost limits, valid Projects pass a server-side dry run, and each invalid one is refused with an error
naming the field."""

from __future__ import annotations

import copy
import json
import subprocess
from collections.abc import Generator
from typing import Any

import pytest
import yaml

from gateway import contract as C
from provisioner.crd import crd_yaml, project_crd
from provisioner.spec import SpecError, validate_project_name
from tests.cluster import project_crd as crd_install
from tests.cluster.controlplane import Cluster
from tests.provisioner.schema_paths import schema_leaves, value_paths

pytestmark = pytest.mark.cluster

Obj = dict[str, Any]
IMAGE = "wakegate.test/echo:1"

MINIMAL: Obj = {"image": IMAGE}
FULL: Obj = {
    "image": "ghcr.io/example/app:1.2.3",
    "port": 8080,
    "mode": "Running",
    "keepWarm": [
        {"days": ["Mon", "Tue", "Wed", "Thu", "Fri"], "start": "08:00", "end": "18:30",
         "timeZone": "America/Argentina/Buenos_Aires"},
        {"days": ["Sat"], "start": "22:00", "end": "02:00"},
        {"days": ["Sun"], "start": "00:00", "end": "24:00", "timeZone": "Etc/GMT+5"},
    ],
    "env": {"configMapRef": {"name": "app-config"}, "secretRef": {"name": "app.secrets"}},
    "resources": {
        "requests": {"cpu": "250m", "memory": "256Mi", "ephemeral-storage": "1Gi"},
        "limits": {"cpu": 1, "memory": "1Gi", "ephemeral-storage": "1024Mi"},
        "tmpSize": "64Mi",
    },
    "quota": {
        "pods": 4, "objects": 20, "ingresses": 0,
        "requests": {"cpu": "2", "memory": "2Gi", "ephemeral-storage": "4Gi"},
        "limits": {"cpu": 4, "memory": "4Gi", "ephemeral-storage": "8Gi"},
    },
    "securityContext": {"runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 2000},
    "readinessPath": "/healthz?full=1",
    "idleTimeout": "15m",
    "holdTimeout": 90,
    "strategy": "page",
    "allowInternet": True,
    "storage": {"size": "5Gi", "path": "/data", "storageClassName": "managed-csi", "keepOnDelete": True},
    "runtimeClassName": "kata",
    "workloadIdentityClientId": "0a1b2c3d-4e5f-6789-abcd-ef0123456789",
    "podSecurityVersion": "v1.33",
    "nodeSelector": {"kubernetes.io/os": "linux", "agentpool": "apps"},
    "tolerations": [
        {"key": "sandbox.kubernetes.io/runtime", "value": "kata", "effect": "NoSchedule"},
        {"key": "spot", "effect": "NoExecute"},
    ],
    "priorityClassName": "project-low",
}


def project(name: str = "demo", spec: Obj | None = None, **fields: Any) -> Obj:
    """A Project named ``name`` with ``spec`` (default: :data:`MINIMAL`) updated by ``fields``."""
    body = copy.deepcopy(MINIMAL if spec is None else spec)
    body.update(fields)
    return {"apiVersion": C.PROJECT_API_VERSION, "kind": C.PROJECT_KIND, "metadata": {"name": name}, "spec": body}


def window(**fields: Any) -> Obj:
    return {"days": ["Mon"], "start": "09:00", "end": "17:00", **fields}


def apply(cluster: Cluster, obj: Obj, *extra: str, dry_run: bool = True) -> subprocess.CompletedProcess[str]:
    args = ["apply", "--validate=strict", "-f", "-", *extra]
    if dry_run:
        args.append("--dry-run=server")
    return cluster.kubectl(*args, input=yaml.safe_dump(obj), check=False)


def accepted(cluster: Cluster, obj: Obj) -> Obj:
    """The object as the API server would store it (server-side dry run); fails the test if refused."""
    done = apply(cluster, obj, "-o", "json")
    assert done.returncode == 0, done.stderr
    stored: Obj = json.loads(done.stdout)
    return stored


@pytest.fixture(scope="module")
def crd(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Generator[Cluster, None, None]:
    """The session's cluster with the CRD installed and established (removed afterwards)."""
    path = tmp_path_factory.mktemp("crd") / "crd-projects.yaml"
    path.write_text(crd_yaml(), encoding="utf-8")
    done = cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(path), check=False)
    assert done.returncode == 0, f"the API server refused the CRD:\n{done.stderr}"
    cluster.kubectl("wait", "--for", "condition=Established", f"crd/{C.PROJECT_CRD}", "--timeout=60s",
                    timeout=90)
    yield cluster
    crd_install.remove(cluster)


# --- the definition ------------------------------------------------------------------------------


def test_the_api_server_keeps_the_schema_as_written(crd: Cluster) -> None:
    stored = crd.request("GET", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{C.PROJECT_CRD}")
    conditions = {c["type"]: c["status"] for c in stored["status"]["conditions"]}
    assert conditions.get("Established") == "True"
    assert conditions.get("NonStructuralSchema", "False") == "False"
    assert stored["status"]["acceptedNames"]["shortNames"] == ["wgp"]
    assert stored["spec"]["versions"][0]["schema"] == project_crd()["spec"]["versions"][0]["schema"]


# --- valid Projects ------------------------------------------------------------------------------


def test_the_full_project_uses_every_field() -> None:
    spec_schema = project_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    unused = set(schema_leaves(spec_schema, "")) - set(value_paths(FULL, ""))
    assert not unused


def test_a_minimal_project_is_accepted_with_the_schema_defaults(crd: Cluster) -> None:
    stored = accepted(crd, project("minimal"))
    assert stored["spec"] == {"image": IMAGE, "mode": "Auto"}


def test_a_full_project_is_accepted_as_given(crd: Cluster) -> None:
    stored = accepted(crd, project("full", FULL))
    expected = copy.deepcopy(FULL)
    expected["keepWarm"][1]["timeZone"] = "UTC"  # the schema default
    assert stored["spec"] == expected


@pytest.mark.parametrize("obj", [
    pytest.param(project("a" * 60), id="name-of-60"),
    pytest.param(project("d--emo"), id="dashes-elsewhere"),
    pytest.param(project(keepWarm=[window(start="23:00", end="00:30")]), id="window-over-midnight"),
    pytest.param(project(keepWarm=[window(start="00:00", end="24:00", timeZone="UTC")]), id="whole-day"),
    pytest.param(project(resources={"requests": {"cpu": "1000m", "memory": 1073741824},
                                    "limits": {"cpu": 1, "memory": "1Gi"}}), id="request-equals-limit"),
    pytest.param(project(resources={"requests": {"cpu": "4"}}), id="request-without-limit"),
    pytest.param(project(idleTimeout="250ms", holdTimeout="1.5"), id="durations"),
    pytest.param(project(idleTimeout=1, holdTimeout="1h0m0s"), id="smallest-durations"),
    pytest.param(project(port=65535, mode="Suspended", strategy="block"), id="bounds-and-enums"),
    pytest.param(project(readinessPath="/"), id="root-readiness-path"),
    pytest.param(project(podSecurityVersion="latest"), id="latest-pod-security"),
])
def test_valid_projects_are_accepted(crd: Cluster, obj: Obj) -> None:
    accepted(crd, obj)


# --- invalid Projects ----------------------------------------------------------------------------


INVALID = [
    pytest.param(project(port=0), ["spec.port"], id="port-0"),
    pytest.param(project(port=70000), ["spec.port"], id="port-70000"),
    pytest.param(project(mode="Sometimes"), ["spec.mode", "Unsupported value"], id="mode"),
    pytest.param(project("Bad-Name"), ["metadata.name", "DNS-1035"], id="name-uppercase"),
    pytest.param(project("1demo"), ["metadata.name", "DNS-1035"], id="name-digit-first"),
    pytest.param(project("kube-x"), ["metadata.name", "kube-"], id="name-kube"),
    pytest.param(project("a" * 61), ["metadata.name", "at most 60"], id="name-of-61"),
    pytest.param(project("xn--abc"), ["metadata.name", "'--'"], id="name-punycode"),
    pytest.param(project("wakegate"), ["metadata.name", "reserved"], id="name-reserved"),
    pytest.param(project("default"), ["metadata.name", "reserved"], id="name-default"),
    pytest.param(project(keepWarm=[window(days=["Funday"])]), ["spec.keepWarm[0].days[0]"], id="day"),
    pytest.param(project(keepWarm=[window(days=["Mon", "Mon"])]), ["spec.keepWarm[0].days[1]", "Duplicate"],
                 id="day-twice"),
    pytest.param(project(keepWarm=[window(days=[])]), ["spec.keepWarm[0].days"], id="no-days"),
    pytest.param(project(keepWarm=[window(start="25:00")]), ["spec.keepWarm[0].start"], id="start-25"),
    pytest.param(project(keepWarm=[window(end="00:00")]), ["spec.keepWarm[0].end"], id="end-midnight-start"),
    pytest.param(project(keepWarm=[window(), window(start="10:00", end="10:00")]),
                 ["spec.keepWarm[1].end", "end must differ from start"], id="start-is-end"),
    pytest.param(project(keepWarm=[window(timeZone="Europe/ Berlin")]), ["spec.keepWarm[0].timeZone"],
                 id="time-zone-space"),
    pytest.param(project(keepWarm=[{"days": ["Mon"], "start": "09:00"}]), ["spec.keepWarm[0].end", "Required"],
                 id="window-without-end"),
    pytest.param(project(keepWarm=[window()] * 17), ["spec.keepWarm", "17"], id="too-many-windows"),
    pytest.param(project(resources={"requests": {"cpu": "2"}, "limits": {"cpu": "1500m"}}),
                 ["spec.resources.requests.cpu", "must not exceed limits.cpu"], id="cpu-above-limit"),
    pytest.param(project(resources={"requests": {"memory": "2Gi"}, "limits": {"memory": 1000}}),
                 ["spec.resources.requests.memory", "must not exceed limits.memory"], id="memory-above-limit"),
    pytest.param(project(resources={"requests": {"ephemeral-storage": "3Gi"}, "limits": {"ephemeral-storage": "2Gi"}}),
                 ["spec.resources.requests.ephemeral-storage", "must not exceed"], id="storage-above-limit"),
    pytest.param(project(resources={"requests": {"memory": "lots"}}), ["spec.resources.requests.memory"],
                 id="memory-lots"),
    pytest.param(project(resources={"tmpSize": 0}), ["spec.resources.tmpSize", "positive"], id="tmp-size-0"),
    pytest.param(project(quota={"limits": {"cpu": "-1"}}), ["spec.quota.limits.cpu", "positive"],
                 id="negative-quota"),
    pytest.param(project(quota={"pods": 1}), ["spec.quota.pods"], id="quota-one-pod"),
    pytest.param(project(securityContext={"runAsUser": 0}), ["spec.securityContext.runAsUser"], id="root"),
    pytest.param(project(tolerations=[{"key": "CriticalAddonsOnly", "effect": "NoSchedule"}]),
                 ["spec.tolerations[0].key", "must not tolerate"], id="critical-addons"),
    pytest.param(project(tolerations=[{"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}]),
                 ["spec.tolerations[0].key"], id="control-plane"),
    pytest.param(project(tolerations=[{"key": "spot"}]), ["spec.tolerations[0].effect", "Required"],
                 id="toleration-without-effect"),
    pytest.param(project(priorityClassName="system-node-critical"), ["spec.priorityClassName", "system-"],
                 id="system-priority"),
    pytest.param(project(idleTimeout="soon"), ["spec.idleTimeout"], id="idle-soon"),
    pytest.param(project(idleTimeout=0), ["spec.idleTimeout", "positive"], id="idle-0"),
    pytest.param(project(idleTimeout=-5), ["spec.idleTimeout", "positive"], id="idle-negative"),
    pytest.param(project(holdTimeout="0m0s"), ["spec.holdTimeout", "positive"], id="hold-0s"),
    pytest.param(project(replicas=3), ['unknown field "spec.replicas"'], id="unknown-field"),
    pytest.param(project(readinessPath="healthz"), ["spec.readinessPath"], id="readiness-no-slash"),
    pytest.param(project(workloadIdentityClientId="not-a-uuid"), ["spec.workloadIdentityClientId"], id="uuid"),
    pytest.param(project(podSecurityVersion="v2.0"), ["spec.podSecurityVersion"], id="pod-security"),
    pytest.param(project(spec={"port": 8080}), ["spec.image", "Required"], id="no-image"),
    pytest.param(project(image=""), ["spec.image"], id="empty-image"),
    pytest.param(project(storage={"size": "1Gi"}), ["spec.storage.path", "Required"], id="storage-no-path"),
    pytest.param(project(storage={"size": "1Gi", "path": "data"}), ["spec.storage.path"], id="relative-path"),
    pytest.param(project(nodeSelector={"bad key": "x"}), ["spec.nodeSelector", "label keys"], id="node-key"),
    pytest.param(project(nodeSelector={f"k{i}": "v" for i in range(33)}), ["spec.nodeSelector"],
                 id="node-selector-33"),
    pytest.param(project(env={"configMapRef": {}}), ["spec.env.configMapRef.name", "Required"], id="env-no-name"),
    pytest.param(project(env={"secretRef": {"name": "Bad_Name"}}), ["spec.env.secretRef.name"], id="env-bad-name"),
    pytest.param(project(strategy="sometimes"), ["spec.strategy"], id="strategy"),
    pytest.param(project(runtimeClassName="Kata"), ["spec.runtimeClassName"], id="runtime-class"),
    pytest.param(project(allowInternet="yes"), ["spec.allowInternet"], id="allow-internet-string"),
    pytest.param({k: v for k, v in project().items() if k != "spec"}, ["spec: Required value"], id="no-spec"),
]


@pytest.mark.parametrize(("obj", "named"), INVALID)
def test_invalid_projects_are_refused_naming_the_field(crd: Cluster, obj: Obj, named: list[str]) -> None:
    done = apply(crd, obj)
    assert done.returncode != 0, f"accepted: {obj['spec']}\n{done.stdout}"
    for text in named:
        assert text in done.stderr, f"{text!r} is not in:\n{done.stderr}"


def test_there_are_enough_invalid_cases() -> None:
    assert len(INVALID) >= 14


NAMES = ["demo", "a", "a" * 60, "a" * 61, "Demo", "1demo", "demo-", "de--mo", "d--emo", "xn--abc", "default",
         "www", "wakegate", "wakegate-x", "kube-x", "kube", "a.b", "a_b", "wg-x"]


def test_the_api_server_refuses_exactly_the_names_the_provisioner_refuses(crd: Cluster) -> None:
    disagree = []
    for name in NAMES:
        try:
            validate_project_name(name)
            provisioner_ok = True
        except SpecError:
            provisioner_ok = False
        server_ok = apply(crd, project(name)).returncode == 0
        if server_ok != provisioner_ok:
            disagree.append(f"{name}: API server {'accepts' if server_ok else 'refuses'}")
    assert not disagree


# --- stored objects ------------------------------------------------------------------------------


def test_nothing_is_stored_after_a_refusal(crd: Cluster) -> None:
    done = apply(crd, project("refused", port=0), dry_run=False)
    assert done.returncode != 0
    assert "spec.port" in done.stderr
    got = crd.kubectl("get", "project", "refused", check=False)
    assert got.returncode != 0
    assert "NotFound" in got.stderr


def test_kubectl_lists_projects_with_their_columns(crd: Cluster) -> None:
    obj = project("listed")
    obj["status"] = {"phase": "Running"}  # dropped: status is a subresource
    done = apply(crd, obj, dry_run=False)
    assert done.returncode == 0, done.stderr
    try:
        stored = json.loads(crd.kubectl("get", "project", "listed", "-o", "json").stdout)
        assert "status" not in stored
        for resource in ("projects", "wgp", "wakegate"):  # plural, short name, category
            out = crd.kubectl("get", resource).stdout
            header, *rows = out.splitlines()
            assert header.split() == ["NAME", "PHASE", "URL", "LAST-ACTIVITY", "AGE"], out
            assert [r.split()[0] for r in rows] == ["listed"], out
    finally:
        crd.kubectl("delete", "project", "listed", "--ignore-not-found", "--wait=true", "--timeout=60s",
                    timeout=90)
    gone = crd.kubectl("get", "project", "listed", check=False)
    assert "NotFound" in gone.stderr
