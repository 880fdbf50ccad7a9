"""The provisioner against the real test control plane (kube-apiserver + controller-manager + node agent)."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import io
import json
import time
import urllib.request
import uuid
from collections.abc import Generator
from contextlib import redirect_stderr, redirect_stdout, suppress
from pathlib import Path
from typing import Any

import pytest

from gateway import contract as C
from provisioner.apply import ApplyReport, Kube, connect, create_project, object_path
from provisioner.cli import main
from provisioner.errors import ProvisionError
from provisioner.render import (
    CHECKSUM_KEY_FIELD,
    CHECKSUM_KEY_SECRET,
    INTERNET_EGRESS_POLICY,
    automation_clusterrole,
    config_checksum,
    find,
    render,
)
from provisioner.spec import ProjectSpec, Resources, Toleration
from tests.cluster.controlplane import ApiStatusError, Cluster

pytestmark = pytest.mark.cluster

Obj = dict[str, Any]
ECHO = "wakegate.test/echo:1"
SECRET_VALUE = "hunter2-never-in-a-configmap"


# --- helpers -------------------------------------------------------------------------------------


def cli(*argv: str) -> tuple[int, str, str]:
    """Run ``wakegate project ARGV`` in-process; (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def create(cluster: Cluster, name: str, *extra: str) -> tuple[int, str, str]:
    return cli("create", name, "--image", ECHO, "--kubeconfig", str(cluster.kubeconfig), "--timeout", "90", *extra)


def get(cluster: Cluster, path: str) -> Obj | None:
    try:
        result: Obj = cluster.request("GET", path)
    except ApiStatusError as exc:
        if exc.status == 404:
            return None
        raise
    return result


def resource_versions(cluster: Cluster, objs: list[Obj]) -> dict[str, str]:
    out: dict[str, str] = {}
    for obj in objs:
        current = get(cluster, object_path(obj))
        assert current is not None, f"{obj['kind']}/{obj['metadata']['name']} is missing"
        out[f"{obj['kind']}/{obj['metadata']['name']}"] = current["metadata"]["resourceVersion"]
    return out


def checksum_key(cluster: Cluster, name: str) -> bytes:
    """The project's config checksum key, as the cluster keeps it."""
    held = get(cluster, f"/api/v1/namespaces/wg-{name}/secrets/{CHECKSUM_KEY_SECRET}")
    assert held is not None
    return base64.b64decode(held["data"][CHECKSUM_KEY_FIELD])


def config_annotation(cluster: Cluster, name: str) -> str:
    value: str = deployment(cluster, name)["spec"]["template"]["metadata"]["annotations"][
        C.CONFIG_CHECKSUM_ANNOTATION]
    return value


def deployment(cluster: Cluster, name: str) -> Obj:
    d = get(cluster, f"/apis/apps/v1/namespaces/wg-{name}/deployments/{name}")
    assert d is not None
    return d


def is_ready(pod: Obj) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod.get("status", {}).get("conditions", []))


def ready_pod(cluster: Cluster, name: str, check: Any = None, timeout: float = 90) -> Obj:
    """Wait for a ready, non-terminating app pod of the project (matching ``check`` if given)."""
    def predicate(items: list[Obj]) -> Obj | None:
        for pod in items:
            if is_ready(pod) and not pod["metadata"].get("deletionTimestamp") and (check is None or check(pod)):
                return pod
        return None

    pod: Obj = cluster.watch_until(f"/api/v1/namespaces/wg-{name}/pods", predicate, timeout,
                                   labelSelector=C.app_label_selector(name))
    return pod


def echo(pod: Obj, port: int = C.DEFAULT_CONTAINER_PORT) -> Obj:
    with urllib.request.urlopen(f"http://{pod['status']['podIP']}:{port}/", timeout=5) as resp:
        body: Obj = json.loads(resp.read())
    return body


