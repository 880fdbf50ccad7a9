"""The Kubernetes backend against the real control plane (``tests/cluster``).

The gateway runs as ``wakegate serve --backend kubernetes`` child processes authenticated with the
token of the ServiceAccount that ``manifests/`` creates, bound by the RBAC objects rendered from
``manifests/`` (and the per-project Role the provisioner writes) — so every scenario also proves that
RBAC is sufficient. Projects are provisioned with the real provisioner; pods run in the node agent's
network namespaces and the gateway reaches their pod IPs directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import re
import signal
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
import yaml

from gateway import contract as C
from gateway.backends.base import ProjectInfo
from gateway.backends.k8s import objects as obj
from gateway.backends.k8s.api import Informer, Kube
from gateway.backends.kubernetes import KubernetesBackend, make_api_client
from gateway.config import Settings
from provisioner import apply as papply
from provisioner.render import render
from provisioner.spec import ProjectSpec
from tests.cluster import gateway_peers as peers
from tests.cluster.controlplane import Cluster
from tests.ops_support import GatewayProcess

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
RBAC_KINDS = {"Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}
ECHO = "wakegate.test/echo:1"
T = TypeVar("T")
ADMIN_TOKEN = "test-admin-" + os.urandom(8).hex()


# --- fixtures and helpers --------------------------------------------------------------------------


def rendered_manifests(cluster: Cluster) -> list[dict[str, Any]]:
    out = cluster.kubectl("kustomize", str(ROOT / "manifests"))
    return [d for d in yaml.safe_load_all(out.stdout) if d]


@pytest.fixture(scope="module")
def sa_kubeconfig(cluster: Cluster) -> Path:
    """Install the RBAC part of ``manifests/`` and return a kubeconfig with the gateway SA's token."""
    objs = [o for o in rendered_manifests(cluster) if o["kind"] in RBAC_KINDS]
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "--field-manager=wakegate-test", "-f", "-",
                    input=yaml.safe_dump_all(objs))
    return cluster.serviceaccount_kubeconfig(C.DEFAULT_GATEWAY_NAMESPACE, C.GATEWAY_SERVICEACCOUNT)


async def provision(cluster: Cluster, name: str, image: str = ECHO, **spec: Any) -> str:
    """Create project ``name`` with the real provisioner (as admin); returns its namespace."""
    project = ProjectSpec(name=name, image=image, **spec)
    api = await papply.connect(cluster.kubeconfig)
    try:
        await papply.create_project(papply.Kube(api), render(project), wait_timeout_s=60)
    finally:
        await api.close()
    return project.namespace


async def start_gateway(kubeconfig: Path, *flags: str, replica: str = "gw-a") -> GatewayProcess:
    """A replica as ops run it: admin API on every interface with the token (the other replicas
    pull its activity there), peers found in the ``wakegate-peers`` Service's EndpointSlices."""
    token = kubeconfig.parent / "admin-token"
    token.write_text(ADMIN_TOKEN)
    return await GatewayProcess.spawn(
        "--backend", "kubernetes", "--kubeconfig", str(kubeconfig), "--replica-id", replica,
        "--reap-interval", "0.5", "--leader-lease", "3", "--activity-pull-interval", "0.5", "--hold-timeout", "90",
        "--admin-listen", "0.0.0.0:0", "--admin-token-file", str(token), "--peer-service", peers.PEER_SERVICE,
        *flags, drop_env=("KUBERNETES_SERVICE_HOST", "POD_NAME", "POD_IP"), timeout_s=60)


@contextlib.asynccontextmanager
async def gateway(kubeconfig: Path, *flags: str, replica: str = "gw-a",
                  listed_in: Cluster | None = None) -> AsyncIterator[GatewayProcess]:
    """A replica for the test's duration; ``listed_in``: also listed as an endpoint of the gateway
    Service there (as its pod would be), so that the other replicas find it."""
    gw = await start_gateway(kubeconfig, *flags, replica=replica)
    if listed_in is not None:
        await _async(lambda: peers.publish(listed_in, replica, gw.admin_port))
    try:
        yield gw
    except BaseException:
        print(f"--- gateway {replica} output:\n{gw.text()[-6000:]}")  # shown by pytest on failure
        raise
    finally:
        if listed_in is not None:
            await _async(lambda: peers.withdraw(listed_in, replica))
        # A graceful stop hands the reaper Lease over, so the next test's gateway need not wait it out.
        if gw.proc.returncode is None:
            gw.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await gw.wait_exit(30)
        await gw.kill()


async def get(gw: GatewayProcess, project: str, path: str = "/", timeout_s: float = 60) -> tuple[int, str]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as s, \
            s.get(gw.url + path, headers={"Host": f"{project}.localhost"}) as resp:
        return resp.status, await resp.text()


AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


