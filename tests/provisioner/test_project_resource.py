"""A ``Project`` custom resource as a ProjectSpec and back: defaults, every field, round trips (hand-picked
and generated), what ``to_resource`` leaves out, and errors that name the Project's field, never a flag."""

from __future__ import annotations

import copy
import dataclasses
import io
import json
import operator
import re
import tokenize
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import contract as C
from provisioner import spec as spec_module
from provisioner.crd import DURATION_PATTERN, project_crd
from provisioner.keep_warm import Window
from provisioner.project_resource import FLAG_FIELDS, ProjectResource, from_resource, in_resource_terms, to_resource
from provisioner.spec import (
    DEFAULT_POD_SECURITY_VERSION,
    ProjectSpec,
    Quota,
    Resources,
    SpecError,
    Storage,
    Toleration,
)
from tests.provisioner.schema_paths import schema_leaves, value_paths
from tests.provisioner.test_crd_cluster import FULL

Obj = dict[str, Any]
IMAGE = "wakegate.test/echo:1"
SPEC_SOURCE = Path(spec_module.__file__)


def project(spec: Obj | None = None, name: str = "demo", **fields: Any) -> Obj:
    """A Project as the API server returns it: ``spec`` (default: just the image) updated by ``fields``."""
    body = copy.deepcopy({"image": IMAGE} if spec is None else spec)
    body.update(fields)
    return {"apiVersion": C.PROJECT_API_VERSION, "kind": C.PROJECT_KIND,
            "metadata": {"name": name, "generation": 1}, "spec": body}


def make(**kw: Any) -> ProjectSpec:
    kw.setdefault("name", "demo")
    kw.setdefault("image", IMAGE)
    return ProjectSpec(**kw)


def refusal(obj: Obj) -> str:
    with pytest.raises(SpecError) as info:
        from_resource(obj)
    message = str(info.value)
    assert "\n" not in message
    return message


def as_referenced(spec: ProjectSpec) -> ProjectSpec:
    """``spec`` as a Project gives it back: inline environment replaced by references to ``<name>-env``."""
    return dataclasses.replace(
        spec, config=(), secret=(), allow_keys=(),
        env_config_map=spec.env_config_map or (f"{spec.name}-env" if spec.config else None),
        env_secret=spec.env_secret or (f"{spec.name}-env" if spec.secret else None))


def round_trip(spec: ProjectSpec, keep_data: bool = False) -> ProjectResource:
    obj = json.loads(json.dumps(to_resource(spec, keep_data=keep_data)))  # as the API server would hand it back
    return from_resource(obj, namespace_prefix=spec.namespace_prefix, gateway_namespace=spec.gateway_namespace)


# --- defaults ------------------------------------------------------------------------------------


@pytest.mark.parametrize("obj", [
    pytest.param(project(), id="image-only"),
    pytest.param(project(mode="Auto"), id="as-stored-with-the-schema-default"),
    pytest.param(project(resources={}, quota={}, securityContext={}, env={}, tolerations=[], nodeSelector={},
                         keepWarm=[]), id="empty-objects"),
])
def test_a_minimal_project_gets_the_spec_defaults(obj: Obj) -> None:
    resource = from_resource(obj)
    assert resource.spec == ProjectSpec(name="demo", image=IMAGE)
    assert resource.name == "demo"
    assert resource.keep_warm == () and resource.keep_data is False
    spec = resource.spec
    assert spec.port == C.DEFAULT_CONTAINER_PORT == 3001
    assert spec.mode == "Auto"
    assert spec.resources == Resources() and spec.quota == Quota()
    assert spec.env_config_map is None and spec.env_secret is None
    assert spec.config == () and spec.secret == ()
    assert spec.pod_security_version == DEFAULT_POD_SECURITY_VERSION
    assert (spec.run_as_user, spec.run_as_group, spec.fs_group) == (1000, 1000, None)
    assert spec.idle_timeout_s is None and spec.hold_timeout_s is None and spec.strategy is None
    assert spec.storage is None and spec.allow_internet is False
    assert spec.node_selector == () and spec.tolerations == ()
    assert spec.namespace == f"{C.DEFAULT_NAMESPACE_PREFIX}demo"


def test_the_controller_s_prefix_and_gateway_namespace_are_used() -> None:
    spec = from_resource(project(), namespace_prefix="apps-", gateway_namespace="edge").spec
    assert (spec.namespace_prefix, spec.gateway_namespace, spec.namespace) == ("apps-", "edge", "apps-demo")


# --- every field ---------------------------------------------------------------------------------

