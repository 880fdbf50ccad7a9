"""The Project controller on the real control plane, with its own ServiceAccount's token.

Each test runs ``wakegate controller`` as a child process (Lease ``wakegate-controller``, a graceful
stop hands it to the next test's controller at once) and, where requests matter, a gateway replica
with the gateway's ServiceAccount (:mod:`tests.backends.test_kubernetes`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Generator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway import contract as C
from provisioner import apply as papply
from provisioner.apply import object_path
from provisioner.project_resource import from_resource
from provisioner.render import render
from provisioner.spec import ProjectSpec
from tests.backends.test_kubernetes import gateway, get
from tests.cluster import project_crd
from tests.cluster.controlplane import Cluster
from tests.ops_support import WakegateProcess
from tests.provisioner.test_apply_cluster import cli
from tests.provisioner.test_apply_cluster import get as fetch

pytestmark = pytest.mark.cluster

Obj = dict[str, Any]
ROOT = Path(__file__).resolve().parents[2]
ECHO = "wakegate.test/echo:1"
DOMAIN = "env.test"
PROJECTS = f"/apis/{C.PROJECT_API_VERSION}/{C.PROJECT_PLURAL}"
INSTALL_KINDS = {"Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding",
                 "CustomResourceDefinition", "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"}
WAIT_S = 90.0


# --- fixtures and helpers --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kubeconfigs(cluster: Cluster) -> Generator[tuple[Path, Path], None, None]:
    """Install the CRD and RBAC of ``manifests/``; (gateway's, controller's) ServiceAccount kubeconfigs.
    The CRD is removed afterwards."""
    rendered = [d for d in yaml.safe_load_all(cluster.kubectl("kustomize", str(ROOT / "manifests")).stdout) if d]
    objs = [o for o in rendered if o["kind"] in INSTALL_KINDS]
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "--field-manager=wakegate-test", "-f", "-",
                    input=yaml.safe_dump_all(objs))
    cluster.kubectl("wait", "--for=condition=Established", f"crd/{C.PROJECT_CRD}", "--timeout=60s")
    yield (cluster.serviceaccount_kubeconfig(C.DEFAULT_GATEWAY_NAMESPACE, C.GATEWAY_SERVICEACCOUNT),
           cluster.serviceaccount_kubeconfig(C.DEFAULT_GATEWAY_NAMESPACE, C.CONTROLLER_SERVICEACCOUNT))
    project_crd.remove(cluster)


class Controller:
    """A ``wakegate controller`` child process and its metrics."""

    def __init__(self, proc: WakegateProcess, port: int) -> None:
        self.proc = proc
        self.port = port

    def metric(self, name: str, **labels: str) -> float:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=10) as resp:
            text = resp.read().decode()
        want = ",".join(f'{k}="{v}"' for k, v in labels.items())
        pattern = re.escape(name) + (r"\{" + re.escape(want) + r"\}" if want else "") + r" ([0-9.e+]+)"
        m = re.search(pattern, text)
        return float(m.group(1)) if m else 0.0

    async def wait_event(self, predicate: Callable[[dict[str, Any]], bool], timeout_s: float = WAIT_S
                         ) -> dict[str, Any]:
        return await self.proc.wait_event(predicate, timeout_s)


async def start_controller(kubeconfig: Path, *flags: str, replica: str = "ctl-a") -> Controller:
    proc, started = await WakegateProcess.launch(
        ("controller", "--kubeconfig", str(kubeconfig), "--domain", DOMAIN, "--url-scheme", "http",
         "--listen", "127.0.0.1:0", "--leader-lease", "3", "--replica-id", replica, "--log-format", "json",
         *flags), lambda e: e.get("event") == "controller_started",
        drop_env=("KUBERNETES_SERVICE_HOST", "POD_NAME"), timeout_s=60)
    return Controller(proc, int(started["port"]))


@contextlib.asynccontextmanager
async def controller(kubeconfig: Path, *flags: str, replica: str = "ctl-a") -> AsyncIterator[Controller]:
    """A controller for the test's duration; it holds the Lease when this yields."""
    ctl = await start_controller(kubeconfig, *flags, replica=replica)
    try:
        await ctl.wait_event(lambda e: e.get("event") == "leader_acquired")
        yield ctl
    except BaseException:
        print(f"--- controller {replica} output:\n{ctl.proc.text()[-6000:]}")
        raise
    finally:
        if ctl.proc.proc.returncode is None:  # a graceful stop hands the Lease over
            ctl.proc.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await ctl.proc.wait_exit(30)
        await ctl.proc.kill()


