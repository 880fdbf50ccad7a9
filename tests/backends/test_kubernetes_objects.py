"""Pure translations of Kubernetes objects: projects, endpoints, failures, patches, times."""

from __future__ import annotations

from typing import Any

import pytest

from gateway import contract as C
from gateway.backends.base import Endpoint, ProjectSettings
from gateway.backends.k8s import objects as o


def namespace(name: str, project: str | None, managed: bool = True) -> dict[str, Any]:
    lab = {C.MANAGED_BY_LABEL: C.MANAGED_BY} if managed else {}
    if project:
        lab[C.PROJECT_LABEL] = project
    return {"metadata": {"name": name, "labels": lab}}


def deployment(name: str = "foo", ns: str = "wg-foo", *, project: str | None = None, managed: bool = True,
               annotations: dict[str, str] | None = None, replicas: int | None = 1, generation: int = 2,
               observed: int | None = 2, conditions: list[dict[str, Any]] | None = None,
               created: str = "2024-01-01T00:00:00Z") -> dict[str, Any]:
    lab = {C.PROJECT_LABEL: project or name}
    if managed:
        lab[C.MANAGED_BY_LABEL] = C.MANAGED_BY
    spec: dict[str, Any] = {} if replicas is None else {"replicas": replicas}
    status: dict[str, Any] = {"conditions": conditions or []}
    if observed is not None:
        status["observedGeneration"] = observed
    return {"metadata": {"name": name, "namespace": ns, "labels": lab, "annotations": annotations or {},
                         "generation": generation, "creationTimestamp": created, "resourceVersion": "7"},
            "spec": spec, "status": status}


# --- projects ------------------------------------------------------------------------------------


def test_namespace_project_needs_managed_label() -> None:
    assert o.namespace_project(namespace("wg-foo", "foo")) == "foo"
    assert o.namespace_project(namespace("wg-foo", "foo", managed=False)) is None
    assert o.namespace_project(namespace("wg-foo", None)) is None
    assert o.namespace_project({}) is None


def test_deployment_project_requires_label_name_and_managed_by() -> None:
    assert o.deployment_project(deployment()) == "foo"
    assert o.deployment_project(deployment(managed=False)) is None
    assert o.deployment_project(deployment(name="bar", project="foo")) is None
    assert o.deployment_project({"metadata": {"name": "foo"}}) is None


def test_project_settings_from_annotations() -> None:
    s, problems = o.project_settings({C.IDLE_TIMEOUT_ANNOTATION: "60", C.HOLD_TIMEOUT_ANNOTATION: "2.5",
                                      C.STRATEGY_ANNOTATION: "page"})
    assert s == ProjectSettings(idle_timeout_s=60.0, hold_timeout_s=2.5, strategy="page")
    assert problems == []
    assert o.project_settings({}) == (ProjectSettings(), [])


@pytest.mark.parametrize("value", ["0", "-3", "abc", "nan", "inf", ""])
def test_invalid_timeouts_fall_back_with_a_message(value: str) -> None:
    s, problems = o.project_settings({C.IDLE_TIMEOUT_ANNOTATION: value, C.HOLD_TIMEOUT_ANNOTATION: "5"})
    assert s == ProjectSettings(hold_timeout_s=5.0)
    assert len(problems) == 1 and C.IDLE_TIMEOUT_ANNOTATION in problems[0] and repr(value) in problems[0]


def test_invalid_strategy_falls_back_with_a_message() -> None:
    s, problems = o.project_settings({C.STRATEGY_ANNOTATION: "wait"})
    assert s.strategy is None
    assert "auto, block, page" in problems[0]


@pytest.mark.parametrize("value", C.MODES)
def test_project_settings_carry_the_mode(value: str) -> None:
    s, problems = o.project_settings({C.MODE_ANNOTATION: value, C.STRATEGY_ANNOTATION: "block"})
    assert s == ProjectSettings(strategy="block", mode=value)
    assert problems == []


def test_an_absent_mode_is_auto() -> None:
    s, problems = o.project_settings({C.IDLE_TIMEOUT_ANNOTATION: "60"})
    assert s.mode is None and problems == []