WORKLOAD_ID = "0a1b2c3d-4e5f-6789-abcd-ef0123456789"

#: (id, spec fragment, attribute path on the ProjectResource, expected value)
FIELD_CASES: list[tuple[str, Obj, str, object]] = [
    ("image", {"image": "ghcr.io/example/app:1.2.3"}, "spec.image", "ghcr.io/example/app:1.2.3"),
    ("port", {"port": 8080}, "spec.port", 8080),
    ("mode-running", {"mode": "Running"}, "spec.mode", "Running"),
    ("mode-suspended", {"mode": "Suspended"}, "spec.mode", "Suspended"),
    ("configmap-ref", {"env": {"configMapRef": {"name": "app-config"}}}, "spec.env_config_map", "app-config"),
    ("secret-ref", {"env": {"secretRef": {"name": "app.secrets"}}}, "spec.env_secret", "app.secrets"),
    ("cpu-request", {"resources": {"requests": {"cpu": "500m"}}}, "spec.resources.cpu_request", "500m"),
    ("memory-request", {"resources": {"requests": {"memory": "512Mi"}}}, "spec.resources.memory_request", "512Mi"),
    ("ephemeral-storage-request", {"resources": {"requests": {"ephemeral-storage": "128Mi"}}},
     "spec.resources.ephemeral_storage_request", "128Mi"),
    ("cpu-limit-as-int", {"resources": {"limits": {"cpu": 2}}}, "spec.resources.cpu_limit", "2"),
    ("memory-limit", {"resources": {"limits": {"memory": "2Gi"}}}, "spec.resources.memory_limit", "2Gi"),
    ("ephemeral-storage-limit", {"resources": {"limits": {"ephemeral-storage": "2Gi"}}},
     "spec.resources.ephemeral_storage_limit", "2Gi"),
    ("tmp-size", {"resources": {"tmpSize": "64Mi"}}, "spec.resources.tmp_size", "64Mi"),
    ("quota-pods", {"quota": {"pods": 6}}, "spec.quota.pods", 6),
    ("quota-objects", {"quota": {"objects": 30}}, "spec.quota.objects", 30),
    ("quota-ingresses", {"quota": {"ingresses": 1}}, "spec.quota.ingresses", 1),
    ("quota-requests-cpu", {"quota": {"requests": {"cpu": "2"}}}, "spec.quota.requests_cpu", "2"),
    ("quota-requests-memory", {"quota": {"requests": {"memory": "2Gi"}}}, "spec.quota.requests_memory", "2Gi"),
    ("quota-requests-ephemeral-storage", {"quota": {"requests": {"ephemeral-storage": "4Gi"}}},
     "spec.quota.requests_ephemeral_storage", "4Gi"),
    ("quota-limits-cpu-as-int", {"quota": {"limits": {"cpu": 4}}}, "spec.quota.limits_cpu", "4"),
    ("quota-limits-memory", {"quota": {"limits": {"memory": "4Gi"}}}, "spec.quota.limits_memory", "4Gi"),
    ("quota-limits-ephemeral-storage", {"quota": {"limits": {"ephemeral-storage": "8Gi"}}},
     "spec.quota.limits_ephemeral_storage", "8Gi"),
    ("run-as-user", {"securityContext": {"runAsUser": 2000}}, "spec.run_as_user", 2000),
    ("run-as-group", {"securityContext": {"runAsGroup": 0}}, "spec.run_as_group", 0),
    ("fs-group", {"securityContext": {"fsGroup": 4000}}, "spec.fs_group", 4000),
    ("fs-group-defaults-to-group", {"securityContext": {"runAsGroup": 3000}}, "spec.effective_fs_group", 3000),
    ("readiness-path", {"readinessPath": "/healthz?full=1"}, "spec.readiness_path", "/healthz?full=1"),
    ("idle-timeout-int", {"idleTimeout": 900}, "spec.idle_timeout_s", 900.0),
    ("idle-timeout-minutes", {"idleTimeout": "15m"}, "spec.idle_timeout_s", 900.0),
    ("idle-timeout-ms", {"idleTimeout": "250ms"}, "spec.idle_timeout_s", 0.25),
    ("idle-timeout-compound", {"idleTimeout": "1h30m"}, "spec.idle_timeout_s", 5400.0),
    ("hold-timeout-int", {"holdTimeout": 90}, "spec.hold_timeout_s", 90.0),
    ("hold-timeout-decimal-text", {"holdTimeout": "1.5"}, "spec.hold_timeout_s", 1.5),
    ("strategy", {"strategy": "page"}, "spec.strategy", "page"),
    ("allow-internet", {"allowInternet": True}, "spec.allow_internet", True),
    ("storage", {"storage": {"size": "5Gi", "path": "/data"}}, "spec.storage", Storage("5Gi", "/data")),
    ("storage-data-is-not-kept-by-default", {"storage": {"size": "5Gi", "path": "/data"}}, "keep_data", False),
    ("storage-class", {"storage": {"size": "5Gi", "path": "/data", "storageClassName": "managed-csi"}},
     "spec.storage", Storage("5Gi", "/data", "managed-csi")),
    ("storage-keep-on-delete", {"storage": {"size": "5Gi", "path": "/data", "keepOnDelete": True}}, "keep_data",
     True),
    ("runtime-class", {"runtimeClassName": "kata"}, "spec.runtime_class", "kata"),
    ("workload-identity", {"workloadIdentityClientId": WORKLOAD_ID}, "spec.workload_identity_client_id",
     WORKLOAD_ID),
    ("pod-security-version", {"podSecurityVersion": "latest"}, "spec.pod_security_version", "latest"),
    ("node-selector-sorted", {"nodeSelector": {"kubernetes.io/os": "linux", "agentpool": "apps"}},
     "spec.node_selector", (("agentpool", "apps"), ("kubernetes.io/os", "linux"))),
    ("toleration-with-value", {"tolerations": [{"key": "sandbox", "value": "kata", "effect": "NoSchedule"}]},
     "spec.tolerations", (Toleration("sandbox", "NoSchedule", "kata"),)),
    ("toleration-with-empty-value", {"tolerations": [{"key": "sandbox", "value": "", "effect": "NoSchedule"}]},
     "spec.tolerations", (Toleration("sandbox", "NoSchedule", ""),)),
    ("toleration-without-value", {"tolerations": [{"key": "spot", "effect": "NoExecute"}]},
     "spec.tolerations", (Toleration("spot", "NoExecute", None),)),
    ("toleration-without-value-is-exists", {"tolerations": [{"key": "spot", "effect": "NoExecute"}]},
     "spec.tolerations[0].operator", "Exists"),
    ("toleration-with-value-is-equal", {"tolerations": [{"key": "spot", "value": "x", "effect": "NoExecute"}]},
     "spec.tolerations[0].operator", "Equal"),
    ("priority-class", {"priorityClassName": "project-low"}, "spec.priority_class", "project-low"),
    ("keep-warm", {"keepWarm": [
        {"days": ["Mon", "Tue", "Wed", "Thu", "Fri"], "start": "08:00", "end": "18:30", "timeZone": "Europe/Berlin"},
        {"days": ["Sat"], "start": "22:00", "end": "02:00"},
    ]}, "keep_warm", (Window(frozenset(range(5)), 8 * 60, 18 * 60 + 30, "Europe/Berlin"),
                      Window(frozenset({5}), 22 * 60, 2 * 60, "UTC"))),
]