def project_obj(name: str, **spec: Any) -> Obj:
    return {"apiVersion": C.PROJECT_API_VERSION, "kind": C.PROJECT_KIND, "metadata": {"name": name},
            "spec": {"image": ECHO, **spec}}


def apply(cluster: Cluster, obj: Obj) -> None:
    """``kubectl apply --server-side`` as the platform would (its own field manager)."""
    cluster.kubectl("apply", "--server-side", "--field-manager=platform", "-f", "-", input=json.dumps(obj))


def phase(obj: Obj) -> str | None:
    value = (obj.get("status") or {}).get("phase")
    return None if value is None else str(value)


def condition(obj: Obj, kind: str) -> Obj:
    found: Obj = next(c for c in obj["status"]["conditions"] if c["type"] == kind)
    return found


async def wait_project(cluster: Cluster, name: str, predicate: Callable[[Obj], bool],
                       timeout_s: float = WAIT_S) -> Obj:
    """The Project once ``predicate`` holds for it (watched, bounded)."""
    def found(items: list[Obj]) -> Obj | None:
        return next((i for i in items if i["metadata"]["name"] == name and predicate(i)), None)

    result: Obj = await asyncio.to_thread(cluster.watch_until, PROJECTS, found, timeout_s,
                                          fieldSelector=f"metadata.name={name}")
    return result


async def wait_phase(cluster: Cluster, name: str, wanted: str, timeout_s: float = WAIT_S) -> Obj:
    return await wait_project(cluster, name, lambda p: phase(p) == wanted
                              and (p.get("status") or {}).get("observedGeneration") == p["metadata"]["generation"],
                              timeout_s)


async def wait_replicas(cluster: Cluster, name: str, wanted: int, timeout_s: float = WAIT_S) -> Obj:
    def found(items: list[Obj]) -> Obj | None:
        return next((d for d in items if d["metadata"]["name"] == name
                     and d["spec"].get("replicas") == wanted), None)

    result: Obj = await asyncio.to_thread(cluster.watch_until, f"/apis/apps/v1/namespaces/wg-{name}/deployments",
                                          found, timeout_s)
    return result


def deployment(cluster: Cluster, name: str) -> Obj:
    d = fetch(cluster, f"/apis/apps/v1/namespaces/wg-{name}/deployments/{name}")
    assert d is not None
    return d


def rendered_for(cluster: Cluster, name: str) -> list[Obj]:
    """The objects the CLI would render for the Project as the API server stored it."""
    obj = fetch(cluster, f"{PROJECTS}/{name}")
    assert obj is not None
    return render(from_resource(obj).spec)