@pytest.mark.parametrize("value", ["running", "Paused", "", " Running", "Auto,Running"])
def test_an_invalid_mode_falls_back_to_auto_with_a_message(value: str) -> None:
    s, problems = o.project_settings({C.MODE_ANNOTATION: value, C.HOLD_TIMEOUT_ANNOTATION: "5"})
    assert s == ProjectSettings(hold_timeout_s=5.0)  # the others still apply; the mode is Auto
    assert problems == [f"annotation {C.MODE_ANNOTATION}: expected one of Auto, Running, Suspended, "
                        f"got {value!r}; using the default"]


def test_an_invalid_mode_does_not_hide_the_project() -> None:
    ref, problems = o.project_ref(deployment(annotations={C.MODE_ANNOTATION: "Off"}), namespace("wg-foo", "foo"))
    assert ref is not None and ref.name == "foo" and ref.info.settings.mode is None
    assert len(problems) == 1 and C.MODE_ANNOTATION in problems[0] and "'Off'" in problems[0]
    ref, problems = o.project_ref(deployment(annotations={C.MODE_ANNOTATION: "Suspended"}),
                                  namespace("wg-foo", "foo"))
    assert ref is not None and ref.info.settings.mode == "Suspended" and problems == []


def test_project_ref_needs_the_namespace_to_confirm() -> None:
    dep = deployment(annotations={C.IDLE_TIMEOUT_ANNOTATION: "30"})
    ref, problems = o.project_ref(dep, namespace("wg-foo", "foo"))
    assert ref is not None and problems == []
    assert ref.name == "foo" and ref.namespace == "wg-foo"
    assert ref.info.settings.idle_timeout_s == 30.0
    assert ref.info.location == "namespace wg-foo, deployment foo"
    # another project's namespace cannot claim "foo"
    assert o.project_ref(dep, namespace("wg-foo", "evil")) == (None, [])
    assert o.project_ref(dep, None) == (None, [])


def test_build_table_ignores_unconfirmed_claims_and_settles_duplicates() -> None:
    namespaces = {"wg-foo": namespace("wg-foo", "foo"), "x-foo": namespace("x-foo", "foo"),
                  "wg-evil": namespace("wg-evil", "evil")}
    deps = [
        deployment(ns="wg-foo", created="2024-02-01T00:00:00Z"),
        deployment(ns="x-foo", created="2024-01-01T00:00:00Z"),  # older: wins
        deployment(ns="wg-evil"),  # a tenant's Deployment claiming "foo" from its own namespace
        deployment(name="bar", ns="wg-bar"),  # namespace not managed/known
    ]
    table = o.build_table(deps, namespaces)
    assert list(table) == ["foo"]
    assert table["foo"].namespace == "x-foo"


def test_spec_replicas_defaults_to_one() -> None:
    assert o.spec_replicas(deployment(replicas=0)) == 0
    assert o.spec_replicas(deployment(replicas=3)) == 3
    assert o.spec_replicas(deployment(replicas=None)) == 1
    assert o.spec_replicas({}) == 1


# --- endpoints -----------------------------------------------------------------------------------


def slice_(endpoints: list[dict[str, Any]], ports: list[dict[str, Any]] | None = None,
           address_type: str = "IPv4") -> dict[str, Any]:
    return {"addressType": address_type, "endpoints": endpoints,
            "ports": ports if ports is not None else [{"name": "http", "port": 3001, "protocol": "TCP"}],
            "metadata": {"labels": {C.SERVICE_NAME_LABEL: "foo",
                                    o.SLICE_MANAGED_BY_LABEL: "endpointslice-controller.k8s.io"}}}


def ep(ip: str, ready: bool | None = True, terminating: bool | None = None) -> dict[str, Any]:
    cond: dict[str, Any] = {}
    if ready is not None:
        cond["ready"] = ready
    if terminating is not None:
        cond["terminating"] = terminating
    return {"addresses": [ip], "conditions": cond}


def test_ready_endpoints_only_ready_and_not_terminating() -> None:
    s = slice_([ep("10.0.0.2"), ep("10.0.0.1"), ep("10.0.0.3", ready=False), ep("10.0.0.4", terminating=True),
                ep("10.0.0.5", ready=None)])
    assert o.ready_endpoints([s]) == (Endpoint("10.0.0.1", 3001), Endpoint("10.0.0.2", 3001),
                                      Endpoint("10.0.0.5", 3001))


