"""A Project's status from what the controller observes: the phase table, the conditions, the times it
carries, and status_update's rule of one write per visible change."""

from __future__ import annotations

import copy
import itertools
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import pytest

from gateway import contract as C
from gateway.backends.k8s import objects as K
from provisioner.project_status import (
    CONDITION_TYPES,
    PHASES,
    Observed,
    Problem,
    desired_status,
    phase_of,
    pod_problem,
    status_update,
)

Obj = dict[str, Any]
NS = "wg-demo"
URL = "https://demo.example.test/"
T0, T1, T2 = "2024-05-01T10:00:00Z", "2024-05-01T10:05:00Z", "2024-05-01T10:10:00Z"


def deployment(replicas: int | None = 0, ready: int = 0, generation: int = 2, observed: int | None = 2,
               failure: str | None = None, activity: str | None = None) -> Obj:
    """A project's Deployment as the API server returns it."""
    dep: Obj = {"apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "demo", "namespace": NS, "generation": generation,
                             "labels": C.common_labels("demo")},
                "spec": {} if replicas is None else {"replicas": replicas},
                "status": {}}
    if activity is not None:
        dep["metadata"]["annotations"] = {C.LAST_ACTIVITY_ANNOTATION: activity}
    if observed is not None:
        dep["status"]["observedGeneration"] = observed
    if ready:
        dep["status"]["readyReplicas"] = ready
    if failure is not None:
        dep["status"]["conditions"] = [
            {"type": "Available", "status": "False", "reason": "MinimumReplicasUnavailable"},
            {"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate", "message": failure},
        ]
    return dep


def pod(name: str = "demo-abc-1", reason: str | None = None, message: str | None = None, template: str = "abc",
        created: str = "2024-05-01T10:00:00Z", terminated: Obj | None = None) -> Obj:
    """An app pod whose container waits for ``reason`` (running when ``None``)."""
    state: Obj = {"running": {"startedAt": created}} if reason is None else {
        "waiting": {"reason": reason, **({} if message is None else {"message": message})}}
    status: Obj = {"name": "app", "state": state, "ready": reason is None}
    if terminated is not None:
        status["lastState"] = {"terminated": terminated}
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": NS, "creationTimestamp": created,
                         "labels": {K.POD_TEMPLATE_HASH_LABEL: template}},
            "status": {"phase": "Pending" if reason else "Running", "containerStatuses": [status]}}


def observed(**kw: Any) -> Observed:
    base: Obj = {"generation": 2, "namespace": NS, "url": URL, "mode": "Auto", "provisioned": True,
                 "deployment": deployment()}
    base.update(kw)
    return Observed(**base)


def conditions(status: Mapping[str, Any]) -> dict[str, Obj]:
    return {c["type"]: c for c in status["conditions"]}


def written(o: Observed, current: Obj | None = None, now: str = T0) -> Obj:
    """The status the controller would write for ``o`` over ``current`` (which must change)."""
    new = status_update(current, desired_status(o, current), now)
    assert new is not None
    return new


QUOTA = ('pods "demo-abc-x" is forbidden: exceeded quota: compute, requested: limits.cpu=1, used: limits.cpu=2, '
         'limited: limits.cpu=2')
POD_SECURITY = ('pods "demo-abc-x" is forbidden: violates PodSecurity "restricted:v1.33": runAsNonRoot != true '
                '(pod or container "app" must set securityContext.runAsNonRoot=true)')
REFUSED = Problem("InvalidSpec", "spec.quota.pods 1 is outside 2-10000")


# --- the phase table -----------------------------------------------------------------------------