def attribute(resource: ProjectResource, path: str) -> object:
    """``spec.tolerations[0].operator`` and the like."""
    value: object = resource
    for step in path.split("."):
        name, _, index = step.partition("[")
        value = operator.attrgetter(name)(value)
        if index:
            assert isinstance(value, tuple)
            value = value[int(index.rstrip("]"))]
    return value


#: The spec field a case's attribute stands for, where it is not the attribute itself.
SPEC_FIELD_OF = {"spec.effective_fs_group": {"run_as_group"}, "spec.tolerations[0].operator": {"tolerations"},
                 "keep_data": {"storage"}, "keep_warm": set()}


def spec_fields(spec: ProjectSpec) -> dict[str, object]:
    """The spec's fields, resources and quota by their own fields (``resources.cpu_request``)."""
    out: dict[str, object] = {}
    for key, value in dataclasses.asdict(spec).items():
        if key in ("resources", "quota"):
            out.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            out[key] = value
    return out


@pytest.mark.parametrize(("fragment", "path", "expected"),
                         [pytest.param(f, p, e, id=i) for i, f, p, e in FIELD_CASES])
def test_each_field_maps_to_its_spec_field(fragment: Obj, path: str, expected: object) -> None:
    resource = from_resource(project({"image": IMAGE, **fragment}))
    assert attribute(resource, path) == expected
    # ... and nothing else moves: every other field is the minimal Project's.
    got, defaults = spec_fields(resource.spec), spec_fields(make())
    changed = {k for k in got if got[k] != defaults[k]}
    assert changed == SPEC_FIELD_OF.get(path, {path.removeprefix("spec.")})