def wait_gone(cluster: Cluster, path: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while get(cluster, path) is not None:
        assert time.monotonic() < deadline, f"{path} still exists"
        time.sleep(0.3)


def run_async(coro_factory: Any, cluster: Cluster) -> Any:
    async def go() -> Any:
        api = await connect(cluster.kubeconfig)
        async with api:
            return await coro_factory(Kube(api))
    return asyncio.run(go())


@pytest.fixture
def project(cluster: Cluster, automation_clusterrole_installed: None) -> Generator[str, None, None]:
    """A fresh project name; its namespace is deleted afterwards."""
    name = f"p{uuid.uuid4().hex[:8]}"
    yield name
    try:
        cluster.request("DELETE", f"/api/v1/namespaces/wg-{name}")
    except ApiStatusError as exc:
        if exc.status != 404:
            raise


@pytest.fixture(scope="module")
def automation_clusterrole_installed(cluster: Cluster) -> None:
    """The ClusterRole that ``manifests/`` installs and every project's automation account is bound to;
    and no Project CRD (with it, the CLI writes Projects instead of applying: tested with the controller)."""
    cluster.kubectl("apply", "--server-side", "--field-manager=wakegate-test", "-f", "-",
                    input=json.dumps(automation_clusterrole()))
    assert get(cluster, f"/apis/{C.PROJECT_API_VERSION}") is None, "the Project CRD is still installed"


@pytest.fixture
def env_files(tmp_path: Path) -> tuple[Path, Path]:
    config = tmp_path / "app.env"
    config.write_text("# app settings\nGREETING=hello\nexport LOG_LEVEL=debug\n")
    secret = tmp_path / "secret.env"
    secret.write_text(f"DB_PASSWORD='{SECRET_VALUE}'\n")
    return config, secret


# --- create, re-create, replicas ---------------------------------------------------------------------


def test_create_makes_every_object_and_recreate_changes_nothing(
        cluster: Cluster, project: str, env_files: tuple[Path, Path]) -> None:
    config, secret = env_files
    args = ("--env-file", str(config), "--secret-env-file", str(secret), "--readiness-path", "/healthz",
            "--idle-timeout", "5m", "--cpu-limit", "0.5", "--memory-limit", "1024Mi", "--allow-internet")
    code, out, err = create(cluster, project, *args)
    assert code == 0, err
    assert out == f"https://{project}.env.example.com/\n"
    spec = ProjectSpec(name=project, image=ECHO, config=(("GREETING", "hello"), ("LOG_LEVEL", "debug")),
                       secret=(("DB_PASSWORD", SECRET_VALUE),), readiness_path="/healthz", idle_timeout_s=300,
                       resources=Resources(cpu_limit="0.5", memory_limit="1024Mi"),
                       allow_internet=True)
    key = checksum_key(cluster, project)
    assert len(key) == 32
    objs = render(spec, key)
    assert f"{len(objs)} created, 0 configured, 0 unchanged" in err

    for obj in objs:  # every rendered object exists, labelled, with what was rendered
        current = get(cluster, object_path(obj))
        assert current is not None, obj["metadata"]["name"]
        assert current["metadata"]["labels"][C.PROJECT_LABEL] == project
        assert current["metadata"]["labels"][C.MANAGED_BY_LABEL] == C.MANAGED_BY
    d = deployment(cluster, project)
    assert d["spec"]["replicas"] == 0
    assert d["metadata"]["annotations"][C.IDLE_TIMEOUT_ANNOTATION] == "300"
    cm = get(cluster, f"/api/v1/namespaces/wg-{project}/configmaps/{project}-env")
    assert cm is not None and SECRET_VALUE not in json.dumps(cm)
    # The checksum is keyed: not the plain sha256 of the data, which a Deployment reader could test guesses with.
    annotation = config_annotation(cluster, project)
    assert annotation == config_checksum(spec, key)
    plain = json.dumps({"config": dict(spec.config), "secret": dict(spec.secret)}, sort_keys=True,
                       separators=(",", ":"), ensure_ascii=False)
    assert annotation.split(":", 1)[1] != hashlib.sha256(plain.encode()).hexdigest()
    for listed in cluster.request("GET", f"/api/v1/namespaces/wg-{project}/configmaps")["items"]:
        text = json.dumps(listed)
        assert base64.b64encode(key).decode() not in text and key.hex() not in text
    managers = {e["manager"] for e in d["metadata"]["managedFields"]}
    assert {C.PROVISIONER_FIELD_MANAGER, C.REPLICAS_FIELD_MANAGER} <= managers

    before = resource_versions(cluster, objs)
    code, out, err = create(cluster, project, *args)
    assert code == 0, err
    assert f"0 created, 0 configured, {len(objs)} unchanged" in err
    assert resource_versions(cluster, objs) == before

    # A changed secret value changes the checksum (the app restarts); the key stays.
    secret.write_text(f"DB_PASSWORD='{SECRET_VALUE}-rotated'\n")
    code, out, err = create(cluster, project, *args)
    assert code == 0, err
    assert f"0 created, 2 configured, {len(objs) - 2} unchanged" in err
    assert f"configured: Secret/{project}-env" in err and f"configured: Deployment/{project}" in err
    assert checksum_key(cluster, project) == key
    changed = config_annotation(cluster, project)
    assert changed != annotation
    assert changed == config_checksum(dataclasses.replace(spec, secret=(("DB_PASSWORD", SECRET_VALUE + "-rotated"),)),
                                      key)


def test_an_unusable_checksum_key_is_replaced_with_a_warning(cluster: Cluster, project: str,
                                                             env_files: tuple[Path, Path]) -> None:
    with_env = ("--env-file", str(env_files[0]))
    code, _, err = create(cluster, project, *with_env)
    assert code == 0, err
    key, annotation = checksum_key(cluster, project), config_annotation(cluster, project)
    path = f"/api/v1/namespaces/wg-{project}/secrets/{CHECKSUM_KEY_SECRET}"
    cluster.request("PATCH", path, {"data": {CHECKSUM_KEY_FIELD: base64.b64encode(b"short").decode()}},
                    content_type="application/merge-patch+json")
    code, _, err = create(cluster, project, *with_env)
    assert code == 0, err
    assert f"Secret {CHECKSUM_KEY_SECRET} holds no usable config checksum key" in err
    new_key = checksum_key(cluster, project)
    assert len(new_key) == 32 and new_key != key
    assert config_annotation(cluster, project) not in (annotation, "")
    assert key.hex() not in err and base64.b64encode(new_key).decode() not in err


def test_replicas_belong_to_the_gateway_and_the_pod_becomes_ready(
        cluster: Cluster, project: str, env_files: tuple[Path, Path], tmp_path: Path) -> None:
    config, secret = env_files
    assert create(cluster, project, "--env-file", str(config), "--secret-env-file", str(secret))[0] == 0
    cluster.kubectl("scale", "-n", f"wg-{project}", f"deployment/{project}", "--replicas=1")
    pod = ready_pod(cluster, project)  # admitted under Pod Security "restricted", probe passes
    body = echo(pod)
    assert {"GREETING", "LOG_LEVEL", "DB_PASSWORD"} <= set(body["env"])
    # No service links: kubelet (here the node agent) names only the API server, as with every pod.
    assert pod["spec"]["enableServiceLinks"] is False
    assert [k for k in body["env"] if k.endswith("_SERVICE_HOST")] == ["KUBERNETES_SERVICE_HOST"]
    assert pod["spec"]["securityContext"]["runAsUser"] == 1000

    code, _, err = create(cluster, project, "--env-file", str(config), "--secret-env-file", str(secret))
    assert code == 0, err
    assert deployment(cluster, project)["spec"]["replicas"] == 1  # same input: still 1

    # New input updates in place (a config change rolls the pod) without touching the replica count.
    config.write_text("GREETING=hello\nLOG_LEVEL=debug\nNEW_SETTING=1\n")
    code, _, err = create(cluster, project, "--env-file", str(config), "--secret-env-file", str(secret))
    assert code == 0, err
    assert "Deployment/" + project in err and "ConfigMap/" + project + "-env" in err
    assert deployment(cluster, project)["spec"]["replicas"] == 1
    new_pod = ready_pod(cluster, project, check=lambda p: p["metadata"]["name"] != pod["metadata"]["name"])
    assert "NEW_SETTING" in echo(new_pod)["env"]

    cluster.kubectl("scale", "-n", f"wg-{project}", f"deployment/{project}", "--replicas=0")
    assert create(cluster, project, "--env-file", str(config), "--secret-env-file", str(secret))[0] == 0
    assert deployment(cluster, project)["spec"]["replicas"] == 0  # and never scales it up either


def test_a_full_quota_does_not_block_an_update(cluster: Cluster, project: str) -> None:
    assert create(cluster, project)[0] == 0
    cluster.kubectl("scale", "-n", f"wg-{project}", f"deployment/{project}", "--replicas=2")  # quota now full

    def two_ready(items: list[Obj]) -> bool | None:
        return True if sum(1 for p in items if is_ready(p)) == 2 else None

    cluster.watch_until(f"/api/v1/namespaces/wg-{project}/pods", two_ready, 90,
                        labelSelector=C.app_label_selector(project))
    code, _, err = create(cluster, project, "--idle-timeout", "60")
    assert code == 0, err
    assert "the quota has no room for another pod right now" in err
    assert deployment(cluster, project)["metadata"]["annotations"][C.IDLE_TIMEOUT_ANNOTATION] == "60"
    assert deployment(cluster, project)["spec"]["replicas"] == 2


def test_a_rerun_finishes_an_interrupted_create(cluster: Cluster, project: str) -> None:
    objs = render(ProjectSpec(name=project, image=ECHO))

    async def partial(kube: Kube) -> None:
        # As if the first run died right after creating the Deployment (before the replicas hand-over).
        for obj in objs:
            if obj["kind"] in ("Namespace", "ServiceAccount", "Deployment"):
                await kube.apply(obj)

    run_async(partial, cluster)
    d = deployment(cluster, project)
    owners = {e["manager"] for e in d["metadata"]["managedFields"]
              if "f:replicas" in (e.get("fieldsV1") or {}).get("f:spec", {})}
    assert owners == {C.PROVISIONER_FIELD_MANAGER}

    code, _, err = create(cluster, project)
    assert code == 0, err
    for obj in objs:
        assert get(cluster, object_path(obj)) is not None
    cluster.kubectl("scale", "-n", f"wg-{project}", f"deployment/{project}", "--replicas=1")
    assert create(cluster, project)[0] == 0
    assert deployment(cluster, project)["spec"]["replicas"] == 1


def test_update_prunes_what_is_no_longer_rendered(cluster: Cluster, project: str) -> None:
    assert create(cluster, project, "--allow-internet")[0] == 0
    path = f"/apis/networking.k8s.io/v1/namespaces/wg-{project}/networkpolicies/{INTERNET_EGRESS_POLICY}"
    assert get(cluster, path) is not None
    code, _, err = create(cluster, project, "--cpu-limit", "2")
    assert code == 0, err
    assert f"pruned (NetworkPolicy/{INTERNET_EGRESS_POLICY})" in err
    assert get(cluster, path) is None
    d = deployment(cluster, project)
    assert d["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"] == "2"
    quota = get(cluster, f"/api/v1/namespaces/wg-{project}/resourcequotas/wakegate-quota")
    assert quota is not None and quota["spec"]["hard"]["limits.cpu"] == "4"


# --- placement -----------------------------------------------------------------------------------


def test_placement_is_applied_strictly_and_a_rerun_changes_nothing(cluster: Cluster, project: str) -> None:
    spot = "kubernetes.azure.com/scalesetpriority"
    priority_class = f"{project}-agents"  # cluster-scoped: one per test run
    path = f"/apis/scheduling.k8s.io/v1/priorityclasses/{priority_class}"
    cluster.request("POST", "/apis/scheduling.k8s.io/v1/priorityclasses",
                    {"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
                     "metadata": {"name": priority_class}, "value": 1000, "preemptionPolicy": "Never"})
    try:
        args = ("--node-selector", f"{spot}=spot", "--toleration", f"{spot}=spot:NoSchedule",
                "--toleration", "dedicated:NoExecute", "--priority-class", priority_class)
        # fieldValidation=Strict on every apply, and the dry-run pod passes Pod Security, the Priority
        # admission plugin (the class exists) and the quota (it has no PriorityClass scopes).
        code, _, err = create(cluster, project, *args)
        assert code == 0, err
        assert "warning" not in err
        pod = deployment(cluster, project)["spec"]["template"]["spec"]
        assert pod["nodeSelector"] == {spot: "spot"}
        assert pod["tolerations"] == [
            {"key": "dedicated", "operator": "Exists", "effect": "NoExecute"},
            {"key": spot, "operator": "Equal", "value": "spot", "effect": "NoSchedule"},
        ]
        assert pod["priorityClassName"] == priority_class

        spec = ProjectSpec(name=project, image=ECHO, node_selector=((spot, "spot"),),
                           tolerations=(Toleration(spot, "NoSchedule", "spot"), Toleration("dedicated", "NoExecute")),
                           priority_class=priority_class)
        objs = render(spec)  # no environment values: no config checksum
        rendered = find(objs, "Deployment")["spec"]["template"]["spec"]
        for field in ("nodeSelector", "tolerations", "priorityClassName"):  # stored exactly as rendered
            assert pod[field] == rendered[field], field
        before = resource_versions(cluster, objs)
        code, _, err = create(cluster, project, *args)
        assert code == 0, err
        assert f"0 created, 0 configured, {len(objs)} unchanged" in err
        assert resource_versions(cluster, objs) == before

        # A class that does not exist is refused by the dry run, before anything changes.
        code, out, err = create(cluster, project, *args[:-1], "no-such-class")
        assert (code, out) == (2, "")
        assert err.count("\n") == 1 and "no PriorityClass with name no-such-class" in err
        assert resource_versions(cluster, objs) == before
    finally:
        with suppress(ApiStatusError):
            cluster.request("DELETE", path)


# --- the dry runs --------------------------------------------------------------------------------


def _tamper(objs: list[Obj]) -> list[Obj]:
    pod = find(objs, "Deployment")["spec"]["template"]["spec"]
    pod["securityContext"]["runAsUser"] = 0
    pod["securityContext"]["runAsNonRoot"] = False
    pod["containers"][0]["securityContext"].update(runAsUser=0, runAsNonRoot=False, privileged=True,
                                                   allowPrivilegeEscalation=True)
    return objs


def test_a_non_compliant_template_is_caught_and_nothing_is_applied(cluster: Cluster, project: str) -> None:
    objs = _tamper(render(ProjectSpec(name=project, image=ECHO)))
    with pytest.raises(ProvisionError) as info:
        run_async(lambda kube: create_project(kube, objs, wait_timeout_s=60), cluster)
    assert info.value.exit_code == 2
    message = str(info.value)
    assert "violates PodSecurity" in message and "restricted" in message and "privileged" in message
    assert "\n" not in message
    wait_gone(cluster, f"/api/v1/namespaces/wg-{project}")  # the namespace this run created is undone


def test_a_non_compliant_update_of_a_running_project_changes_nothing(cluster: Cluster, project: str) -> None:
    assert create(cluster, project)[0] == 0
    good = render(ProjectSpec(name=project, image=ECHO))
    before = resource_versions(cluster, good)
    # also raising the limits, so the current LimitRange refuses the pod too: Pod Security must still be named
    bad = _tamper(render(ProjectSpec(name=project, image=ECHO, port=8080, resources=Resources(cpu_limit="2"))))
    with pytest.raises(ProvisionError, match="violates PodSecurity") as info:
        run_async(lambda kube: create_project(kube, bad, wait_timeout_s=60), cluster)
    assert info.value.exit_code == 2
    assert resource_versions(cluster, good) == before


def test_dry_run_creates_nothing(cluster: Cluster, project: str) -> None:
    code, out, err = create(cluster, project, "--dry-run")
    assert code == 0, err
    assert out == "" and "dry run (nothing applied)" in err
    assert get(cluster, f"/api/v1/namespaces/wg-{project}") is None

    assert create(cluster, project)[0] == 0
    objs = render(ProjectSpec(name=project, image=ECHO))
    before = resource_versions(cluster, objs)
    code, out, err = create(cluster, project, "--dry-run", "--port", "8080", "--allow-internet")
    assert code == 0, err
    assert f"configured: Deployment/{project}" in err and f"created: NetworkPolicy/{INTERNET_EGRESS_POLICY}" in err
    assert resource_versions(cluster, objs) == before
    policy_path = f"/apis/networking.k8s.io/v1/namespaces/wg-{project}/networkpolicies/{INTERNET_EGRESS_POLICY}"
    assert get(cluster, policy_path) is None

    assert create(cluster, project, "--allow-internet")[0] == 0
    code, out, err = create(cluster, project, "--dry-run")
    assert code == 0, err
    assert f"1 pruned (NetworkPolicy/{INTERNET_EGRESS_POLICY})" in err
    assert get(cluster, policy_path) is not None


# --- bad input ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("extra", "message"), [
    (("--port", "0"), "--port 0 is outside 1-65535"),
    (("--cpu-request", "2", "--cpu-limit", "1"), "above its limit"),
    (("--memory-limit", "lots"), "cannot parse 'lots'"),
])
def test_bad_input_exits_2_and_applies_nothing(cluster: Cluster, project: str, extra: tuple[str, ...],
                                               message: str) -> None:
    code, out, err = create(cluster, project, *extra)
    assert (code, out) == (2, "")
    assert err.count("\n") == 1 and message in err
    assert get(cluster, f"/api/v1/namespaces/wg-{project}") is None