@pytest.mark.parametrize(("o", "phase", "reason"), [
    pytest.param(observed(refused=REFUSED), "Failed", "InvalidSpec", id="refused"),
    pytest.param(observed(refused=Problem("NamespaceConflict", "namespace wg-demo belongs to another owner"),
                          deployment=deployment(replicas=1, ready=1)), "Failed", "NamespaceConflict",
                 id="refused-beats-a-running-deployment"),
    pytest.param(observed(provisioned=False), "Provisioning", None, id="not-provisioned"),
    pytest.param(observed(provisioned=False, deployment=deployment(replicas=1, ready=1)), "Provisioning", None,
                 id="not-provisioned-for-this-generation"),
    pytest.param(observed(deployment=None), "Provisioning", None, id="no-deployment-yet"),
    pytest.param(observed(mode="Suspended"), "Suspended", None, id="suspended"),
    pytest.param(observed(mode="Suspended", deployment=deployment(replicas=1, failure=QUOTA)), "Suspended", None,
                 id="suspended-whatever-the-pods"),
    pytest.param(observed(), "Sleeping", None, id="replicas-0"),
    pytest.param(observed(pods=[pod(reason="CrashLoopBackOff")]), "Sleeping", None,
                 id="replicas-0-ignores-a-crashing-pod"),
    pytest.param(observed(deployment=deployment(replicas=0, failure=QUOTA)), "Sleeping", None,
                 id="replicas-0-ignores-replica-failure"),
    pytest.param(observed(deployment=deployment(replicas=1)), "Waking", None, id="replicas-1-none-ready"),
    pytest.param(observed(deployment=deployment(replicas=None)), "Waking", None, id="replicas-defaulted-to-1"),
    pytest.param(observed(deployment=deployment(replicas=1), pods=[pod(reason="ContainerCreating")]), "Waking",
                 None, id="container-creating"),
    pytest.param(observed(deployment=deployment(replicas=1, ready=1), pods=[pod()]), "Running", None,
                 id="ready"),
    pytest.param(observed(mode="Running", deployment=deployment(replicas=1, ready=1)), "Running", None,
                 id="mode-running"),
    pytest.param(observed(deployment=deployment(replicas=1), pods=[pod(reason="ErrImagePull",
                                                                       message="manifest unknown")]),
                 "Failed", "ErrImagePull", id="err-image-pull"),
    pytest.param(observed(deployment=deployment(replicas=1), pods=[pod(reason="CrashLoopBackOff",
                                                                       message="back-off 10s")]),
                 "Failed", "CrashLoopBackOff", id="crash-loop"),
    pytest.param(observed(deployment=deployment(replicas=1), pods=[pod(reason="CreateContainerConfigError",
                                                                       message='secret "demo-env" not found')]),
                 "Failed", "CreateContainerConfigError", id="config-error"),
    pytest.param(observed(deployment=deployment(replicas=1, failure=QUOTA)), "Failed", "QuotaExceeded",
                 id="exceeded-quota"),
    pytest.param(observed(deployment=deployment(replicas=1, failure=POD_SECURITY)), "Failed", "PodSecurity",
                 id="pod-security"),
    pytest.param(observed(deployment=deployment(replicas=1, failure="insufficient something")), "Failed",
                 "FailedCreate", id="other-replica-failure"),
    pytest.param(observed(deployment=deployment(replicas=1, failure=QUOTA, generation=3, observed=2)), "Waking",
                 None, id="replica-failure-of-an-older-generation"),
    pytest.param(observed(deployment=deployment(replicas=1, ready=1, failure=QUOTA)), "Failed", "QuotaExceeded",
                 id="failure-beats-ready"),
    pytest.param(observed(deployment=deployment(replicas=1), pods=[
        pod("demo-old-1", reason="CrashLoopBackOff", template="old", created="2024-05-01T09:00:00Z"),
        pod("demo-new-1", reason="ContainerCreating", template="new", created="2024-05-01T10:00:00Z")]),
        "Waking", None, id="an-old-template-s-crash-does-not-count"),
    pytest.param(observed(deployment=deployment(replicas=1), pods=[
        {**pod(reason="CrashLoopBackOff"), "metadata": {**pod()["metadata"], "deletionTimestamp": T0}}]),
        "Waking", None, id="a-deleted-pod-does-not-count"),
])
def test_phase(o: Observed, phase: str, reason: str | None) -> None:
    got, problem = phase_of(o)
    assert got == phase
    assert (problem.reason if problem else None) == reason
    status = desired_status(o)
    assert status["phase"] == phase
    failed = conditions(status)["Failed"]
    assert failed["status"] == ("True" if phase == "Failed" else "False")
    assert failed["reason"] == (reason or "NoFailure")