def test_ready_endpoints_across_slices_unique() -> None:
    a = slice_([ep("10.0.0.1")])
    b = slice_([ep("10.0.0.1"), ep("10.0.0.9")])
    assert o.ready_endpoints([a, b]) == (Endpoint("10.0.0.1", 3001), Endpoint("10.0.0.9", 3001))


def test_ready_endpoints_skips_fqdn_slices_and_empty_addresses() -> None:
    assert o.ready_endpoints([slice_([ep("example.com")], address_type="FQDN")]) == ()
    assert o.ready_endpoints([slice_([{"addresses": [], "conditions": {"ready": True}}])]) == ()
    assert o.ready_endpoints([slice_([])]) == ()
    assert o.ready_endpoints([slice_([ep("fd00::1")], address_type="IPv6")]) == (Endpoint("fd00::1", 3001),)


def test_slice_port_prefers_http_then_only_port() -> None:
    assert o.slice_port([{"name": "metrics", "port": 9000}, {"name": "http", "port": 8080}]) == 8080
    assert o.slice_port([{"name": "", "port": 8080}]) == 8080
    assert o.slice_port([{"name": "a", "port": 1}, {"name": "b", "port": 2}]) is None
    assert o.slice_port([{"name": "http"}]) is None  # "all ports": unusable
    assert o.slice_port([]) is None
    assert o.ready_endpoints([slice_([ep("10.0.0.1")], ports=[])]) == ()


def test_slice_service_only_for_kubernetes_managed_slices() -> None:
    assert o.slice_service(slice_([])) == "foo"
    mirrored = slice_([])
    mirrored["metadata"]["labels"][o.SLICE_MANAGED_BY_LABEL] = "endpointslicemirroring-controller.k8s.io"
    assert o.slice_service(mirrored) == "foo"
    forged = slice_([])
    forged["metadata"]["labels"][o.SLICE_MANAGED_BY_LABEL] = "someone"
    assert o.slice_service(forged) is None
    del forged["metadata"]["labels"][o.SLICE_MANAGED_BY_LABEL]
    assert o.slice_service(forged) is None
    assert o.slice_service({"metadata": {}}) is None


# --- failures ------------------------------------------------------------------------------------

QUOTA = {"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate",
         "message": 'pods "foo-1" is forbidden: exceeded quota: q, requested: pods=1, used: pods=1, limited: pods=1'}


def test_deployment_failure_reports_replica_failure_with_message() -> None:
    msg = o.deployment_failure(deployment(conditions=[QUOTA]))
    assert msg is not None
    assert msg.startswith("deployment wg-foo/foo cannot create pods: FailedCreate: ")
    assert "exceeded quota" in msg


def test_deployment_failure_ignores_stale_or_irrelevant_status() -> None:
    assert o.deployment_failure(deployment(conditions=[QUOTA], generation=3, observed=2)) is None
    assert o.deployment_failure(deployment(conditions=[QUOTA], observed=None)) is None
    assert o.deployment_failure(deployment(conditions=[QUOTA], replicas=0)) is None
    assert o.deployment_failure(deployment(conditions=[{**QUOTA, "status": "False"}])) is None
    assert o.deployment_failure(deployment(conditions=[{"type": "Available", "status": "True"}])) is None


def pod(name: str, *, waiting: dict[str, Any] | None = None, last: dict[str, Any] | None = None,
        created: str = "2024-01-01T00:00:01Z", template: str = "abc", deleting: bool = False,
        init: bool = False) -> dict[str, Any]:
    cs: dict[str, Any] = {"name": "app", "state": {"waiting": waiting} if waiting else {"running": {}}}
    if last:
        cs["lastState"] = {"terminated": last}
    metadata: dict[str, Any] = {"name": name, "namespace": "wg-foo", "creationTimestamp": created,
                                "labels": {o.POD_TEMPLATE_HASH_LABEL: template}}
    if deleting:
        metadata["deletionTimestamp"] = "2024-01-01T00:01:00Z"
    return {"metadata": metadata,
            "status": {"initContainerStatuses" if init else "containerStatuses": [cs]}}