def schema_nodes(node: Obj, path: str) -> Iterator[str]:
    """Every field path under ``node``, intermediate ones too (list items as ``[]``)."""
    yield path
    for name, child in (node.get("properties") or {}).items():
        yield from schema_nodes(child, f"{path}.{name}")
    if "items" in node:
        yield from schema_nodes(node["items"], f"{path}[]")


def spec_schema() -> Obj:
    schema: Obj = project_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    return schema


def test_the_field_cases_cover_every_field_of_the_schema() -> None:
    covered = {p for _, fragment, _, _ in FIELD_CASES for p in value_paths(fragment, "spec")}
    assert set(schema_leaves(spec_schema(), "spec")) - covered == set()


def test_the_full_example_project_reads_as_given() -> None:
    resource = from_resource(project(FULL, name="full"))
    spec = resource.spec
    assert (spec.image, spec.port, spec.mode) == (FULL["image"], 8080, "Running")
    assert (spec.env_config_map, spec.env_secret) == ("app-config", "app.secrets")
    assert spec.resources == Resources(cpu_request="250m", cpu_limit="1", memory_request="256Mi", memory_limit="1Gi",
                                       ephemeral_storage_request="1Gi", ephemeral_storage_limit="1024Mi",
                                       tmp_size="64Mi")
    assert spec.quota == Quota(pods=4, objects=20, ingresses=0, requests_cpu="2", requests_memory="2Gi",
                               requests_ephemeral_storage="4Gi", limits_cpu="4", limits_memory="4Gi",
                               limits_ephemeral_storage="8Gi")
    assert (spec.run_as_user, spec.run_as_group, spec.fs_group) == (1000, 1000, 2000)
    assert (spec.readiness_path, spec.idle_timeout_s, spec.hold_timeout_s, spec.strategy) == (
        "/healthz?full=1", 900.0, 90.0, "page")
    assert spec.allow_internet is True and resource.keep_data is True
    assert spec.storage == Storage("5Gi", "/data", "managed-csi")
    assert (spec.runtime_class, spec.workload_identity_client_id, spec.priority_class) == (
        "kata", WORKLOAD_ID, "project-low")
    assert spec.pod_security_version == "v1.33"
    assert spec.node_selector == (("agentpool", "apps"), ("kubernetes.io/os", "linux"))
    assert spec.tolerations == (Toleration("sandbox.kubernetes.io/runtime", "NoSchedule", "kata"),
                                Toleration("spot", "NoExecute"))
    assert [str(w) for w in resource.keep_warm] == ["Mon-Fri 08:00-18:30 America/Argentina/Buenos_Aires",
                                                     "Sat 22:00-02:00 UTC", "Sun 00:00-24:00 Etc/GMT+5"]


# --- to_resource ---------------------------------------------------------------------------------


def test_a_default_spec_is_written_as_its_image_alone() -> None:
    assert to_resource(make()) == {
        "apiVersion": C.PROJECT_API_VERSION, "kind": C.PROJECT_KIND,
        "metadata": {"name": "demo", "labels": {C.MANAGED_BY_LABEL: C.MANAGED_BY}},
        "spec": {"image": IMAGE},
    }


def test_keep_data_without_storage_writes_nothing() -> None:
    assert to_resource(make(), keep_data=True)["spec"] == {"image": IMAGE}


@pytest.mark.parametrize(("changes", "written"), [
    pytest.param({"port": 8080}, {"port": 8080}, id="port"),
    pytest.param({"mode": "Suspended"}, {"mode": "Suspended"}, id="mode"),
    pytest.param({"resources": Resources(cpu_request="100m")}, {"resources": {"requests": {"cpu": "100m"}}},
                 id="one-request"),
    pytest.param({"resources": Resources(ephemeral_storage_limit="2Gi", tmp_size="512Mi")},
                 {"resources": {"limits": {"ephemeral-storage": "2Gi"}, "tmpSize": "512Mi"}}, id="limit-and-tmp"),
    pytest.param({"quota": Quota(pods=2)}, {"quota": {"pods": 2}}, id="quota-pods"),
    pytest.param({"quota": Quota(limits_memory="4Gi")}, {"quota": {"limits": {"memory": "4Gi"}}}, id="quota-size"),
    pytest.param({"fs_group": 1000}, {"securityContext": {"fsGroup": 1000}}, id="fs-group-equal-to-group"),
    pytest.param({"run_as_group": 0}, {"securityContext": {"runAsGroup": 0}}, id="group-0"),
    pytest.param({"idle_timeout_s": 900.0, "hold_timeout_s": 2.5}, {"idleTimeout": 900, "holdTimeout": "2.5s"},
                 id="durations"),
    pytest.param({"hold_timeout_s": 0.25}, {"holdTimeout": "0.25s"}, id="milliseconds"),
    pytest.param({"storage": Storage("1Gi", "/data")}, {"storage": {"size": "1Gi", "path": "/data"}},
                 id="storage-without-class"),
    pytest.param({"tolerations": (Toleration("spot", "NoSchedule"), Toleration("pool", "NoExecute", "a"))},
                 {"tolerations": [{"key": "spot", "effect": "NoSchedule"},
                                  {"key": "pool", "value": "a", "effect": "NoExecute"}]}, id="tolerations"),
    pytest.param({"pod_security_version": "latest"}, {"podSecurityVersion": "latest"}, id="pod-security"),
    pytest.param({"allow_internet": True}, {"allowInternet": True}, id="allow-internet"),
])
def test_to_resource_writes_only_what_differs_from_the_defaults(changes: Obj, written: Obj) -> None:
    assert to_resource(make(**changes))["spec"] == {"image": IMAGE, **written}