def test_secret_in_env_file_exits_2_and_applies_nothing(cluster: Cluster, project: str, tmp_path: Path) -> None:
    env = tmp_path / "app.env"
    env.write_text("GREETING=hi\nOPENAI_API_KEY=sk-abcdefghijklmnopqrstuvwxyz\n")
    code, _, err = create(cluster, project, "--env-file", str(env))
    assert code == 2 and "line 2: OPENAI_API_KEY looks like a secret" in err and "--secret-env-file" in err
    assert "sk-abc" not in err
    assert get(cluster, f"/api/v1/namespaces/wg-{project}") is None


def test_unmanaged_namespace_is_never_touched(cluster: Cluster, project: str) -> None:
    ns = f"wg-{project}"
    cluster.request("POST", "/api/v1/namespaces", {"metadata": {"name": ns, "labels": {"team": "x"}}})
    before = cluster.request("GET", f"/api/v1/namespaces/{ns}")
    code, _, err = create(cluster, project)
    assert code == 2 and f"namespace {ns} already exists and is not managed by wakegate" in err
    code, _, err = cli("delete", project, "--kubeconfig", str(cluster.kubeconfig))
    assert code == 2 and "refusing to delete" in err
    after = cluster.request("GET", f"/api/v1/namespaces/{ns}")
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    assert not after.get("metadata", {}).get("deletionTimestamp")