def resource_versions(cluster: Cluster, name: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for obj in rendered_for(cluster, name):
        current = fetch(cluster, object_path(obj))
        assert current is not None, f"{obj['kind']}/{obj['metadata']['name']} is missing"
        out[f"{obj['kind']}/{obj['metadata']['name']}"] = current["metadata"]["resourceVersion"]
    project = fetch(cluster, f"{PROJECTS}/{name}")
    assert project is not None
    out["Project"] = project["metadata"]["resourceVersion"]
    return out


async def wait_gone(cluster: Cluster, path: str, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while fetch(cluster, path) is not None:
        assert time.monotonic() < deadline, f"{path} still exists after {timeout_s:g}s"
        await asyncio.sleep(0.5)


# --- RBAC ------------------------------------------------------------------------------------------


def test_the_controller_serviceaccount_may_do_what_it_needs_only(cluster: Cluster,
                                                                 kubeconfigs: tuple[Path, Path]) -> None:
    sa = f"system:serviceaccount:{C.DEFAULT_GATEWAY_NAMESPACE}:{C.CONTROLLER_SERVICEACCOUNT}"

    def can(*args: str) -> bool:
        out = cluster.kubectl("auth", "can-i", *args, f"--as={sa}", check=False)
        return out.stdout.strip() == "yes"

    assert can("patch", "projects.wakegate.io/x", "--subresource=status")
    assert can("create", "namespaces")
    assert can("patch", "deployments", "-n", "wg-any")
    assert can("bind", f"clusterroles.rbac.authorization.k8s.io/{C.AUTOMATION_CLUSTERROLE}")
    assert can("update", f"leases.coordination.k8s.io/{C.CONTROLLER_LEASE}", "-n", C.DEFAULT_GATEWAY_NAMESPACE)
    # never secrets or configmaps (a Project only references them), pods, exec, or other roles to bind
    assert not can("get", "secrets", "-n", "wg-any")
    assert not can("list", "configmaps", "-n", "wg-any")
    assert not can("create", "pods", "-n", "wg-any")
    assert not can("create", "pods/exec", "-n", "wg-any")
    assert not can("bind", "clusterroles.rbac.authorization.k8s.io/cluster-admin")
    assert not can("escalate", "roles", "-n", "wg-any")
    assert not can("update", "leases.coordination.k8s.io/wakegate-reaper", "-n", C.DEFAULT_GATEWAY_NAMESPACE)
    assert not can("delete", "customresourcedefinitions")


async def test_the_controller_cannot_write_outside_managed_namespaces(cluster: Cluster,
                                                                     kubeconfigs: tuple[Path, Path]) -> None:
    """RBAC lets it create RoleBindings anywhere and bind the automation ClusterRole; the admission
    policy wakegate-controller-scope keeps both to namespaces wakegate made."""
    _, ctl_kc = kubeconfigs
    grant = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
             "metadata": {"name": "escalate", "namespace": "kube-system"},
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                         "name": C.AUTOMATION_CLUSTERROLE},
             "subjects": [{"kind": "ServiceAccount", "name": C.CONTROLLER_SERVICEACCOUNT,
                           "namespace": C.DEFAULT_GATEWAY_NAMESPACE}]}
    attempts = [  # server-side dry runs: admission runs, nothing is stored
        (("create", "-f", "-"), json.dumps(grant)),
        (("label", "namespace", "kube-system", f"{C.MANAGED_BY_LABEL}={C.MANAGED_BY}"), None),
        (("create", "namespace", "not-wakegates"), None),
    ]
    deadline = time.monotonic() + WAIT_S  # a new policy takes a moment to be enforced
    for args, body in attempts:
        while True:
            out = cluster.kubectl(*args, "--dry-run=server", kubeconfig=ctl_kc, input=body, check=False)
            if out.returncode != 0:
                assert "wakegate-controller-scope" in out.stderr, out.stderr
                break
            assert time.monotonic() < deadline, f"{args} was allowed: {out.stdout}"
            await asyncio.sleep(0.5)
    # a managed namespace is fine (what every other test here does through the controller)
    ns = {"apiVersion": "v1", "kind": "Namespace",
          "metadata": {"name": "wg-cr-policy", "labels": {C.MANAGED_BY_LABEL: C.MANAGED_BY}}}
    out = cluster.kubectl("create", "-f", "-", kubeconfig=ctl_kc, input=json.dumps(ns), check=False)
    assert out.returncode == 0, out.stderr
    cluster.kubectl("delete", "namespace", "wg-cr-policy", "--wait=false")


# --- the lifecycle through the gateway -------------------------------------------------------------


async def test_a_project_is_provisioned_then_woken_by_requests_and_put_to_sleep(
        cluster: Cluster, kubeconfigs: tuple[Path, Path]) -> None:
    gw_kc, ctl_kc = kubeconfigs
    async with controller(ctl_kc):
        apply(cluster, project_obj("cr-life", idleTimeout="2s"))
        sleeping = await wait_phase(cluster, "cr-life", "Sleeping")
        assert sleeping["status"]["url"] == f"http://cr-life.{DOMAIN}/"
        assert sleeping["status"]["namespace"] == "wg-cr-life"
        assert condition(sleeping, "Provisioned")["status"] == "True"
        assert condition(sleeping, "Ready")["status"] == "False"
        assert C.PROJECT_FINALIZER in sleeping["metadata"]["finalizers"]
        # every object the CLI renders for this spec exists, and kubectl shows the columns
        resource_versions(cluster, "cr-life")
        table = cluster.kubectl("get", "projects", "cr-life").stdout
        assert re.search(r"NAME\s+PHASE\s+URL\s+LAST-ACTIVITY\s+AGE", table), table
        assert re.search(rf"cr-life\s+Sleeping\s+http://cr-life\.{re.escape(DOMAIN)}/", table), table

        async with gateway(gw_kc, "--idle-timeout", "2s") as gw:
            status, body = await get(gw, "cr-life")
            assert status == 200, body
            running = await wait_phase(cluster, "cr-life", "Running")
            assert condition(running, "Ready")["status"] == "True"
            slept = await wait_phase(cluster, "cr-life", "Sleeping")
        assert slept["status"]["lastActivityTime"].endswith("Z")
        # a transition, not a write per request: Provisioned kept its time through wake and sleep
        assert condition(slept, "Provisioned")["lastTransitionTime"] == condition(
            sleeping, "Provisioned")["lastTransitionTime"]