async def admin(gw: GatewayProcess, path: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s, \
            s.get(gw.admin_url + path, headers=AUTH) as resp:
        text = await resp.text()
        try:
            return resp.status, json.loads(text)
        except ValueError:
            return resp.status, text


async def metric(gw: GatewayProcess, line_start: str) -> float:
    _, text = await admin(gw, "/metrics")
    for line in str(text).splitlines():
        if line.startswith(line_start + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def eventually(check: Callable[[], Awaitable[T | None]], timeout_s: float, what: str) -> T:
    """Poll ``check`` until it returns something (state that has no event to await, e.g. HTTP)."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = await check()
        if result is not None:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g}s waiting for {what}")
        await asyncio.sleep(0.2)


def deployment(cluster: Cluster, name: str) -> dict[str, Any]:
    dep: dict[str, Any] = cluster.request("GET", f"/apis/apps/v1/namespaces/{C.namespace_for(name)}/deployments/{name}")
    return dep


async def wait_pods(cluster: Cluster, name: str, predicate: Callable[[list[dict[str, Any]]], T | None],
                    timeout_s: float = 60) -> T:
    return await asyncio.to_thread(cluster.watch_until, f"/api/v1/namespaces/{C.namespace_for(name)}/pods",
                                   predicate, timeout_s, labelSelector=C.app_label_selector(name))


async def wait_deployment(cluster: Cluster, name: str, predicate: Callable[[dict[str, Any]], bool],
                          timeout_s: float = 60) -> dict[str, Any]:
    def check(items: list[dict[str, Any]]) -> dict[str, Any] | None:
        return next((d for d in items if d["metadata"]["name"] == name and predicate(d)), None)

    return await asyncio.to_thread(cluster.watch_until, f"/apis/apps/v1/namespaces/{C.namespace_for(name)}/deployments",
                                   check, timeout_s)


def live(pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [p for p in pods if not p["metadata"].get("deletionTimestamp")]


def events(cluster: Cluster, name: str, reason: str) -> list[dict[str, Any]]:
    out = cluster.request("GET", f"/api/v1/namespaces/{C.namespace_for(name)}/events?fieldSelector=reason%3D{reason}")
    items: list[dict[str, Any]] = out.get("items", [])
    return items


# --- RBAC and the gateway's own pod spec -----------------------------------------------------------


def test_gateway_serviceaccount_may_scale_projects_only(cluster: Cluster, sa_kubeconfig: Path) -> None:
    asyncio.run(provision(cluster, "rbac"))
    sa = f"system:serviceaccount:{C.DEFAULT_GATEWAY_NAMESPACE}:{C.GATEWAY_SERVICEACCOUNT}"

    def can(*args: str) -> bool:
        out = cluster.kubectl("auth", "can-i", *args, f"--as={sa}", check=False)
        return out.stdout.strip() == "yes"

    assert can("patch", "deployments/rbac", "--subresource=scale", "-n", "wg-rbac")
    assert can("watch", "endpointslices.discovery.k8s.io", "--all-namespaces")
    assert can("update", "leases.coordination.k8s.io/wakegate-reaper", "-n", C.DEFAULT_GATEWAY_NAMESPACE)
    assert not can("patch", "deployments/coredns", "--subresource=scale", "-n", "kube-system")
    assert not can("patch", "deployments/other", "--subresource=scale", "-n", "wg-rbac")
    assert not can("get", "secrets", "-n", "wg-rbac")
    assert not can("update", "leases.coordination.k8s.io/other", "-n", C.DEFAULT_GATEWAY_NAMESPACE)
    assert not can("create", "pods", "-n", "wg-rbac")


def test_gateway_pod_is_admitted_under_restricted(cluster: Cluster, sa_kubeconfig: Path) -> None:
    dep = next(o for o in rendered_manifests(cluster) if o["kind"] == "Deployment")
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": "wakegate-dry-run", "namespace": C.DEFAULT_GATEWAY_NAMESPACE,
                        "labels": dep["spec"]["template"]["metadata"]["labels"]},
           "spec": dep["spec"]["template"]["spec"]}
    out = cluster.kubectl("create", "--dry-run=server", "-o", "name", "-f", "-", input=json.dumps(pod), check=False)
    assert out.returncode == 0, out.stderr
    assert "PodSecurity" not in out.stderr
    # and the namespace really enforces it: a root pod is refused
    bad = json.loads(json.dumps(pod))
    bad["spec"]["securityContext"] = {}
    bad["spec"]["containers"][0]["securityContext"] = {"privileged": True}
    refused = cluster.kubectl("create", "--dry-run=server", "-f", "-", input=json.dumps(bad), check=False)
    assert refused.returncode != 0 and "PodSecurity" in refused.stderr


# --- waking, routing, sleeping ---------------------------------------------------------------------


async def test_cold_request_wakes_the_deployment_and_reaches_the_pod(cluster: Cluster, sa_kubeconfig: Path) -> None:
    ns = await provision(cluster, "cold")
    assert deployment(cluster, "cold")["spec"]["replicas"] == 0
    async with gateway(sa_kubeconfig) as gw:
        status, body = await get(gw, "cold", "/hello?x=1")
        assert status == 200, body
        echo = json.loads(body)
        assert echo["path"] == "/hello?x=1"
        dep = deployment(cluster, "cold")
        assert dep["spec"]["replicas"] == 1
        pods = live(cluster.request("GET", f"/api/v1/namespaces/{ns}/pods")["items"])
        assert [p["metadata"]["name"] for p in pods] == [echo["pod"]["name"]]
        ready = {c["type"]: c["status"] for c in pods[0]["status"]["conditions"]}
        assert ready["Ready"] == "True"
        # proxied straight to the pod IP (nothing implements ClusterIPs here)
        assert echo["pod"]["ip"] == pods[0]["status"]["podIP"]
        _, info = await admin(gw, "/api/v1/projects/cold")
        assert info["state"] == "ready"
        assert info["endpoints"] == [f"{pods[0]['status']['podIP']}:{C.DEFAULT_CONTAINER_PORT}"]
        assert info["location"] == "namespace wg-cold, deployment cold"


async def _async(fn: Callable[[], T]) -> T:
    return await asyncio.to_thread(fn)


async def test_concurrent_cold_requests_scale_once(cluster: Cluster, sa_kubeconfig: Path) -> None:
    await provision(cluster, "herd", image="wakegate.test/slow:1")
    async with gateway(sa_kubeconfig) as gw:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=90),
                                         connector=aiohttp.TCPConnector(limit=0)) as s:
            async def one(i: int) -> int:
                async with s.get(f"{gw.url}/r{i}", headers={"Host": "herd.localhost"}) as resp:
                    await resp.read()
                    return resp.status

            statuses = await asyncio.gather(*(one(i) for i in range(200)))
        assert statuses == [200] * 200
        assert await metric(gw, 'wakegate_scale_operations_total{direction="up",result="ok"}') == 1
        woken = await eventually(lambda: _async(lambda: events(cluster, "herd", "WokenUp") or None), 10,
                                 "the WokenUp event")
        assert len(woken) == 1
        pods = await wait_pods(cluster, "herd", lambda items: live(items) or None)
        assert len(pods) == 1


async def test_idle_project_is_scaled_to_zero_and_its_pod_goes(cluster: Cluster, sa_kubeconfig: Path) -> None:
    await provision(cluster, "idle", idle_timeout_s=2)
    async with gateway(sa_kubeconfig) as gw:
        await gw.wait_event(lambda e: e.get("event") == "leader_acquired", 20)
        status, body = await get(gw, "idle")
        assert status == 200, body
        dep = await wait_deployment(cluster, "idle", lambda d: d["spec"]["replicas"] == 0, 30)
        assert dep["spec"]["replicas"] == 0
        assert await wait_pods(cluster, "idle", lambda items: True if not items else None, 60)
        slept = await gw.wait_event(lambda e: e.get("event") == "sleep" and e.get("project") == "idle", 10)
        assert slept["scaled_down"] is True
        assert len(events(cluster, "idle", "ScaledToZero")) == 1
        # The sleep recorded the last activity (for `wakegate project status`) in the same write.
        last = dep["metadata"]["annotations"][C.LAST_ACTIVITY_ANNOTATION]
        assert abs(time.time() - obj.parse_time(last)) < 120  # type: ignore[operator]
        # and it wakes again
        status, body = await get(gw, "idle")
        assert status == 200, body


async def test_projects_appear_as_they_are_created_and_labelled(cluster: Cluster, sa_kubeconfig: Path) -> None:
    async with gateway(sa_kubeconfig, "--namespace-selector", "team=blue") as gw:
        await provision(cluster, "blue")
        # managed, but its namespace is outside --namespace-selector: not a project of this gateway
        status, _ = await get(gw, "blue")
        assert status == 404
        cluster.kubectl("label", "namespace", "wg-blue", "team=blue")

        async def served() -> bool | None:
            return True if (await get(gw, "blue"))[0] == 200 else None

        await eventually(served, 60, "the project to be served once its namespace matches")
        # the namespace's project label (set by the provisioner) must confirm the Deployment's claim
        cluster.kubectl("label", "namespace", "wg-blue", f"{C.PROJECT_LABEL}=other", "--overwrite")

        async def gone() -> bool | None:
            return True if (await get(gw, "blue"))[0] == 404 else None

        await eventually(gone, 30, "the project to go when its namespace no longer confirms it")
        cluster.kubectl("label", "namespace", "wg-blue", f"{C.PROJECT_LABEL}=blue", "--overwrite")


class Recorder:
    """A BackendListener that keeps what it was told."""

    def __init__(self) -> None:
        self.endpoints: dict[str, list[str]] = {}
        self.failures: dict[str, str] = {}
        self.table_changes = 0

    def endpoints_changed(self, name: str, endpoints: Any) -> None:
        self.endpoints[name] = [str(e) for e in endpoints]

    def wake_failed(self, name: str, reason: str) -> None:
        self.failures[name] = reason

    def projects_changed(self) -> None:
        self.table_changes += 1


async def test_discover_answers_from_the_watch_caches_only(cluster: Cluster, sa_kubeconfig: Path) -> None:
    backend = KubernetesBackend(Settings(backend="kubernetes", kubeconfig=sa_kubeconfig, replica_id="in-process"))
    recorder = Recorder()
    backend.set_listener(recorder)
    await backend.start()
    try:
        assert backend.ready
        assert await backend.discover("no-such-project") is None
        assert await backend.discover("Not A Name") is None
        # Stop the Deployment watch: a project created now is not in the caches, and discover must
        # not go and look for it in the API server (it is answered like any unknown name).
        watch = next(t for t in asyncio.all_tasks() if t.get_name() == "wakegate-watch-deployments")
        watch.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watch
        await provision(cluster, "late")
        assert await backend.discover("late") is None
        assert "late" not in backend.projects()
        # Once the watch delivers it, it is found, and the listener hears of the new table.
        changes = recorder.table_changes
        backend._tasks.spawn(backend.deployments.run(), "wakegate-watch-deployments")

        async def found() -> ProjectInfo | None:
            return await backend.discover("late")

        info = await eventually(found, 30, "the resumed watch to deliver project late")
        assert info.name == "late"
        assert info.location == "namespace wg-late, deployment late"
        await asyncio.sleep(0)  # projects_changed is delivered on the next loop iteration
        assert recorder.table_changes > changes
    finally:
        await backend.close()


def apiserver_reads(cluster: Cluster) -> Counter[tuple[str, str]]:
    """The API server's own count of LIST and GET requests for Deployments and Namespaces (all
    clients, all scopes), by (verb, resource)."""
    text = cluster.request("GET", "/metrics", raw=True).decode()
    counts: Counter[tuple[str, str]] = Counter()
    for match in re.finditer(r"^apiserver_request_total\{([^}]*)\} (\S+)$", text, re.MULTILINE):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1)))
        key = (labels.get("verb", ""), labels.get("resource", ""))
        if key[0] in ("LIST", "GET") and key[1] in ("deployments", "namespaces"):
            counts[key] += int(float(match.group(2)))
    return counts


async def test_unknown_host_names_cost_no_api_requests(cluster: Cluster, sa_kubeconfig: Path) -> None:
    # The gateway sees only namespaces with this label, so projects other tests left awake are not
    # its business (no reaper GETs during the count). Project "fresh" is created with it.
    selector = "wakegate-test=unknown-names"
    names = [f"nope-{os.urandom(6).hex()}" for _ in range(200)]
    async with gateway(sa_kubeconfig, "--namespace-selector", selector, "--idle-timeout", "3600",
                       "--unknown-cache-ttl", "3600") as gw:
        await gw.wait_event(lambda e: e.get("event") == "backend_synced", 30)
        before = await _async(lambda: apiserver_reads(cluster))
        assert before[("LIST", "deployments")] >= 1  # the informers' initial lists are counted
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60),
                                         connector=aiohttp.TCPConnector(limit=20)) as s:
            async def one(name: str) -> int:
                async with s.get(gw.url + "/", headers={"Host": f"{name}.localhost"}) as resp:
                    await resp.read()
                    return resp.status

            statuses = await asyncio.gather(*(one(name) for name in [*names, "fresh"]))
        assert statuses == [404] * (len(names) + 1)
        after = await _async(lambda: apiserver_reads(cluster))
        grown = after - before
        # One LIST per name would be 200; the informers' own re-lists cannot reach 5 in seconds.
        assert sum(grown.values()) < 5, dict(grown)
        # A project created now is served as soon as the watch delivers it, although its name was
        # just answered 404 (and that answer is cached for an hour).
        objs = render(ProjectSpec(name="fresh", image=ECHO))
        assert objs[0]["kind"] == "Namespace"
        objs[0]["metadata"]["labels"]["wakegate-test"] = "unknown-names"
        api = await papply.connect(cluster.kubeconfig)
        try:
            await papply.create_project(papply.Kube(api), objs, wait_timeout_s=60)
        finally:
            await api.close()

        async def served() -> tuple[int, str] | None:
            status, body = await get(gw, "fresh", timeout_s=60)
            return (status, body) if status != 404 else None

        status, body = await eventually(served, 60, "project fresh to be served")
        assert status == 200, body
        assert json.loads(body)["pod"]["name"].startswith("fresh-")


# --- failing fast ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "image", "reason"), [
    ("crash", "wakegate.test/crash:1", "CrashLoopBackOff"),
    ("nopull", "wakegate.test/no-such-image:1", "Err"),  # ErrImagePull / ImagePullBackOff
])
async def test_pod_failures_are_reported_fast(cluster: Cluster, sa_kubeconfig: Path, name: str, image: str,
                                              reason: str) -> None:
    await provision(cluster, name, image=image)
    # The hold timeout (90 s) is longer than the client waits: an answer means it failed fast.
    async with gateway(sa_kubeconfig) as gw:
        status, body = await get(gw, name, timeout_s=45)
        assert status == 502, body
        # the public answer says that it failed; why is for the admin API and the logs (issue 13, item 8)
        assert f"project {name} failed to start" in body and reason not in body
        _, info = await admin(gw, f"/api/v1/projects/{name}")
        assert info["state"] == "failed"
        assert reason in info["last_error"] and f"pod wg-{name}/{name}-" in info["last_error"]


async def test_quota_failure_is_reported_fast(cluster: Cluster, sa_kubeconfig: Path) -> None:
    ns = await provision(cluster, "quota")
    quotas = cluster.request("GET", f"/api/v1/namespaces/{ns}/resourcequotas")["items"]
    for q in quotas:
        cluster.request("PATCH", f"/api/v1/namespaces/{ns}/resourcequotas/{q['metadata']['name']}",
                        {"spec": {"hard": {"pods": "0"}}}, content_type="application/merge-patch+json")
    async with gateway(sa_kubeconfig) as gw:
        status, body = await get(gw, "quota", timeout_s=45)
        assert status == 502, body
        assert "project quota failed to start" in body and "exceeded quota" not in body
        _, info = await admin(gw, "/api/v1/projects/quota")
        assert "deployment wg-quota/quota cannot create pods" in info["last_error"]
        assert "exceeded quota" in info["last_error"]


# --- the API server going away ----------------------------------------------------------------------


async def test_api_server_outage_keeps_warm_projects_and_recovers(cluster: Cluster, sa_kubeconfig: Path) -> None:
    await provision(cluster, "warm")
    await provision(cluster, "later")
    async with gateway(sa_kubeconfig) as gw:
        assert (await get(gw, "warm"))[0] == 200
        assert await metric(gw, "wakegate_backend_reachable") == 1
        await asyncio.to_thread(cluster.stop_apiserver)
        try:
            await gw.wait_event(lambda e: e.get("event") == "kubernetes_api_unreachable", 30)
            assert "wakegate_backend_reachable 0.0" in str((await admin(gw, "/metrics"))[1])  # what ops alert on
            for i in range(5):
                status, body = await get(gw, "warm", f"/still-{i}")
                assert status == 200, body
            # still ready: warm projects are served (a failing probe on every replica would stop that)
            assert (await admin(gw, "/readyz"))[0] == 200
            status, body = await get(gw, "later", timeout_s=30)
            assert status == 503, body
            assert "project later cannot be started now" in body and "Kubernetes API" not in body
            failed = await gw.wait_event(lambda e: e.get("event") == "request_failed" and e.get("project") == "later",
                                         10)
            assert "Kubernetes API unreachable" in f"{failed.get('error')} {failed.get('detail')}"  # the logs say why
        finally:
            await asyncio.to_thread(cluster.start_apiserver)
        lost = gw.lines.index(gw.events("kubernetes_api_unreachable")[0])
        await gw.wait_event(lambda e: e.get("event") == "kubernetes_api_reachable" and gw.lines.index(e) > lost, 60)
        # the restarted API server's watch cache no longer has our resourceVersions: re-listed
        await gw.wait_event(lambda e: e.get("event") == "watch_expired", 10)
        status, body = await get(gw, "later")
        assert status == 200, body
        assert (await get(gw, "warm"))[0] == 200
        assert await metric(gw, "wakegate_backend_reachable") == 1


# --- watches: 410 Gone -----------------------------------------------------------------------------


async def test_informer_relists_after_410_gone_and_sees_what_it_missed(cluster: Cluster) -> None:
    ns = "informer-410"
    created = cluster.kubectl("create", "namespace", ns, check=False)
    assert created.returncode == 0, created.stderr
    api = await make_api_client(Settings(backend="kubernetes", kubeconfig=cluster.kubeconfig))
    seen: list[tuple[str, str | None]] = []
    changed = asyncio.Event()

    def on_change(key: tuple[str, str], old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        seen.append((key[1], None if new is None else new["data"]["v"]))
        changed.set()

    def cm(name: str, v: str) -> str:
        return json.dumps({"apiVersion": "v1", "kind": "ConfigMap",
                           "metadata": {"name": name, "namespace": ns, "labels": {"test": "informer-410"}},
                           "data": {"v": v}})

    cluster.kubectl("apply", "-f", "-", input=cm("a", "1"))
    inf = Informer(Kube(api), "configmaps", "/api/v1/configmaps", on_change, label_selector="test=informer-410",
                   watch_timeout_s=1)
    task = asyncio.get_running_loop().create_task(inf.run())
    try:
        await asyncio.wait_for(inf.synced.wait(), 30)
        assert seen == [("a", "1")] and inf.relists == 1
        # Stop watching, miss a deletion and an addition, and let the API server restart: its new
        # watch cache starts after our resourceVersion, so resuming the watch gets 410 Gone.
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        cluster.kubectl("delete", "configmap", "a", "-n", ns)
        cluster.kubectl("apply", "-f", "-", input=cm("b", "2"))
        await asyncio.to_thread(cluster.stop_apiserver)
        await asyncio.to_thread(cluster.start_apiserver)
        task = asyncio.get_running_loop().create_task(inf.run())

        async def caught_up() -> bool | None:
            return True if inf.relists >= 2 and set(inf.store) == {(ns, "b")} else None

        await eventually(caught_up, 30, "the re-list after 410")
        assert ("a", None) in seen and ("b", "2") in seen
        # and it keeps watching from the new list
        changed.clear()
        cluster.kubectl("apply", "-f", "-", input=cm("b", "3"))
        await asyncio.wait_for(changed.wait(), 30)
        assert seen[-1] == ("b", "3")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await api.close()
        cluster.kubectl("delete", "namespace", ns, "--wait=false")


# --- several gateway replicas ----------------------------------------------------------------------


async def test_concurrent_wakes_from_two_replicas_make_one_pod(cluster: Cluster, sa_kubeconfig: Path) -> None:
    await provision(cluster, "both", image="wakegate.test/slow:1")
    async with gateway(sa_kubeconfig, replica="gw-a", listed_in=cluster) as a, \
            gateway(sa_kubeconfig, replica="gw-b", listed_in=cluster) as b:
        statuses = await asyncio.gather(*(get(gw, "both", f"/{i}") for i in range(25) for gw in (a, b)))
        assert [s for s, _ in statuses] == [200] * 50
        pod_names = {json.loads(body)["pod"]["name"] for _, body in statuses}
        assert len(pod_names) == 1
        pods = await wait_pods(cluster, "both", lambda items: live(items) or None)
        assert [p["metadata"]["name"] for p in pods] == list(pod_names)
        assert deployment(cluster, "both")["spec"]["replicas"] == 1


async def test_activity_on_one_replica_keeps_the_project_awake_for_both(cluster: Cluster,
                                                                        sa_kubeconfig: Path) -> None:
    await provision(cluster, "shared", idle_timeout_s=3)
    async with gateway(sa_kubeconfig, replica="gw-a", listed_in=cluster) as leader:
        await leader.wait_event(lambda e: e.get("event") == "leader_acquired", 20)
        async with gateway(sa_kubeconfig, replica="gw-b", listed_in=cluster) as follower:
            status, body = await get(follower, "shared")
            assert status == 200, body
            first_pod = json.loads(body)["pod"]["name"]
            # Traffic only through the follower, for well over the idle timeout.
            deadline = time.monotonic() + 9
            while time.monotonic() < deadline:
                status, body = await get(follower, "shared")
                assert status == 200, body
                assert json.loads(body)["pod"]["name"] == first_pod  # never put to sleep meanwhile
                await asyncio.sleep(0.5)
            assert not [e for e in leader.events("sleep") if e.get("project") == "shared"]
            assert not follower.events("leader_acquired")
            # Quiet now: the leader puts it to sleep.
            slept = await leader.wait_event(lambda e: e.get("event") == "sleep" and e.get("project") == "shared", 30)
            assert slept["scaled_down"] is True
            await wait_deployment(cluster, "shared", lambda d: d["spec"]["replicas"] == 0, 10)


async def test_killing_the_lease_holder_hands_reaping_over(cluster: Cluster, sa_kubeconfig: Path) -> None:
    await provision(cluster, "handover", idle_timeout_s=2)
    a = await start_gateway(sa_kubeconfig, replica="gw-a")
    try:
        await a.wait_event(lambda e: e.get("event") == "leader_acquired", 20)
        async with gateway(sa_kubeconfig, replica="gw-b") as b:
            assert not b.events("leader_acquired")
            os.killpg(a.proc.pid, signal.SIGKILL)  # no release: B must notice the Lease expire
            await a.wait_exit(10)
            await b.wait_event(lambda e: e.get("event") == "leader_acquired", 20)
            lease = cluster.request("GET", f"/apis/coordination.k8s.io/v1/namespaces/{C.DEFAULT_GATEWAY_NAMESPACE}"
                                           "/leases/wakegate-reaper")
            assert lease["spec"]["holderIdentity"] == "gw-b"
            status, body = await get(b, "handover")
            assert status == 200, body
            slept = await b.wait_event(lambda e: e.get("event") == "sleep" and e.get("project") == "handover", 30)
            assert slept["scaled_down"] is True
            await wait_deployment(cluster, "handover", lambda d: d["spec"]["replicas"] == 0, 10)
    finally:
        await a.kill()


async def test_graceful_stop_releases_the_lease(cluster: Cluster, sa_kubeconfig: Path) -> None:
    a = await start_gateway(sa_kubeconfig, "--leader-lease", "30", replica="gw-a")
    try:
        await a.wait_event(lambda e: e.get("event") == "leader_acquired", 20)
        async with gateway(sa_kubeconfig, "--leader-lease", "30", replica="gw-b") as b:
            a.proc.send_signal(signal.SIGTERM)
            assert await a.wait_exit(30) == 0
            # Released, so B takes over well before the 30 s lease would have expired.
            await b.wait_event(lambda e: e.get("event") == "leader_acquired", 15)
    finally:
        await a.kill()


async def test_sleeps_racing_requests_never_drop_one(cluster: Cluster, sa_kubeconfig: Path) -> None:
    await provision(cluster, "race")
    async with gateway(sa_kubeconfig, replica="gw-a", listed_in=cluster) as leader:
        await leader.wait_event(lambda e: e.get("event") == "leader_acquired", 20)
        async with gateway(sa_kubeconfig, replica="gw-b", listed_in=cluster) as other:
            assert (await get(other, "race"))[0] == 200
            statuses: list[tuple[int, str]] = []
            answered = asyncio.Condition()
            done = asyncio.Event()

            async def stream() -> None:
                # A steady stream of requests through the replica that does not reap ...
                while not done.is_set():
                    statuses.append(await get(other, "race", f"/{len(statuses)}"))
                    async with answered:
                        answered.notify_all()
                    await asyncio.sleep(0.02)  # the stream's pace, not a wait for anything

            async def sleeps() -> list[int]:
                # ... while the leader is told to put the project to sleep, again and again; each
                # time, a few requests (the first of them held while the project wakes again) are
                # answered before the next attempt.
                answers = []
                async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as s:
                    for _ in range(6):
                        async with s.post(f"{leader.admin_url}/api/v1/projects/race/deactivate",
                                          headers=AUTH) as resp:
                            answers.append(resp.status)
                        target = len(statuses) + 3
                        async with answered:
                            await asyncio.wait_for(answered.wait_for(lambda t=target: len(statuses) >= t), 60)
                done.set()
                return answers

            answers, _ = await asyncio.gather(sleeps(), stream())
            bad = [(s, body) for s, body in statuses if s != 200]
            assert not bad, bad
            # every attempt either slept it (and the next request woke it) or was refused for the traffic
            assert set(answers) <= {200, 502}, answers
            attempts = [e for e in leader.lines if e.get("event") in ("sleep", "sleep_refused")
                        and e.get("project") == "race"]
            assert len(attempts) >= 6, attempts


# --- activity shared between replicas without the API server (issue 18) ----------------------------


async def stream(gw: GatewayProcess, project: str, seconds: int) -> list[str]:
    """An SSE stream through ``gw`` that stays open ``seconds`` (one event a second); its events."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=seconds + 90)) as s, \
            s.get(f"{gw.url}/events?interval=1&count={seconds}", headers={"Host": f"{project}.localhost"}) as resp:
        assert resp.status == 200
        return [line for line in (await resp.text()).splitlines() if line.startswith("data:")]


@contextlib.asynccontextmanager
async def open_stream(gw: GatewayProcess, project: str) -> AsyncIterator[AsyncIterator[str]]:
    """An SSE stream through ``gw`` (one event a second, for up to 10 minutes); yields its events
    as they come. Leaving closes it."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as s, \
            s.get(f"{gw.url}/events?interval=1&count=600", headers={"Host": f"{project}.localhost"}) as resp:
        assert resp.status == 200

        async def events() -> AsyncIterator[str]:
            async for raw in resp.content:
                line = raw.decode().strip()
                if line.startswith("data:"):
                    yield line

        yield events()


def slept(gw: GatewayProcess, project: str) -> list[dict[str, Any]]:
    return [e for e in gw.events("sleep") if e.get("project") == project]


@dataclasses.dataclass
class SecondIdentity:
    """A second gateway identity (ServiceAccount ``wakegate-b``) bound like the shipped one."""

    cluster: Cluster
    kubeconfig: Path
    name: str = "wakegate-b"

    def revoke_lease(self) -> None:
        """It may no longer take the reaper Lease."""
        self.cluster.kubectl("delete", "rolebinding", "-n", C.DEFAULT_GATEWAY_NAMESPACE, self.name,
                             "--ignore-not-found")

    def revoke(self) -> None:
        """Every API request it makes is refused (403)."""
        self.cluster.kubectl("delete", "clusterrolebinding", self.name, "--ignore-not-found")
        self.revoke_lease()

    def starve(self) -> None:
        """Its API requests are refused by API Priority and Fairness (429) under contention: they go
        to a priority level with no seats of its own, none to borrow, and rejection when full, which
        :meth:`contention` keeps full."""
        ns = C.DEFAULT_GATEWAY_NAMESPACE
        level = {"apiVersion": "flowcontrol.apiserver.k8s.io/v1", "kind": "PriorityLevelConfiguration",
                 "metadata": {"name": self.name},
                 "spec": {"type": "Limited", "limited": {
                     "nominalConcurrencyShares": 0, "lendablePercent": 0, "borrowingLimitPercent": 0,
                     "limitResponse": {"type": "Reject"}}}}
        schema = {"apiVersion": "flowcontrol.apiserver.k8s.io/v1", "kind": "FlowSchema",
                  "metadata": {"name": self.name},
                  "spec": {"matchingPrecedence": 100, "priorityLevelConfiguration": {"name": self.name},
                           "distinguisherMethod": {"type": "ByUser"},
                           "rules": [{"subjects": [{"kind": "ServiceAccount",
                                                    "serviceAccount": {"name": self.name, "namespace": ns}}],
                                      "resourceRules": [{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"],
                                                         "namespaces": ["*"], "clusterScope": True}]}]}}
        self.cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all([level, schema]))

    @contextlib.contextmanager
    def contention(self, threads: int = 32) -> Iterator[None]:
        """Other requests of the same identity, as many at once as ``threads``, while it lasts."""
        token = self.cluster.serviceaccount_token(C.DEFAULT_GATEWAY_NAMESPACE, self.name)
        stop = threading.Event()

        def load() -> None:
            while not stop.is_set():
                with contextlib.suppress(Exception):
                    self.cluster.request("GET", "/api/v1/pods?limit=500", token=token)

        workers = [threading.Thread(target=load, daemon=True) for _ in range(threads)]
        for w in workers:
            w.start()
        try:
            yield
        finally:
            stop.set()
            for w in workers:
                w.join(30)

    def restore(self) -> None:
        self.revoke()
        self.cluster.kubectl("delete", "flowschema", self.name, "--ignore-not-found")
        self.cluster.kubectl("delete", "prioritylevelconfiguration", self.name, "--ignore-not-found")


@pytest.fixture
def second_identity(cluster: Cluster) -> Iterator[SecondIdentity]:
    ns = C.DEFAULT_GATEWAY_NAMESPACE
    sa = SecondIdentity.name
    objs = [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": sa, "namespace": ns}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": sa},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "wakegate"},
         "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": ns}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": sa, "namespace": ns},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "wakegate-leader-election"},
         "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": ns}]},
    ]
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(objs))
    identity = SecondIdentity(cluster, cluster.serviceaccount_kubeconfig(ns, sa))
    try:
        yield identity
    finally:
        identity.restore()


@pytest.mark.parametrize(("refusal", "status"), [("revoke", "403"), ("starve", "429")])
async def test_an_open_stream_on_a_replica_whose_api_requests_are_refused_keeps_the_project_awake(
        cluster: Cluster, sa_kubeconfig: Path, second_identity: SecondIdentity, refusal: str, status: str) -> None:
    project = f"refused-{refusal}"
    await provision(cluster, project, idle_timeout_s=3)
    async with gateway(sa_kubeconfig, replica="gw-a", listed_in=cluster) as leader:
        await leader.wait_event(lambda e: e.get("event") == "leader_acquired", 20)
        async with gateway(second_identity.kubeconfig, replica="gw-b", listed_in=cluster) as b:
            assert (await get(leader, project))[0] == 200  # woken (gw-b may not scale: not bound there)
            await eventually(lambda: _ready_on(b, project), 30, "gw-b to see the project ready")
            # The stream opens on gw-b first: on a loaded box, setting the refusal up may take longer
            # than the 3 s idle timeout, and a project nobody uses is rightly put to sleep meanwhile.
            async with open_stream(b, project) as events:
                await asyncio.wait_for(events.__anext__(), 60)
                await _async(getattr(second_identity, refusal))
                # From now on gw-b's API requests are refused (RBAC: 403, all of them; API Priority and
                # Fairness: 429, under contention); it asks for the Lease every second.
                with second_identity.contention() if refusal == "starve" else contextlib.nullcontext():
                    await b.wait_event(lambda e: e.get("event") == "leader_election_error"
                                       and status in e.get("error", ""), 60)
                    # Four idle timeouts, counted by the stream's own events (one a second): never cut.
                    for _ in range(12):
                        await asyncio.wait_for(events.__anext__(), 60)
            assert not slept(leader, project)
            assert deployment(cluster, project)["spec"]["replicas"] == 1
            # Quiet now: the holder puts it to sleep, with gw-b's answer (no API access needed).
            done = await leader.wait_event(lambda e: e.get("event") == "sleep" and e.get("project") == project, 30)
            assert done["scaled_down"] is True


async def _ready_on(gw: GatewayProcess, project: str) -> bool | None:
    _, info = await admin(gw, f"/api/v1/projects/{project}")
    return True if isinstance(info, dict) and info.get("state") == "ready" else None


async def test_a_killed_replica_blocks_sleeps_until_it_is_gone_from_the_endpointslice(
        cluster: Cluster, sa_kubeconfig: Path) -> None:
    await provision(cluster, "killed", idle_timeout_s=2)
    async with gateway(sa_kubeconfig, replica="gw-a", listed_in=cluster) as leader:
        await leader.wait_event(lambda e: e.get("event") == "leader_acquired", 20)
        b = await start_gateway(sa_kubeconfig, replica="gw-b")
        try:
            await _async(lambda: peers.publish(cluster, "gw-b", b.admin_port))
            assert (await get(b, "killed"))[0] == 200
            os.killpg(b.proc.pid, signal.SIGKILL)  # its claims cannot be known any more
            await b.wait_exit(10)
            unreachable = await leader.wait_event(
                lambda e: e.get("event") == "peer_unreachable" and e.get("peer") == "gw-b", 30)
            assert unreachable
            # Still listed (its pod not yet gone): no sleep, for well over the idle timeout.
            await asyncio.sleep(6)  # the non-event being shown: nothing to await
            assert not slept(leader, "killed")
            assert deployment(cluster, "killed")["spec"]["replicas"] == 1
            await _async(lambda: peers.withdraw(cluster, "gw-b"))  # the endpoint controller's part
            done = await leader.wait_event(lambda e: e.get("event") == "sleep" and e.get("project") == "killed", 30)
            assert done["scaled_down"] is True
        finally:
            await _async(lambda: peers.withdraw(cluster, "gw-b"))
            await b.kill()


async def test_a_new_holder_does_not_sleep_a_project_with_a_connection_open_elsewhere(
        cluster: Cluster, sa_kubeconfig: Path, second_identity: SecondIdentity) -> None:
    await provision(cluster, "newholder", idle_timeout_s=2)
    second_identity.revoke_lease()  # gw-c never holds the Lease: gw-b is the next holder
    a = await start_gateway(sa_kubeconfig, replica="gw-a")
    try:
        await _async(lambda: peers.publish(cluster, "gw-a", a.admin_port))
        await a.wait_event(lambda e: e.get("event") == "leader_acquired", 20)
        async with gateway(sa_kubeconfig, replica="gw-b", listed_in=cluster) as b, \
                gateway(second_identity.kubeconfig, replica="gw-c", listed_in=cluster) as c:
            assert (await get(b, "newholder"))[0] == 200
            await eventually(lambda: _ready_on(c, "newholder"), 30, "gw-c to see the project ready")
            streaming = asyncio.ensure_future(stream(c, "newholder", 15))
            await eventually(lambda: _open_on(c, "newholder"), 30, "the stream to be open on gw-c")
            os.killpg(a.proc.pid, signal.SIGKILL)
            await a.wait_exit(10)
            await _async(lambda: peers.withdraw(cluster, "gw-a"))
            await b.wait_event(lambda e: e.get("event") == "leader_acquired", 30)
            assert len(await streaming) == 15  # the connection on gw-c was never cut
            assert not slept(b, "newholder")
            assert deployment(cluster, "newholder")["spec"]["replicas"] == 1
            done = await b.wait_event(lambda e: e.get("event") == "sleep" and e.get("project") == "newholder", 30)
            assert done["scaled_down"] is True
    finally:
        await _async(lambda: peers.withdraw(cluster, "gw-a"))
        await a.kill()


async def _open_on(gw: GatewayProcess, project: str) -> bool | None:
    _, info = await admin(gw, f"/api/v1/projects/{project}")
    return True if isinstance(info, dict) and info.get("in_flight", 0) > 0 else None


async def test_the_holder_prunes_the_activity_annotations_of_earlier_versions(cluster: Cluster,
                                                                               sa_kubeconfig: Path) -> None:
    await provision(cluster, "legacy")
    cluster.request("PATCH", f"/apis/apps/v1/namespaces/{C.namespace_for('legacy')}/deployments/legacy",
                    body={"metadata": {"annotations": {"wakegate.io/activity.old-replica": "1;0;1",
                                                       "keep.example/other": "x"}}},
                    content_type="application/merge-patch+json")
    async with gateway(sa_kubeconfig) as gw:
        await gw.wait_event(lambda e: e.get("event") == "leader_acquired", 20)
        dep = await wait_deployment(cluster, "legacy", lambda d: "wakegate.io/activity.old-replica"
                                    not in d["metadata"].get("annotations", {}), 30)
        assert dep["metadata"]["annotations"]["keep.example/other"] == "x"
        assert dep["spec"]["replicas"] == 0  # pruning is not a wake


# --- the mode annotation (written by the controller: keep-warm windows, suspend) ---------------------


def annotate_mode(cluster: Cluster, name: str, mode: str | None) -> None:
    """As the controller would (here as admin): ``wakegate.io/mode`` on the project's Deployment,
    removed for ``None`` (Auto)."""
    value = f"{C.MODE_ANNOTATION}={mode}" if mode is not None else f"{C.MODE_ANNOTATION}-"
    cluster.kubectl("annotate", "deployment", name, "-n", C.namespace_for(name), value, "--overwrite")


async def _mode_on(gw: GatewayProcess, project: str, mode: str) -> bool | None:
    _, info = await admin(gw, f"/api/v1/projects/{project}")
    return True if isinstance(info, dict) and info.get("mode") == mode else None


async def test_the_mode_annotation_suspends_keeps_running_and_releases_a_project(cluster: Cluster,
                                                                                  sa_kubeconfig: Path) -> None:
    await provision(cluster, "moded")
    await provision(cluster, "ticker")  # an Auto project beside it, to see the reaper at work
    async with gateway(sa_kubeconfig, "--idle-timeout", "2") as gw:
        await gw.wait_event(lambda e: e.get("event") == "leader_acquired", 20)
        # Suspended: requests are answered 503 (reason suspended) and nothing scales it up.
        await _async(lambda: annotate_mode(cluster, "moded", "Suspended"))
        await eventually(lambda: _mode_on(gw, "moded", "Suspended"), 30, "the gateway to see moded suspended")
        status, body = await get(gw, "moded")
        assert status == 503 and body.startswith("project moded is suspended\n"), body
        failed = await gw.wait_event(lambda e: e.get("event") == "request_failed" and e.get("project") == "moded", 10)
        assert (failed["status"], failed["reason"]) == (503, "suspended")
        assert deployment(cluster, "moded")["spec"]["replicas"] == 0
        assert not gw.events("wake") and not events(cluster, "moded", "WokenUp")

        # Running: scaled to 1 without any request, and kept up past its idle timeout.
        await _async(lambda: annotate_mode(cluster, "moded", "Running"))
        await wait_deployment(cluster, "moded", lambda d: d["spec"]["replicas"] == 1, 60)
        await eventually(lambda: _ready_on(gw, "moded"), 60, "moded to be ready")
        (wake,) = gw.events("wake")
        assert wake["project"] == "moded"
        assert len(events(cluster, "moded", "WokenUp")) == 1
        # The reaper at work: "ticker", with the same idle timeout and woken after "moded" (so idle
        # for less long), is put to sleep by it, twice; "moded" is left running all along.
        def ticker_slept(times: int) -> Callable[[dict[str, Any]], bool]:
            return lambda e: len(slept(gw, "ticker")) >= times

        for times in (1, 2):
            status, body = await get(gw, "ticker")
            assert status == 200, body
            await gw.wait_event(ticker_slept(times), 60)
            assert deployment(cluster, "ticker")["spec"]["replicas"] == 0
        assert not slept(gw, "moded")
        assert deployment(cluster, "moded")["spec"]["replicas"] == 1
        _, info = await admin(gw, "/api/v1/projects/moded")
        assert (info["mode"], info["state"], info["sleeps_in_s"]) == ("Running", "ready", None)
        status, body = await get(gw, "moded")
        assert status == 200, body

        # Back to Auto (the annotation removed): idle, so the reaper puts it to sleep.
        await _async(lambda: annotate_mode(cluster, "moded", None))
        await wait_deployment(cluster, "moded", lambda d: d["spec"]["replicas"] == 0, 60)
        done = await gw.wait_event(lambda e: e.get("event") == "sleep" and e.get("project") == "moded", 30)
        assert (done["reason"], done["scaled_down"]) == ("idle", True)
        assert (await _mode_on(gw, "moded", "Auto")) is True