def test_keep_data_is_written_with_storage() -> None:
    spec = make(storage=Storage("1Gi", "/data", "fast"))
    assert to_resource(spec, keep_data=True)["spec"]["storage"] == {
        "size": "1Gi", "path": "/data", "storageClassName": "fast", "keepOnDelete": True}


def test_inline_environment_becomes_references_and_its_values_are_never_written() -> None:
    spec = make(config=(("GREETING", "hello-there"),), secret=(("API_TOKEN", "s3cr3t-value"),))
    obj = to_resource(spec)
    assert obj["spec"]["env"] == {"configMapRef": {"name": "demo-env"}, "secretRef": {"name": "demo-env"}}
    text = json.dumps(obj)
    assert "hello-there" not in text and "s3cr3t-value" not in text
    assert "GREETING" not in text and "API_TOKEN" not in text


HAND_PICKED: list[tuple[str, ProjectSpec, bool]] = [
    ("default", make(), False),
    ("full-example", from_resource(project(FULL, name="full")).spec, True),
    ("inline-config-and-secret", make(config=(("GREETING", "hi"), ("COLOR", "blue")),
                                      secret=(("API_TOKEN", "s3cr3t"),)), False),
    ("inline-config-and-secret-reference", make(config=(("GREETING", "hi"),), env_secret="shared"), False),
    ("config-reference-and-inline-secret", make(env_config_map="shared", secret=(("API_TOKEN", "x"),)), False),
    ("allowed-secret-looking-key", make(config=(("PUBLIC_KEY", "ssh-ed25519 AAAA"),), allow_keys=("PUBLIC_KEY",)),
     False),
    ("fractional-durations", make(idle_timeout_s=2.5, hold_timeout_s=0.25), False),
    ("whole-durations", make(idle_timeout_s=3600.0, hold_timeout_s=1.0), False),
    ("storage-kept", make(storage=Storage("1Gi", "/srv/data")), True),
    ("storage-with-class", make(storage=Storage("10Gi", "/data", "managed-csi")), False),
    ("explicit-quota", make(quota=Quota(pods=10, objects=50, ingresses=2, requests_cpu="8", limits_memory="64Gi")),
     False),
    ("resources", make(resources=Resources(cpu_request="1", cpu_limit="2", memory_request="1Gi",
                                           memory_limit="1Gi", ephemeral_storage_request="2Gi",
                                           ephemeral_storage_limit="4Gi", tmp_size="3Gi")), False),
    ("security-context", make(run_as_user=65532, run_as_group=0, fs_group=0), False),
    ("placement", make(node_selector=(("agentpool", "apps"), ("zone", "")),
                       tolerations=(Toleration("a", "NoSchedule", ""), Toleration("b", "NoExecute"),
                                    Toleration("b", "NoSchedule", "x")), priority_class="low"), False),
    ("everything-optional", make(port=1, mode="Running", readiness_path="/", strategy="block", allow_internet=True,
                                 runtime_class="gvisor", workload_identity_client_id=WORKLOAD_ID,
                                 pod_security_version="v1.0"), False),
    ("other-prefix-and-gateway-namespace", make(namespace_prefix="apps-", gateway_namespace="edge"), False),
]


@pytest.mark.parametrize(("spec", "keep_data"), [pytest.param(s, k, id=i) for i, s, k in HAND_PICKED])
def test_to_resource_then_from_resource_gives_the_spec_back(spec: ProjectSpec, keep_data: bool) -> None:
    back = round_trip(spec, keep_data)
    assert back.spec == as_referenced(spec)
    assert back.keep_data is (keep_data and spec.storage is not None)
    assert back.keep_warm == ()