async def test_suspended_refuses_requests_and_is_never_woken(cluster: Cluster,
                                                             kubeconfigs: tuple[Path, Path]) -> None:
    gw_kc, ctl_kc = kubeconfigs
    async with controller(ctl_kc), gateway(gw_kc) as gw:
        apply(cluster, project_obj("cr-susp", mode="Suspended"))
        suspended = await wait_phase(cluster, "cr-susp", "Suspended")
        assert condition(suspended, "Ready")["reason"] == "Suspended"
        await gw.wait_event(lambda e: e.get("event") == "project_mode" and e.get("project") == "cr-susp", WAIT_S)
        status, body = await get(gw, "cr-susp")
        assert status == 503 and "suspended" in body
        assert deployment(cluster, "cr-susp")["spec"]["replicas"] == 0
        # resumed: the next request wakes it
        apply(cluster, project_obj("cr-susp", mode="Auto"))
        await wait_phase(cluster, "cr-susp", "Sleeping")
        await gw.wait_event(lambda e: e.get("event") == "project_mode" and e.get("project") == "cr-susp"
                            and e.get("mode") == "Auto", WAIT_S)
        status, _ = await get(gw, "cr-susp")
        assert status == 200
        await wait_phase(cluster, "cr-susp", "Running")


async def test_running_is_woken_without_a_request_and_not_reaped_until_auto(
        cluster: Cluster, kubeconfigs: tuple[Path, Path]) -> None:
    gw_kc, ctl_kc = kubeconfigs
    async with controller(ctl_kc), gateway(gw_kc, "--idle-timeout", "2s") as gw:
        apply(cluster, project_obj("cr-run", mode="Running"))
        apply(cluster, project_obj("cr-run-aux"))
        await wait_phase(cluster, "cr-run", "Running")
        # The reaper puts the Auto project beside it to sleep: it ran, and left cr-run up.
        await wait_phase(cluster, "cr-run-aux", "Sleeping")
        status, _ = await get(gw, "cr-run-aux")
        assert status == 200
        await gw.wait_event(lambda e: e.get("event") == "sleep" and e.get("project") == "cr-run-aux", WAIT_S)
        assert deployment(cluster, "cr-run")["spec"]["replicas"] == 1
        assert not [e for e in gw.events("sleep") if e.get("project") == "cr-run"]
        apply(cluster, project_obj("cr-run", mode="Auto"))
        await wait_replicas(cluster, "cr-run", 0)
        await wait_phase(cluster, "cr-run", "Sleeping")


async def test_a_keep_warm_window_wakes_it_at_its_start_and_releases_it_at_its_end(
        cluster: Cluster, kubeconfigs: tuple[Path, Path]) -> None:
    gw_kc, ctl_kc = kubeconfigs
    now = datetime.now(UTC)
    start = (now + timedelta(minutes=1 if now.second < 40 else 2)).replace(second=0, microsecond=0)
    end = start + timedelta(minutes=1)
    window = {"days": [start.strftime("%a")], "start": start.strftime("%H:%M"),
              "end": "24:00" if end.day != start.day else end.strftime("%H:%M"), "timeZone": "UTC"}
    async with controller(ctl_kc), gateway(gw_kc, "--idle-timeout", "1s"):
        apply(cluster, project_obj("cr-warm", keepWarm=[window]))
        await wait_phase(cluster, "cr-warm", "Sleeping")
        assert datetime.now(UTC) < start, "the setup outlasted the time before the window; nothing was tested"
        before_start_s = (start - datetime.now(UTC)).total_seconds()
        running = await wait_phase(cluster, "cr-warm", "Running", timeout_s=before_start_s + WAIT_S)
        woken_at = datetime.now(UTC)
        assert woken_at >= start  # woken by the window, not before it
        assert running["status"]["keepWarmUntil"] == end.strftime("%Y-%m-%dT%H:%M:%SZ")
        await wait_replicas(cluster, "cr-warm", 0, timeout_s=(end - datetime.now(UTC)).total_seconds() + WAIT_S)
        assert datetime.now(UTC) >= end  # never reaped while the window was open (idle timeout 1 s)
        slept = await wait_phase(cluster, "cr-warm", "Sleeping")
        assert "keepWarmUntil" not in slept["status"]