def test_the_phase_table_covers_every_phase() -> None:
    assert set(PHASES) == {"Provisioning", "Sleeping", "Waking", "Running", "Suspended", "Failed"}


@pytest.mark.parametrize(("pods", "quoted"), [
    pytest.param([pod(reason="ErrImagePull", message='failed to pull "ghcr.io/x/app:9": not found')],
                 ['ErrImagePull', 'failed to pull "ghcr.io/x/app:9": not found', "wg-demo/demo-abc-1"],
                 id="image-pull"),
    pytest.param([pod(reason="CrashLoopBackOff", message="back-off 40s restarting failed container",
                      terminated={"exitCode": 3, "reason": "Error", "message": "missing DATABASE_URL"})],
                 ["CrashLoopBackOff", "back-off 40s", "last exit code 3", "missing DATABASE_URL"], id="crash-loop"),
])
def test_a_pod_failure_is_failed_with_a_message_quoting_the_kubelet(pods: list[Obj], quoted: list[str]) -> None:
    o = observed(deployment=deployment(replicas=1), pods=pods)
    failed = conditions(desired_status(o))["Failed"]
    assert failed["status"] == "True"
    for text in quoted:
        assert text in failed["message"]


@pytest.mark.parametrize(("failure", "reason"), [(QUOTA, "QuotaExceeded"), (POD_SECURITY, "PodSecurity")])
def test_a_replica_failure_quotes_the_api_server(failure: str, reason: str) -> None:
    problem = pod_problem(deployment(replicas=1, failure=failure), [])
    assert problem is not None and problem.reason == reason
    assert failure in problem.message and "wg-demo/demo" in problem.message


def test_pod_problem_is_none_while_scaled_down_or_without_a_deployment() -> None:
    crashing = [pod(reason="CrashLoopBackOff")]
    assert pod_problem(None, crashing) is None
    assert pod_problem(deployment(replicas=0, failure=QUOTA), crashing) is None
    assert pod_problem(deployment(replicas=1), [pod()]) is None


def test_pod_problem_takes_the_first_failing_pod_by_name() -> None:
    pods = [pod("demo-abc-2", reason="CrashLoopBackOff"), pod("demo-abc-1", reason="ErrImagePull")]
    problem = pod_problem(deployment(replicas=1), pods)
    assert problem is not None and problem.reason == "ErrImagePull" and "demo-abc-1" in problem.message


def test_the_reason_is_the_container_s_own_whatever_its_message_mentions() -> None:
    """The kubelet's ImagePullBackOff message quotes the pull error ("...: ErrImagePull: ..."), and a
    termination message is the app's own text: the reason must be the container's waiting reason, not
    whichever known reason the text happens to mention."""
    wrong = []
    for reason, mentioned in itertools.permutations(sorted(K.FAILURE_REASONS), 2):
        pods = [pod(reason=reason, message=f'Back-off pulling image "x": {mentioned}: not found')]
        problem = pod_problem(deployment(replicas=1), pods)
        assert problem is not None
        if problem.reason != reason:
            wrong.append(f"{reason} (message mentions {mentioned}) -> {problem.reason}")
    assert wrong == []


# --- a failed wake ---------------------------------------------------------------------------------


def failed_wake(generation: int = 2) -> Obj:
    o = observed(generation=generation, deployment=deployment(replicas=1, generation=generation,
                                                              observed=generation),
                 pods=[pod(reason="ErrImagePull", message="manifest unknown")])
    return written(o)