def test_inline_environment_comes_back_as_references_to_name_env() -> None:
    back = round_trip(make(config=(("GREETING", "hi"),), secret=(("API_TOKEN", "x"),))).spec
    assert (back.env_config_map, back.env_secret) == ("demo-env", "demo-env")
    assert back.config == () and back.secret == ()


def test_the_node_selector_comes_back_sorted() -> None:
    """Its order means nothing (render sorts it); the Project is a map, so it comes back by key."""
    spec = make(node_selector=(("zone", "b"), ("agentpool", "apps")))
    assert round_trip(spec).spec == dataclasses.replace(spec, node_selector=(("agentpool", "apps"), ("zone", "b")))


@pytest.mark.parametrize("seconds", [1e-05])
def test_every_duration_a_spec_accepts_is_written_as_the_crd_accepts_and_read_back(seconds: float) -> None:
    """ProjectSpec takes any positive duration (the CLI's ``--idle-timeout 0.00001`` parses); the Project
    must carry it in a form the CRD's pattern and ``from_resource`` accept."""
    spec = make(idle_timeout_s=seconds, hold_timeout_s=seconds)
    written = to_resource(spec)["spec"]
    for key in ("idleTimeout", "holdTimeout"):
        assert re.fullmatch(DURATION_PATTERN, str(written[key])), written[key]
    assert round_trip(spec).spec == spec


# --- generated round trips -----------------------------------------------------------------------

SUBDOMAIN = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?(\.[a-z0-9]{1,5}){0,2}", fullmatch=True)
DURATION = st.one_of(
    st.none(),
    st.integers(1, 10**7).map(float),
    st.integers(1, 10**8).map(lambda ms: ms / 1000),
    st.floats(min_value=1e-4, max_value=1e9, allow_nan=False, allow_infinity=False),
)
RESOURCE_SETS = [
    Resources(),
    Resources(cpu_request="100m", cpu_limit="100m", memory_request="64Mi", memory_limit="128Mi",
              ephemeral_storage_request="1Gi", ephemeral_storage_limit="2Gi", tmp_size="2Gi"),
    Resources(cpu_request="2", cpu_limit="4", memory_request="4Gi", memory_limit="8Gi"),
]
ENV_VALUES = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=12)


@st.composite
def environments(draw: st.DrawFn) -> Obj:
    """A ConfigMap and a Secret source each: none, a reference, or inline values."""
    out: Obj = {}
    for ref_field, inline_field, keys in (("env_config_map", "config", ("GREETING", "COLOR", "LOG_LEVEL")),
                                          ("env_secret", "secret", ("API_TOKEN", "DB_PASSWORD"))):
        kind = draw(st.sampled_from(("none", "ref", "inline")))
        if kind == "ref":
            out[ref_field] = draw(SUBDOMAIN)
        elif kind == "inline":
            chosen = draw(st.lists(st.sampled_from(keys), min_size=1, unique=True))
            out[inline_field] = tuple((k, draw(st.from_regex(r"[a-z]{0,8}", fullmatch=True))) for k in chosen)
    return out