def test_terminating_namespace_is_refused_and_reported(cluster: Cluster, project: str) -> None:
    ns = f"wg-{project}"
    assert create(cluster, project)[0] == 0
    # A finalizer nobody removes keeps the namespace terminating.
    cluster.request("POST", f"/api/v1/namespaces/{ns}/configmaps",
                    {"metadata": {"name": "stuck", "finalizers": ["wakegate.test/hold"]}})
    code, _, err = cli("delete", project, "--wait", "--timeout", "8", "--kubeconfig", str(cluster.kubeconfig))
    assert code == 1
    assert f"namespace {ns} is still terminating" in err and "finalizers" in err.lower()
    code, _, err = create(cluster, project)
    assert code == 2 and "still terminating" in err
    cluster.request("PATCH", f"/api/v1/namespaces/{ns}/configmaps/stuck", {"metadata": {"finalizers": None}},
                    content_type="application/merge-patch+json")
    wait_gone(cluster, f"/api/v1/namespaces/{ns}")


# --- status, list, delete -----------------------------------------------------------------------------


def test_status_list_and_delete(cluster: Cluster, project: str) -> None:
    kube = ("--kubeconfig", str(cluster.kubeconfig))
    assert create(cluster, project, "--hold-timeout", "30", "--strategy", "page")[0] == 0
    cluster.kubectl("scale", "-n", f"wg-{project}", f"deployment/{project}", "--replicas=1")
    ready_pod(cluster, project)
    cluster.kubectl("annotate", "-n", f"wg-{project}", f"deployment/{project}",
                    f"{C.LAST_ACTIVITY_ANNOTATION}=2030-01-02T03:04:05Z")

    def endpoints_ready() -> Obj:
        for _ in range(100):
            code, out, err = cli("status", project, "-o", "json", *kube)
            assert code == 0, err
            st: Obj = json.loads(out)
            if st["endpoints"]["ready"] == 1:
                return st
            time.sleep(0.3)
        raise AssertionError(st)

    st = endpoints_ready()
    assert st["url"] == f"https://{project}.env.example.com/"
    assert st["replicas"]["wanted"] == 1 and st["replicas"]["ready"] == 1
    assert st["lastActivity"] == "2030-01-02T03:04:05Z"
    assert st["settings"] == {"idleTimeoutS": None, "holdTimeoutS": "30", "strategy": "page"}
    assert st["quota"]["pods"]["hard"] == "4"
    assert st["image"] == ECHO and st["pods"][0]["ready"] is True
    code, out, _ = cli("status", project, *kube)
    assert code == 0 and "wanted 1, ready 1" in out and "2030-01-02T03:04:05Z" in out

    code, out, _ = cli("list", *kube)
    assert code == 0
    (line,) = [row for row in out.splitlines() if row.startswith(project + " ")]
    assert f"wg-{project}" in line and "Active" in line
    code, out, _ = cli("list", "-o", "json", *kube)
    mine = [p for p in json.loads(out) if p["project"] == project]
    assert mine[0]["wanted"] == 1 and mine[0]["lastActivity"] == "2030-01-02T03:04:05Z"

    code, _, err = cli("delete", project, "--wait", *kube)
    assert code == 0, err
    assert f"namespace wg-{project} deleted" in err
    assert get(cluster, f"/api/v1/namespaces/wg-{project}") is None
    code, _, err = cli("status", project, *kube)
    assert code == 1 and "not found" in err
    code, _, err = cli("delete", project, *kube)
    assert code == 0 and "already deleted" in err
    code, out, _ = cli("list", *kube)
    assert project not in out