@pytest.mark.parametrize("reason", sorted(o.FAILURE_REASONS))
def test_pod_failure_reasons(reason: str) -> None:
    msg = o.pod_failure(pod("foo-1", waiting={"reason": reason, "message": "kubelet says why"}))
    assert msg == f"pod wg-foo/foo-1 container app: {reason}: kubelet says why"


def test_pod_failure_includes_last_exit() -> None:
    p = pod("foo-1", waiting={"reason": "CrashLoopBackOff", "message": "back-off 10s restarting failed container"},
            last={"exitCode": 1, "reason": "Error", "message": "boom: missing DATABASE_URL"})
    msg = o.pod_failure(p)
    assert msg == ("pod wg-foo/foo-1 container app: CrashLoopBackOff: back-off 10s restarting failed container; "
                   "last exit code 1 (Error): boom: missing DATABASE_URL")


def test_pod_failure_in_init_container_and_not_for_harmless_waits() -> None:
    assert o.pod_failure(pod("foo-1", waiting={"reason": "ErrImagePull"}, init=True)) == \
        "pod wg-foo/foo-1 container app: ErrImagePull"
    assert o.pod_failure(pod("foo-1", waiting={"reason": "ContainerCreating"})) is None
    assert o.pod_failure(pod("foo-1")) is None
    assert o.pod_failure({"metadata": {}}) is None


def test_pod_failure_message_is_clipped_to_one_line() -> None:
    msg = o.pod_failure(pod("foo-1", waiting={"reason": "CrashLoopBackOff", "message": "x\n" * 1000}))
    assert msg is not None and len(msg) == o.MAX_MESSAGE and "\n" not in msg and msg.endswith("…")


def test_current_pods_drop_deleted_and_older_templates() -> None:
    old = pod("foo-old", template="old", created="2024-01-01T00:00:00Z")
    new = pod("foo-new", template="new", created="2024-01-01T00:00:05Z")
    gone = pod("foo-gone", template="new", created="2024-01-01T00:00:06Z", deleting=True)
    assert [o.key_of(p)[1] for p in o.current_pods([old, new, gone])] == ["foo-new"]
    assert o.current_pods([gone]) == []
    assert o.current_pods([]) == []


def test_wake_failure_prefers_the_deployment_then_current_pods() -> None:
    crash = pod("foo-1", waiting={"reason": "CrashLoopBackOff"})
    dep = deployment(conditions=[QUOTA])
    assert (o.wake_failure(dep, [crash]) or "").startswith("deployment wg-foo/foo")
    assert (o.wake_failure(deployment(), [crash]) or "").startswith("pod wg-foo/foo-1")
    assert o.wake_failure(deployment(), [pod("foo-1")]) is None
    assert o.wake_failure(deployment(replicas=0), [crash]) is None  # asleep: nothing to report
    assert (o.wake_failure(None, [crash]) or "").startswith("pod ")
    # a crash of an old template's pod does not fail a rollout's new pod
    old_crash = pod("foo-0", waiting={"reason": "CrashLoopBackOff"}, template="old", created="2024-01-01T00:00:00Z")
    assert o.wake_failure(deployment(), [old_crash, pod("foo-1", template="new")]) is None


# --- writes and times ----------------------------------------------------------------------------


def test_scale_patch() -> None:
    assert o.scale_patch(1) == {"spec": {"replicas": 1}}
    assert o.scale_patch(0, "42") == {"spec": {"replicas": 0}, "metadata": {"resourceVersion": "42"}}


def test_times_round_trip() -> None:
    text = o.format_time(1700000000.123456)
    assert text == "2023-11-14T22:13:20.123456Z"
    assert o.parse_time(text) == pytest.approx(1700000000.123456)
    assert o.parse_time("2023-11-14T22:13:20Z") == 1700000000.0
    assert o.parse_time("2023-11-14T22:13:20") == 1700000000.0
    assert o.parse_time(None) is None
    assert o.parse_time("yesterday") is None


def test_accessors_tolerate_missing_metadata() -> None:
    assert o.key_of({}) == ("", "")
    assert o.labels_of({"metadata": {"labels": None}}) == {}
    assert o.annotations_of({"metadata": "junk"}) == {}