@st.composite
def specs(draw: st.DrawFn) -> tuple[ProjectSpec, bool]:
    resources = draw(st.sampled_from(RESOURCE_SETS))
    enough = {"requests_cpu": "16", "limits_cpu": "16", "requests_memory": "32Gi", "limits_memory": "32Gi",
              "requests_ephemeral_storage": "16Gi", "limits_ephemeral_storage": "16Gi"}
    quota = Quota(pods=draw(st.integers(2, 10_000)), objects=draw(st.integers(2, 100_000)),
                  ingresses=draw(st.integers(0, 1000)),
                  **{k: draw(st.sampled_from((None, v))) for k, v in enough.items()})
    storage = draw(st.one_of(st.none(), st.builds(
        Storage, size=st.sampled_from(("1Gi", "512Mi", "10")), path=st.sampled_from(("/data", "/srv/app/data")),
        storage_class=st.one_of(st.none(), SUBDOMAIN))))
    selector_keys = draw(st.lists(st.sampled_from(("agentpool", "kubernetes.io/os", "zone", "example.com/gpu")),
                                  unique=True, max_size=4))
    node_selector = tuple(sorted((k, draw(st.from_regex(r"([a-z0-9]{1,6})?", fullmatch=True)))
                                 for k in selector_keys))
    toleration_keys = draw(st.lists(st.sampled_from(("spot", "sandbox", "example.com/dedicated")), unique=True,
                                    max_size=3))
    tolerations = tuple(Toleration(k, draw(st.sampled_from(("NoSchedule", "PreferNoSchedule", "NoExecute"))),
                                   draw(st.one_of(st.none(), st.from_regex(r"([a-z]{1,5})?", fullmatch=True))))
                        for k in toleration_keys)
    spec = ProjectSpec(
        name=draw(st.from_regex(r"[a-z]([a-z0-9]{0,10}[a-z0-9])?", fullmatch=True).filter(
            lambda n: n not in ("default", "www", "wakegate"))),
        image=draw(st.sampled_from((IMAGE, "ghcr.io/example/app:1.2.3", "nginx", "localhost:5000/a/b@sha256:"
                                    + "0" * 64))),
        port=draw(st.integers(1, 65535)), mode=draw(st.sampled_from(C.MODES)),
        resources=resources, quota=quota,
        run_as_user=draw(st.integers(1, 2**31 - 1)), run_as_group=draw(st.integers(0, 2**31 - 1)),
        fs_group=draw(st.one_of(st.none(), st.integers(0, 2**31 - 1))),
        readiness_path=draw(st.one_of(st.none(), st.from_regex(r"/[!-~]{0,20}", fullmatch=True))),
        idle_timeout_s=draw(DURATION), hold_timeout_s=draw(DURATION),
        strategy=draw(st.one_of(st.none(), st.sampled_from(C.STRATEGIES))),
        allow_internet=draw(st.booleans()), storage=storage,
        runtime_class=draw(st.one_of(st.none(), SUBDOMAIN)),
        workload_identity_client_id=draw(st.one_of(st.none(), st.uuids().map(str))),
        pod_security_version=draw(st.one_of(st.just("latest"), st.integers(0, 99).map(lambda n: f"v1.{n}"))),
        node_selector=node_selector, tolerations=tolerations,
        priority_class=draw(st.one_of(st.none(), SUBDOMAIN.filter(lambda n: not n.startswith("system-")))),
        **draw(environments()))
    return spec, draw(st.booleans())


@settings(max_examples=300, deadline=None)
@given(specs())
def test_generated_specs_survive_the_round_trip(case: tuple[ProjectSpec, bool]) -> None:
    spec, keep_data = case
    obj = to_resource(spec, keep_data=keep_data)
    for key in ("idleTimeout", "holdTimeout"):
        if key in obj["spec"]:
            assert re.fullmatch(DURATION_PATTERN, str(obj["spec"][key])), obj["spec"][key]
    back = round_trip(spec, keep_data)
    assert back.spec == as_referenced(spec)
    assert back.keep_data is (keep_data and spec.storage is not None)
    # What to_resource writes for the spec it read back is the same object: the translation is stable.
    assert to_resource(back.spec, keep_data=back.keep_data) == obj


# --- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("obj", "field"), [
    pytest.param(project(quota={"pods": 1}), "spec.quota.pods", id="quota-pods-1"),
    pytest.param(project(quota={"objects": 1}), "spec.quota.objects", id="quota-objects-1"),
    pytest.param(project(resources={"tmpSize": "2Gi"}), "spec.resources.tmpSize", id="tmp-above-ephemeral-limit"),
    pytest.param(project(quota={"requests": {"memory": "256Mi"}}), "spec.quota.requests.memory",
                 id="quota-too-small-for-a-rollout"),
    pytest.param(project(quota={"limits": {"cpu": 1}}), "spec.quota.limits.cpu", id="quota-limit-too-small"),
    pytest.param(project(resources={"requests": {"cpu": "1e1.5"}}), "spec.resources.requests.cpu",
                 id="quantity-with-a-fractional-exponent"),
    pytest.param(project(keepWarm=[{"days": ["Mon"], "start": "09:00", "end": "17:00",
                                    "timeZone": "Mars/Olympus_Mons"}]), "spec.keepWarm[0].timeZone",
                 id="unknown-time-zone"),
    pytest.param(project(image="Not An Image"), "spec.image", id="image"),
    pytest.param(project(storage={"size": "1Gi", "path": "/tmp/data"}), "spec.storage.path", id="storage-path"),
    pytest.param(project(idleTimeout="0"), "spec.idleTimeout", id="zero-duration"),
    pytest.param(project(tolerations=[{"key": "spot", "effect": "NoSchedule"},
                                      {"key": "spot", "value": "yes", "effect": "NoSchedule"}]),
                 "spec.tolerations", id="overlapping-tolerations"),
    pytest.param(project(spec={"image": IMAGE, "resources": "big"}), "spec.resources", id="not-an-object"),
])
def test_spec_problems_name_the_project_field_never_a_flag(obj: Obj, field: str) -> None:
    message = refusal(obj)
    assert message.startswith(field), message
    assert "--" not in message