def test_storage_survives_and_keep_data(cluster: Cluster, project: str) -> None:
    ns = f"wg-{project}"
    code, _, err = create(cluster, project, "--storage", "1Gi", "--storage-path", "/data",
                          "--storage-class", "manual")
    assert code == 0, err
    claim = get(cluster, f"/api/v1/namespaces/{ns}/persistentvolumeclaims/{project}-data")
    assert claim is not None and claim["spec"]["resources"]["requests"]["storage"] == "1Gi"
    # No provisioner here: a pre-made volume the PV controller binds to the claim.
    pv_name = f"pv-{project}"
    cluster.request("POST", "/api/v1/persistentvolumes", {
        "metadata": {"name": pv_name},
        "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"], "storageClassName": "manual",
                 "persistentVolumeReclaimPolicy": "Delete", "hostPath": {"path": f"/tmp/{pv_name}"},
                 "claimRef": {"namespace": ns, "name": f"{project}-data"}}})
    try:
        cluster.watch_until(f"/api/v1/namespaces/{ns}/persistentvolumeclaims",
                            lambda items: True if items and items[0].get("status", {}).get("phase") == "Bound"
                            else None, timeout=60)
        cluster.kubectl("scale", "-n", ns, f"deployment/{project}", "--replicas=1")
        ready_pod(cluster, project)
        cluster.kubectl("scale", "-n", ns, f"deployment/{project}", "--replicas=0")
        assert get(cluster, f"/api/v1/namespaces/{ns}/persistentvolumeclaims/{project}-data") is not None

        code, _, err = cli("delete", project, "--wait", "--keep-data", "--kubeconfig", str(cluster.kubeconfig))
        assert code == 0, err
        assert f"kept PersistentVolume {pv_name}" in err
        pv = get(cluster, f"/api/v1/persistentvolumes/{pv_name}")
        assert pv is not None
        assert pv["spec"]["persistentVolumeReclaimPolicy"] == "Retain"
        assert pv["metadata"]["labels"][C.PROJECT_LABEL] == project
    finally:
        with suppress(ApiStatusError):
            cluster.request("DELETE", f"/api/v1/persistentvolumes/{pv_name}")