async def test_a_failing_image_is_failed_with_the_reason(cluster: Cluster, kubeconfigs: tuple[Path, Path]) -> None:
    gw_kc, ctl_kc = kubeconfigs
    async with controller(ctl_kc), gateway(gw_kc):
        apply(cluster, project_obj("cr-fail", image="wakegate.test/missing:1", mode="Running"))
        failed = await wait_phase(cluster, "cr-fail", "Failed")
        cause = condition(failed, "Failed")
        assert cause["status"] == "True"
        assert cause["reason"] in ("ErrImagePull", "ImagePullBackOff")
        assert "wakegate.test/missing:1" in cause["message"]
        assert condition(failed, "Ready")["status"] == "False"


async def test_a_spec_only_the_controller_can_judge_is_failed_and_nothing_is_applied(
        cluster: Cluster, kubeconfigs: tuple[Path, Path]) -> None:
    _, ctl_kc = kubeconfigs
    async with controller(ctl_kc):
        apply(cluster, project_obj("cr-bad", keepWarm=[{"days": ["Mon"], "start": "08:00", "end": "18:00",
                                                        "timeZone": "Mars/Olympus_Mons"}]))
        failed = await wait_phase(cluster, "cr-bad", "Failed")
        cause = condition(failed, "Failed")
        assert cause["reason"] == "InvalidSpec" and "spec.keepWarm[0].timeZone" in cause["message"]
        assert condition(failed, "Provisioned")["status"] == "False"
        assert fetch(cluster, "/api/v1/namespaces/wg-cr-bad") is None
        # fixed: provisioned
        apply(cluster, project_obj("cr-bad"))
        await wait_phase(cluster, "cr-bad", "Sleeping")


# --- deletion, takeover, idempotence, adoption -----------------------------------------------------


async def test_deleting_a_project_deletes_its_namespace(cluster: Cluster, kubeconfigs: tuple[Path, Path]) -> None:
    _, ctl_kc = kubeconfigs
    async with controller(ctl_kc):
        apply(cluster, project_obj("cr-del"))
        await wait_phase(cluster, "cr-del", "Sleeping")
        cluster.kubectl("delete", "project", "cr-del", "--wait=false")
        await wait_gone(cluster, f"{PROJECTS}/cr-del")
    assert fetch(cluster, "/api/v1/namespaces/wg-cr-del") is None


async def test_a_controller_killed_mid_reconcile_is_finished_by_the_next(
        cluster: Cluster, kubeconfigs: tuple[Path, Path]) -> None:
    _, ctl_kc = kubeconfigs
    first = await start_controller(ctl_kc, replica="ctl-killed")
    try:
        await first.wait_event(lambda e: e.get("event") == "leader_acquired")
        apply(cluster, project_obj("cr-kill", allowInternet=True, storage={"size": "1Gi", "path": "/data"}))
        # killed as soon as it started writing the project's objects
        await asyncio.to_thread(cluster.watch_until, "/api/v1/namespaces",
                                lambda items: True if any(n["metadata"]["name"] == "wg-cr-kill" for n in items)
                                else None, WAIT_S)
    finally:
        await first.proc.kill()
    async with controller(ctl_kc, replica="ctl-next"):
        await wait_phase(cluster, "cr-kill", "Sleeping")
        resource_versions(cluster, "cr-kill")  # every object exists


async def test_reapplying_an_unchanged_project_writes_nothing(cluster: Cluster,
                                                              kubeconfigs: tuple[Path, Path]) -> None:
    _, ctl_kc = kubeconfigs
    obj = project_obj("cr-same", idleTimeout="10m", resources={"limits": {"cpu": "2"}})
    async with controller(ctl_kc):
        apply(cluster, obj)
        await wait_phase(cluster, "cr-same", "Sleeping")
    before = resource_versions(cluster, "cr-same")
    apply(cluster, obj)  # a GitOps tool's periodic apply
    # A new controller re-applies every object of every Project once: no write may come of it.
    async with controller(ctl_kc, replica="ctl-fresh") as ctl:
        await ctl.wait_event(lambda e: e.get("event") == "leader_acquired")
        deadline = time.monotonic() + WAIT_S
        while ctl.metric("wakegate_controller_reconciles_total", result="ok") < 1:  # applied, status judged
            assert time.monotonic() < deadline, "the new controller reconciled nothing"
            await asyncio.sleep(0.2)
        assert ctl.metric("wakegate_controller_applies_total") >= 1
        assert resource_versions(cluster, "cr-same") == before
        assert ctl.metric("wakegate_controller_status_writes_total") == 0