def test_a_failed_wake_stays_failed_after_the_gateway_scales_down() -> None:
    current = failed_wake()
    before = conditions(current)["Failed"]
    o = observed(deployment=deployment(replicas=0))
    phase, problem = phase_of(o, current)
    assert phase == "Failed"
    assert problem == Problem(before["reason"], before["message"])
    assert status_update(current, desired_status(o, current), T1) is None  # nothing to write


def test_the_next_wake_ends_a_kept_failure() -> None:
    current = failed_wake()
    waking = observed(deployment=deployment(replicas=1))
    assert phase_of(waking, current) == ("Waking", None)
    current = written(waking, current, T1)
    assert phase_of(observed(deployment=deployment(replicas=0)), current) == ("Sleeping", None)


def test_a_new_generation_ends_a_kept_failure() -> None:
    current = failed_wake(generation=2)
    o = observed(generation=3, deployment=deployment(replicas=0, generation=3, observed=3))
    assert phase_of(o, current) == ("Sleeping", None)


@pytest.mark.parametrize("refusal", ["InvalidSpec", "NamespaceConflict", "ApplyFailed"])
def test_a_refusal_is_not_kept_once_the_spec_is_applied(refusal: str) -> None:
    current = written(observed(refused=Problem(refusal, "refused")))
    assert current["phase"] == "Failed"
    assert phase_of(observed(deployment=deployment(replicas=0)), current) == ("Sleeping", None)


def test_no_failure_is_kept_from_a_status_that_is_not_failed() -> None:
    current = failed_wake()
    current["phase"] = "Sleeping"
    assert phase_of(observed(), current) == ("Sleeping", None)


# --- conditions ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("o", "provisioned", "ready", "failed"), [
    pytest.param(observed(refused=REFUSED), ("False", "InvalidSpec"), ("False", "Failed"), ("True", "InvalidSpec"),
                 id="refused"),
    pytest.param(observed(provisioned=False), ("False", "Applying"), ("False", "Provisioning"),
                 ("False", "NoFailure"), id="provisioning"),
    pytest.param(observed(), ("True", "Applied"), ("False", "Sleeping"), ("False", "NoFailure"), id="sleeping"),
    pytest.param(observed(deployment=deployment(replicas=1)), ("True", "Applied"), ("False", "Waking"),
                 ("False", "NoFailure"), id="waking"),
    pytest.param(observed(deployment=deployment(replicas=1, ready=1)), ("True", "Applied"), ("True", "Running"),
                 ("False", "NoFailure"), id="running"),
    pytest.param(observed(mode="Suspended"), ("True", "Applied"), ("False", "Suspended"), ("False", "NoFailure"),
                 id="suspended"),
    pytest.param(observed(deployment=deployment(replicas=1, failure=QUOTA)), ("True", "Applied"),
                 ("False", "Failed"), ("True", "QuotaExceeded"), id="quota"),
])
def test_conditions_are_always_all_there(o: Observed, provisioned: tuple[str, str], ready: tuple[str, str],
                                         failed: tuple[str, str]) -> None:
    status = desired_status(o)
    assert [c["type"] for c in status["conditions"]] == list(CONDITION_TYPES) == ["Provisioned", "Ready", "Failed"]
    got = conditions(status)
    for kind, (value, reason) in (("Provisioned", provisioned), ("Ready", ready), ("Failed", failed)):
        assert (got[kind]["status"], got[kind]["reason"]) == (value, reason), kind
        assert got[kind]["observedGeneration"] == o.generation
        assert isinstance(got[kind]["message"], str)
        assert "lastTransitionTime" not in got[kind]


def test_the_status_names_the_url_namespace_and_generation() -> None:
    status = desired_status(observed(generation=7))
    assert (status["url"], status["namespace"], status["observedGeneration"]) == (URL, NS, 7)
    assert NS in conditions(status)["Provisioned"]["message"]