# --- RBAC ---------------------------------------------------------------------------------------------


def _can(cluster: Cluster, kubeconfig: Path, *args: str) -> bool:
    proc = cluster.kubectl("auth", "can-i", *args, check=False, kubeconfig=kubeconfig)
    return proc.stdout.strip() == "yes"


def test_automation_and_gateway_accounts_get_exactly_their_roles(cluster: Cluster, project: str) -> None:
    ns = f"wg-{project}"
    assert create(cluster, project)[0] == 0
    bot = cluster.serviceaccount_kubeconfig(ns, f"{project}-bot")
    for verb, resource in (("create", "deployments"), ("patch", "deployments"), ("delete", "pods"),
                           ("get", "secrets"), ("create", "configmaps"), ("create", "ingresses.networking.k8s.io")):
        assert _can(cluster, bot, verb, resource, "-n", ns), (verb, resource)
    assert _can(cluster, bot, "get", "pods", "--subresource=log", "-n", ns)
    for verb, resource, where in (("create", "rolebindings", ns), ("create", "roles", ns), ("escalate", "roles", ns),
                                  ("bind", "roles", ns), ("delete", "resourcequotas", ns),
                                  ("delete", "limitranges", ns), ("delete", "networkpolicies", ns),
                                  ("create", "serviceaccounts", ns), ("get", "pods", "default"),
                                  ("get", "namespaces", ""), ("create", "pods", "kube-system")):
        scope = ("-n", where) if where else ()
        assert not _can(cluster, bot, verb, resource, *scope), (verb, resource, where)
    assert not _can(cluster, bot, "create", "serviceaccounts", "--subresource=token", "-n", ns)
    assert not _can(cluster, bot, "create", "pods", "--subresource=exec", "-n", ns)

    gw_ns = C.DEFAULT_GATEWAY_NAMESPACE
    if get(cluster, f"/api/v1/namespaces/{gw_ns}") is None:
        cluster.request("POST", "/api/v1/namespaces", {"metadata": {"name": gw_ns}})
    if get(cluster, f"/api/v1/namespaces/{gw_ns}/serviceaccounts/{C.GATEWAY_SERVICEACCOUNT}") is None:
        cluster.request("POST", f"/api/v1/namespaces/{gw_ns}/serviceaccounts",
                        {"metadata": {"name": C.GATEWAY_SERVICEACCOUNT}})
    gateway = cluster.serviceaccount_kubeconfig(gw_ns, C.GATEWAY_SERVICEACCOUNT)
    # Here the gateway only writes, and only its project's Deployment; it reads through the ClusterRole
    # of manifests/ (tested with the backend).
    for args in (("patch", f"deployments/{project}"), ("patch", f"deployments/{project}", "--subresource=scale")):
        assert _can(cluster, gateway, *args, "-n", ns), args
    for args in (("patch", "deployments/other"), ("patch", "deployments/other", "--subresource=scale"),
                 ("update", f"deployments/{project}"), ("get", "secrets"), ("create", "pods"),
                 ("delete", f"deployments/{project}"), ("get", "configmaps")):
        assert not _can(cluster, gateway, *args, "-n", ns), args

    # and the bot's own token actually works against the API for what it may do
    proc = cluster.kubectl("get", "deployments", "-n", ns, "-o", "name", kubeconfig=bot)
    assert proc.stdout.strip() == f"deployment.apps/{project}"


def test_report_counts_are_consistent(cluster: Cluster, project: str) -> None:
    objs = render(ProjectSpec(name=project, image=ECHO))
    report: ApplyReport = run_async(lambda kube: create_project(kube, objs, wait_timeout_s=60), cluster)
    assert len(report.created) == len(objs) and not report.configured and not report.pruned
    again: ApplyReport = run_async(lambda kube: create_project(kube, objs, wait_timeout_s=60), cluster)
    assert len(again.unchanged) == len(objs) and not again.created and not again.configured