async def test_a_project_made_by_the_cli_is_adopted_without_being_recreated(
        cluster: Cluster, kubeconfigs: tuple[Path, Path]) -> None:
    _, ctl_kc = kubeconfigs
    # as `wakegate project create --env-file` made it before the CRD was installed
    spec = ProjectSpec(name="cr-adopt", image=ECHO, config=(("GREETING", "hello"),))
    api = await papply.connect(cluster.kubeconfig)
    try:
        await papply.create_from_spec(papply.Kube(api), spec, wait_timeout_s=60)
    finally:
        await api.close()
    apply(cluster, project_obj("cr-adopt", env={"configMapRef": {"name": "cr-adopt-env"}}))
    ns_uid = fetch(cluster, "/api/v1/namespaces/wg-cr-adopt")["metadata"]["uid"]  # type: ignore[index]
    dep_uid = deployment(cluster, "cr-adopt")["metadata"]["uid"]
    async with controller(ctl_kc):
        await wait_phase(cluster, "cr-adopt", "Sleeping")
    assert fetch(cluster, "/api/v1/namespaces/wg-cr-adopt")["metadata"]["uid"] == ns_uid  # type: ignore[index]
    assert deployment(cluster, "cr-adopt")["metadata"]["uid"] == dep_uid
    assert deployment(cluster, "cr-adopt")["spec"]["template"]["spec"]["containers"][0]["envFrom"] == [
        {"configMapRef": {"name": "cr-adopt-env"}}]
    cm = fetch(cluster, "/api/v1/namespaces/wg-cr-adopt/configmaps/cr-adopt-env")
    assert cm is not None and cm["data"] == {"GREETING": "hello"}


# --- the CLI on a cluster with the CRD -------------------------------------------------------------


async def test_the_cli_writes_a_project_and_its_environment_when_the_crd_is_installed(
        cluster: Cluster, kubeconfigs: tuple[Path, Path], tmp_path: Path) -> None:
    _, ctl_kc = kubeconfigs
    secret_value = "hunter2-not-in-the-project"
    (tmp_path / "app.env").write_text("GREETING=hello\n")
    (tmp_path / "secret.env").write_text(f"DB_PASSWORD={secret_value}\n")
    common = ("--kubeconfig", str(cluster.kubeconfig), "--domain", DOMAIN, "--url-scheme", "http")
    async with controller(ctl_kc):
        code, out, err = await asyncio.to_thread(
            cli, "create", "cr-cli", "--image", ECHO, "--env-file", str(tmp_path / "app.env"),
            "--secret-env-file", str(tmp_path / "secret.env"), "--timeout", "90", *common)
        assert code == 0, err
        assert out.strip() == f"http://cr-cli.{DOMAIN}/"
        project = fetch(cluster, f"{PROJECTS}/cr-cli")
        assert project is not None and secret_value not in json.dumps(project)
        assert project["spec"]["env"] == {"configMapRef": {"name": "cr-cli-env"}, "secretRef": {"name": "cr-cli-env"}}
        cm = fetch(cluster, "/api/v1/namespaces/wg-cr-cli/configmaps/cr-cli-env")
        assert cm is not None and cm["data"] == {"GREETING": "hello"}
        assert fetch(cluster, "/api/v1/namespaces/wg-cr-cli/secrets/cr-cli-env") is not None

        code, out, err = await asyncio.to_thread(cli, "status", "cr-cli", "-o", "json", *common)
        assert code == 0, err
        assert json.loads(out)["resource"]["phase"] == "Sleeping"
        code, out, err = await asyncio.to_thread(cli, "list", *common)
        assert code == 0 and re.search(r"^cr-cli\s+wg-cr-cli\s+Sleeping", out, re.M), out

        code, _, err = await asyncio.to_thread(cli, "delete", "cr-cli", "--wait", "--timeout", "90", *common)
        assert code == 0, err
        assert fetch(cluster, f"{PROJECTS}/cr-cli") is None
        assert fetch(cluster, "/api/v1/namespaces/wg-cr-cli") is None