def test_a_refusal_s_message_is_on_provisioned_and_failed() -> None:
    got = conditions(desired_status(observed(refused=REFUSED)))
    assert got["Provisioned"]["message"] == got["Failed"]["message"] == REFUSED.message


# --- times ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("annotation", "shown"), [
    ("2024-05-01T12:34:56.789012Z", "2024-05-01T12:34:56Z"),
    ("2024-05-01T12:34:56Z", "2024-05-01T12:34:56Z"),
    ("2024-05-01T14:34:56.5+02:00", "2024-05-01T12:34:56Z"),
])
def test_last_activity_comes_from_the_annotation_to_the_second_in_utc(annotation: str, shown: str) -> None:
    status = desired_status(observed(deployment=deployment(activity=annotation)),
                            {"lastActivityTime": "2000-01-01T00:00:00Z"})
    assert status["lastActivityTime"] == shown


@pytest.mark.parametrize("dep", [
    pytest.param(deployment(), id="no-annotation"),
    pytest.param(deployment(activity="yesterday"), id="malformed-annotation"),
    pytest.param(None, id="no-deployment"),
])
def test_last_activity_is_kept_from_the_current_status_without_an_annotation(dep: Obj | None) -> None:
    o = observed(deployment=dep)
    assert desired_status(o, {"lastActivityTime": "2024-04-30T08:00:00Z"})["lastActivityTime"] == (
        "2024-04-30T08:00:00Z")
    assert "lastActivityTime" not in desired_status(o)
    assert "lastActivityTime" not in desired_status(o, {"phase": "Sleeping"})


def test_keep_warm_until_is_there_only_when_given() -> None:
    assert desired_status(observed(mode="Running", keep_warm_until=T2))["keepWarmUntil"] == T2
    assert "keepWarmUntil" not in desired_status(observed())
    assert "keepWarmUntil" not in desired_status(observed(), {"keepWarmUntil": T2})


# --- status_update -------------------------------------------------------------------------------


def test_the_first_status_sets_now_on_every_condition() -> None:
    new = written(observed())
    assert {c["type"]: c["lastTransitionTime"] for c in new["conditions"]} == dict.fromkeys(CONDITION_TYPES, T0)
    assert {k: v for k, v in new.items() if k != "conditions"} == {
        k: v for k, v in desired_status(observed()).items() if k != "conditions"}


OBSERVATIONS = [
    observed(refused=REFUSED), observed(provisioned=False), observed(), observed(mode="Suspended"),
    observed(deployment=deployment(replicas=1)), observed(deployment=deployment(replicas=1, ready=1)),
    observed(deployment=deployment(replicas=1, failure=QUOTA)),
    observed(deployment=deployment(replicas=1), pods=[pod(reason="CrashLoopBackOff")]),
    observed(deployment=deployment(activity="2024-05-01T12:00:00Z"), keep_warm_until=T2, mode="Running"),
]


@pytest.mark.parametrize("o", OBSERVATIONS)
def test_status_update_reaches_a_fixpoint(o: Observed) -> None:
    current = written(o)
    assert status_update(current, desired_status(o, current), T1) is None
    assert status_update(copy.deepcopy(current), desired_status(o, current), T2) is None


@pytest.mark.parametrize(("first", "second"), list(itertools.permutations(OBSERVATIONS, 2)))
def test_a_change_of_observation_is_written_once(first: Observed, second: Observed) -> None:
    current = written(first)
    desired = desired_status(second, current)
    new = status_update(current, desired, T1)
    if desired_status(first, current) == desired:
        assert new is None
        return
    assert new is not None
    before = conditions(current)
    for cond in new["conditions"]:
        old = before[cond["type"]]
        assert cond["lastTransitionTime"] == (old["lastTransitionTime"] if old["status"] == cond["status"] else T1)
    stored = merge_patch(current, new)
    assert status_update(stored, desired_status(second, stored), T2) is None