def test_overlapping_tolerations_name_the_field_for_both() -> None:
    message = refusal(project(tolerations=[{"key": "spot", "effect": "NoSchedule"},
                                           {"key": "spot", "value": "yes", "effect": "NoSchedule"}]))
    assert message.count("spec.tolerations") == 2 and "--" not in message


@pytest.mark.parametrize("resource", ["cpu", "memory", "ephemeral-storage"])
def test_a_request_above_the_default_limit_names_the_request_field(resource: str) -> None:
    """The CRD compares a request with a limit only when both are given, so a request above the default
    limit reaches ProjectSpec; its message must still name the Project's field."""
    message = refusal(project(resources={"requests": {resource: "64Gi" if resource != "cpu" else "64"}}))
    assert f"spec.resources.requests.{resource}" in message, message
    assert "--" not in message


def test_a_reserved_name_is_refused_without_a_flag() -> None:
    message = refusal(project(name="default"))
    assert "'default'" in message and "reserved" in message and "--" not in message


# --- in_resource_terms and the flag table --------------------------------------------------------


@pytest.mark.parametrize(("flag", "field"), sorted(FLAG_FIELDS.items()))
def test_in_resource_terms_maps_each_flag(flag: str, field: str) -> None:
    assert in_resource_terms(f"{flag} 'x' is not valid") == f"{field} 'x' is not valid"
    assert in_resource_terms(f"{flag}: expected a, got b") == f"{field}: expected a, got b"


def test_in_resource_terms_maps_every_flag_of_a_message_and_leaves_the_rest() -> None:
    assert in_resource_terms("--toleration 'a:NoSchedule' overlaps --toleration a=b:NoSchedule") == (
        "spec.tolerations 'a:NoSchedule' overlaps spec.tolerations a=b:NoSchedule")
    assert in_resource_terms("--no-such-flag is bad") == "--no-such-flag is bad"
    assert in_resource_terms("cpu request 2 is above its limit 1") == "cpu request 2 is above its limit 1"


def test_the_flag_table_has_the_flags_resources_and_quotas_expand_to() -> None:
    for resource in ("cpu", "memory", "ephemeral-storage"):
        assert FLAG_FIELDS[f"--{resource}-request"] == f"spec.resources.requests.{resource}"
        assert FLAG_FIELDS[f"--{resource}-limit"] == f"spec.resources.limits.{resource}"
        for kind in ("requests", "limits"):
            assert FLAG_FIELDS[f"--quota-{kind}-{resource}"] == f"spec.quota.{kind}.{resource}"


def test_every_field_of_the_flag_table_is_a_field_of_the_schema() -> None:
    fields = set(schema_nodes(spec_schema(), "spec"))
    assert {f for f in FLAG_FIELDS.values() if f not in fields} == set()


#: Flags of spec.py's messages that a Project cannot cause: the gateway namespace is the controller's own
#: setting, and a Project has no inline environment (--env-file, --secret-env-file).
NOT_FROM_A_PROJECT = {"--gateway-namespace", "--env-file", "--secret-env-file"}


def flags_in_spec_py() -> set[str]:
    """Every ``--flag`` in a string literal of provisioner/spec.py, with ``{kind}``/``{resource}`` expanded."""
    found: set[str] = set()
    tokens = tokenize.generate_tokens(io.StringIO(SPEC_SOURCE.read_text(encoding="utf-8")).readline)
    for token in tokens:
        if token.type != tokenize.STRING:
            continue
        for flag in re.findall(r"--[a-z{][a-z{}-]*", token.string):
            expanded = {flag.rstrip("-")}
            for name, values in (("{kind}", ("requests", "limits")),
                                 ("{resource}", ("cpu", "memory", "ephemeral-storage"))):
                expanded = {e.replace(name, v) for e in expanded for v in values}
            found |= expanded
    return found


def test_every_flag_a_spec_message_can_contain_is_in_the_table() -> None:
    flags = flags_in_spec_py()
    assert "--quota-pods" in flags and "--quota-limits-ephemeral-storage" in flags  # the scan finds them
    assert flags - NOT_FROM_A_PROJECT - set(FLAG_FIELDS) == set()
    assert flags >= NOT_FROM_A_PROJECT  # the exclusions are real flags of spec.py, not stale names