def test_a_condition_keeps_its_time_while_its_status_stays() -> None:
    current = written(observed())  # Sleeping
    new = written(observed(deployment=deployment(replicas=1, ready=1)), current, T1)  # Running
    got = conditions(new)
    assert got["Ready"]["status"] == "True" and got["Ready"]["lastTransitionTime"] == T1
    assert got["Provisioned"]["lastTransitionTime"] == T0
    assert got["Failed"]["lastTransitionTime"] == T0


def test_a_changed_reason_alone_is_a_write_that_keeps_the_time() -> None:
    current = written(observed())  # Sleeping: Ready False/Sleeping
    new = written(observed(deployment=deployment(replicas=1)), current, T1)  # Waking: Ready False/Waking
    ready = conditions(new)["Ready"]
    assert (ready["status"], ready["reason"], ready["lastTransitionTime"]) == ("False", "Waking", T0)
    assert new["phase"] == "Waking"


def test_a_changed_message_alone_is_a_write_that_keeps_the_time() -> None:
    o = observed(deployment=deployment(replicas=1), pods=[pod(reason="CrashLoopBackOff", message="back-off 10s")])
    current = written(o)
    later = replace(o, pods=[pod(reason="CrashLoopBackOff", message="back-off 20s")])
    desired = desired_status(later, current)
    assert {k: v for k, v in desired.items() if k != "conditions"} == {
        k: v for k, v in current.items() if k != "conditions"}
    new = status_update(current, desired, T1)
    assert new is not None
    failed = conditions(new)["Failed"]
    assert "back-off 20s" in failed["message"] and failed["lastTransitionTime"] == T0


def test_a_condition_whose_status_flips_gets_now() -> None:
    current = written(observed(deployment=deployment(replicas=1, failure=QUOTA)))
    new = written(observed(deployment=deployment(replicas=1, ready=1)), current, T1)
    got = conditions(new)
    assert got["Failed"]["status"] == "False" and got["Failed"]["lastTransitionTime"] == T1
    assert got["Ready"]["lastTransitionTime"] == T1
    assert got["Provisioned"]["lastTransitionTime"] == T0


def test_a_condition_missing_from_the_current_status_gets_now() -> None:
    current = written(observed())
    current["conditions"] = [c for c in current["conditions"] if c["type"] != "Ready"]
    new = written(observed(), current, T1)
    assert conditions(new)["Ready"]["lastTransitionTime"] == T1
    assert conditions(new)["Failed"]["lastTransitionTime"] == T0


def test_status_update_changes_neither_argument() -> None:
    current = written(observed())
    desired = desired_status(observed(deployment=deployment(replicas=1, ready=1)), current)
    saved = copy.deepcopy((current, desired))
    assert status_update(current, desired, T1) is not None
    assert (current, desired) == saved


def merge_patch(target: Mapping[str, Any], patch: Mapping[str, Any]) -> Obj:
    """RFC 7386, as the API server applies the controller's ``application/merge-patch+json`` status write."""
    out = dict(target)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge_patch(out[key], value)
        else:
            out[key] = value
    return out


def test_the_written_status_as_a_merge_patch_reaches_the_fixpoint_when_a_keep_warm_window_ends() -> None:
    """The controller sends status_update's result as a JSON merge patch: a key the new status leaves
    out stays on the server. When the window ends, keepWarmUntil must go, and the next reconcile must
    find nothing to write."""
    current = written(observed(mode="Running", deployment=deployment(replicas=1, ready=1), keep_warm_until=T1))
    after = observed(deployment=deployment(replicas=1, ready=1))
    new = status_update(current, desired_status(after, current), T1)
    assert new is not None
    stored = merge_patch(current, new)
    assert "keepWarmUntil" not in stored
    assert status_update(stored, desired_status(after, stored), T2) is None
