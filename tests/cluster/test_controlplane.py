"""The test cluster itself: real apiserver behaviour, the node agent, the test images."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Generator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.cluster.controlplane import ApiStatusError, Cluster

pytestmark = pytest.mark.cluster

Obj = dict[str, Any]
ECHO = "wakegate.test/echo:1"


@pytest.fixture
def namespace(cluster: Cluster) -> Generator[str, None, None]:
    """A fresh namespace (with its default ServiceAccount) for one test."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    cluster.request("POST", "/api/v1/namespaces", {"metadata": {"name": name}})
    cluster.watch_until(
        f"/api/v1/namespaces/{name}/serviceaccounts",
        lambda items: True if any(i["metadata"]["name"] == "default" for i in items) else None,
        timeout=30,
    )
    yield name
    cluster.request("DELETE", f"/api/v1/namespaces/{name}")


def echo_container(port: int = 3001, image: str = ECHO, **extra: Any) -> Obj:
    return {
        "name": "app",
        "image": image,
        "ports": [{"containerPort": port, "name": "http"}],
        "readinessProbe": {"httpGet": {"path": "/healthz", "port": port}, "periodSeconds": 1},
        **extra,
    }


def pod_manifest(name: str, container: Obj, **spec: Any) -> Obj:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": {"containers": [container], **spec}}


def create_pod(cluster: Cluster, ns: str, manifest: Obj) -> Obj:
    result: Obj = cluster.request("POST", f"/api/v1/namespaces/{ns}/pods", manifest)
    return result


def wait_pod(cluster: Cluster, ns: str, name: str, check: Any, timeout: float = 60) -> Obj:
    """Watch one pod until ``check(pod)`` is true; return the pod."""

    def predicate(items: list[Obj]) -> Obj | None:
        return next((p for p in items if check(p)), None)

    result: Obj = cluster.watch_until(
        f"/api/v1/namespaces/{ns}/pods", predicate, timeout, fieldSelector=f"metadata.name={name}"
    )
    return result


def is_ready(pod: Obj) -> bool:
    conds = pod.get("status", {}).get("conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conds)


def waiting_reason(pod: Obj) -> str:
    statuses = pod.get("status", {}).get("containerStatuses") or [{}]
    return str(statuses[0].get("state", {}).get("waiting", {}).get("reason", ""))


def http_json(url: str) -> Obj:
    with urllib.request.urlopen(url, timeout=5) as resp:
        result: Obj = json.loads(resp.read())
        return result


def test_kubectl_reports_the_real_server_version(cluster: Cluster) -> None:
    out = json.loads(cluster.kubectl("version", "-o", "json").stdout)
    assert out["serverVersion"]["gitVersion"] == cluster.version
    assert out["serverVersion"]["minor"] == cluster.version.split(".")[1]


def test_deployment_scales_from_zero_to_one_and_back(cluster: Cluster, namespace: str) -> None:
    ns = namespace
    labels = {"app": "echo"}
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "echo"},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": {"containers": [echo_container(3001)]}},
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "echo"},
        "spec": {"selector": labels, "ports": [{"port": 80, "targetPort": 3001, "name": "http"}]},
    }
    cluster.request("POST", f"/apis/apps/v1/namespaces/{ns}/deployments", deployment)
    cluster.request("POST", f"/api/v1/namespaces/{ns}/services", service)

    cluster.kubectl("scale", "-n", ns, "deployment/echo", "--replicas=1")

    def ready_address(slices: list[Obj]) -> str | None:
        for s in slices:
            for ep in s.get("endpoints") or []:
                if ep.get("conditions", {}).get("ready"):
                    return str(ep["addresses"][0])
        return None

    address = cluster.watch_until(
        f"/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices",
        ready_address,
        timeout=60,
        labelSelector="kubernetes.io/service-name=echo",
    )
    pods = cluster.request("GET", f"/api/v1/namespaces/{ns}/pods")["items"]
    assert len(pods) == 1
    pod = pods[0]
    assert is_ready(pod) and pod["status"]["phase"] == "Running"
    assert pod["status"]["podIP"] == address
    assert ipaddress.ip_address(address) in ipaddress.ip_network(cluster.pod_cidr)

    body = http_json(f"http://{address}:3001/some/path?x=1")
    assert body["method"] == "GET"
    assert body["path"] == "/some/path?x=1"
    assert body["pod"] == {"name": pod["metadata"]["name"], "ip": address}
    assert {"PORT", "POD_IP", "HOSTNAME"} <= set(body["env"])

    container_id = pod["status"]["containerStatuses"][0]["containerID"]
    pid = int(container_id.rsplit("-", 1)[1])
    assert Path(f"/proc/{pid}").exists()

    cluster.kubectl("scale", "-n", ns, "deployment/echo", "--replicas=0")
    cluster.watch_until(f"/api/v1/namespaces/{ns}/pods", lambda items: True if not items else None, timeout=60)
    assert not Path(f"/proc/{pid}").exists()
    with pytest.raises(OSError):
        http_json(f"http://{address}:3001/")


def test_restricted_namespace_rejects_a_violating_pod(cluster: Cluster, namespace: str) -> None:
    ns = namespace
    cluster.request(
        "PATCH",
        f"/api/v1/namespaces/{ns}",
        {"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "restricted"}}},
        content_type="application/merge-patch+json",
    )
    with pytest.raises(ApiStatusError) as rejected:
        create_pod(cluster, ns, pod_manifest("bad", echo_container()))
    assert rejected.value.status == 403
    assert "violates PodSecurity" in str(rejected.value)

    compliant = echo_container(
        securityContext={
            "runAsNonRoot": True,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        }
    )
    create_pod(cluster, ns, pod_manifest("good", compliant))
    pod = wait_pod(cluster, ns, "good", is_ready)
    assert http_json(f"http://{pod['status']['podIP']}:3001/")["pod"]["name"] == "good"


def test_env_and_env_from_configmaps_and_secrets(cluster: Cluster, namespace: str) -> None:
    ns = namespace
    cluster.request(
        "POST", f"/api/v1/namespaces/{ns}/configmaps", {"metadata": {"name": "settings"}, "data": {"GREETING": "hi"}}
    )
    cluster.request(
        "POST", f"/api/v1/namespaces/{ns}/secrets", {"metadata": {"name": "creds"}, "stringData": {"token": "s3cret"}}
    )
    container = echo_container(
        envFrom=[{"configMapRef": {"name": "settings"}, "prefix": "CFG_"}],
        env=[
            {"name": "API_TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
            {"name": "MY_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        ],
    )
    create_pod(cluster, ns, pod_manifest("envy", container))
    pod = wait_pod(cluster, ns, "envy", is_ready)
    env = http_json(f"http://{pod['status']['podIP']}:3001/")["env"]
    assert {"CFG_GREETING", "API_TOKEN", "MY_NAMESPACE", "PORT", "POD_IP"} <= set(env)
    assert env == sorted(env)

    missing = echo_container(env=[{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "nope"}}}])
    create_pod(cluster, ns, pod_manifest("missing-key", missing))
    pod = wait_pod(cluster, ns, "missing-key", lambda p: waiting_reason(p) == "CreateContainerConfigError")
    waiting = pod["status"]["containerStatuses"][0]["state"]["waiting"]
    assert waiting["message"] == f"couldn't find key nope in ConfigMap {ns}/settings"
    assert pod["status"]["phase"] == "Pending"

    # Like kubelet, the agent retries: once the key exists the container starts.
    cluster.request(
        "PATCH",
        f"/api/v1/namespaces/{ns}/configmaps/settings",
        {"data": {"nope": "now it exists"}},
        content_type="application/merge-patch+json",
    )
    wait_pod(cluster, ns, "missing-key", is_ready, timeout=30)


def test_crashing_container_goes_into_crash_loop_back_off(cluster: Cluster, namespace: str) -> None:
    create_pod(cluster, namespace, pod_manifest("crash", echo_container(image="wakegate.test/crash:1")))

    def crash_looping(p: Obj) -> bool:
        statuses = p.get("status", {}).get("containerStatuses") or [{}]
        return waiting_reason(p) == "CrashLoopBackOff" and statuses[0].get("restartCount", 0) >= 1

    pod = wait_pod(cluster, namespace, "crash", crash_looping)
    status = pod["status"]["containerStatuses"][0]
    terminated = status["lastState"]["terminated"]
    assert terminated["exitCode"] == 1
    assert "crashing on purpose" in terminated["message"]
    assert not is_ready(pod)


def test_unknown_image_is_reported_like_a_failed_pull(cluster: Cluster, namespace: str) -> None:
    create_pod(cluster, namespace, pod_manifest("nope", echo_container(image="wakegate.test/nope:1")))
    pod = wait_pod(cluster, namespace, "nope", lambda p: waiting_reason(p) in ("ErrImagePull", "ImagePullBackOff"))
    assert "wakegate.test/nope:1" in pod["status"]["containerStatuses"][0]["state"]["waiting"]["message"]
    assert pod["status"]["phase"] == "Pending"


def test_kubectl_create_token(cluster: Cluster, namespace: str) -> None:
    token = cluster.kubectl("create", "token", "default", "-n", namespace).stdout.strip()
    assert token.count(".") == 2
    review = cluster.request(
        "POST",
        "/apis/authentication.k8s.io/v1/selfsubjectreviews",
        {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"},
        token=token,
    )
    assert review["status"]["userInfo"]["username"] == f"system:serviceaccount:{namespace}:default"


def test_serviceaccount_kubeconfig_has_only_the_rbac_it_was_granted(cluster: Cluster, namespace: str) -> None:
    ns = namespace
    cluster.request("POST", f"/api/v1/namespaces/{ns}/serviceaccounts", {"metadata": {"name": "reader"}})
    cluster.request(
        "POST",
        f"/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/roles",
        {
            "metadata": {"name": "pod-reader"},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}],
        },
    )
    cluster.request(
        "POST",
        f"/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings",
        {
            "metadata": {"name": "reader"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-reader"},
            "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": ns}],
        },
    )
    config = cluster.serviceaccount_kubeconfig(ns, "reader")
    assert cluster.kubectl("get", "pods", "-n", ns, kubeconfig=config).returncode == 0
    denied = cluster.kubectl("get", "secrets", "-n", ns, kubeconfig=config, check=False)
    assert denied.returncode != 0 and "forbidden" in denied.stderr.lower()

    token = cluster.serviceaccount_token(ns, "reader")
    cluster.request("GET", f"/api/v1/namespaces/{ns}/pods", token=token)
    for path in (f"/api/v1/namespaces/{ns}/secrets", "/api/v1/namespaces/default/pods", "/api/v1/nodes"):
        with pytest.raises(ApiStatusError) as forbidden:
            cluster.request("GET", path, token=token)
        assert forbidden.value.status == 403


def test_apiserver_restart_keeps_state_and_the_node_agent_resumes(cluster: Cluster, namespace: str) -> None:
    create_pod(cluster, namespace, pod_manifest("before", echo_container()))
    wait_pod(cluster, namespace, "before", is_ready)
    cluster.stop_apiserver()
    with pytest.raises(urllib.error.URLError):
        cluster.request("GET", "/readyz", raw=True, timeout=2)
    cluster.start_apiserver()
    assert cluster.request("GET", f"/api/v1/namespaces/{namespace}/pods/before")["metadata"]["name"] == "before"
    create_pod(cluster, namespace, pod_manifest("after", echo_container()))
    wait_pod(cluster, namespace, "after", is_ready)


def test_processes_run_as_the_pod_user(cluster: Cluster, namespace: str) -> None:
    container = echo_container(securityContext={"runAsUser": 4242, "runAsGroup": 4343})
    create_pod(cluster, namespace, pod_manifest("uid", container))
    pod = wait_pod(cluster, namespace, "uid", is_ready)
    pid = int(pod["status"]["containerStatuses"][0]["containerID"].rsplit("-", 1)[1])
    status = Path(f"/proc/{pid}/status").read_text()
    uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
    gid_line = next(line for line in status.splitlines() if line.startswith("Gid:"))
    assert uid_line.split()[1] == "4242" and gid_line.split()[1] == "4343"
    assert os.stat(f"/proc/{pid}").st_uid == 4242


def test_kubectl_is_usable_with_the_admin_kubeconfig(cluster: Cluster) -> None:
    nodes = cluster.kubectl("get", "nodes", "-o", "json")
    items = json.loads(nodes.stdout)["items"]
    assert [n["metadata"]["name"] for n in items] == cluster.node_names
    assert items[0]["spec"]["podCIDR"] == cluster.pod_cidr


async def test_echo_image_streams_sse_and_echoes_websockets(cluster: Cluster, namespace: str) -> None:
    create_pod(cluster, namespace, pod_manifest("stream", echo_container()))
    pod = await asyncio.to_thread(wait_pod, cluster, namespace, "stream", is_ready)
    base = f"http://{pod['status']['podIP']}:3001"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        async with http.get(f"{base}/events?interval=0.01&count=3") as resp:
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            assert await resp.text() == "data: 0\n\ndata: 1\n\ndata: 2\n\n"
        async with http.ws_connect(f"{base}/ws") as ws:
            await ws.send_str("hello")
            assert (await ws.receive()).data == "hello"
            await ws.send_bytes(b"\x00\x01")
            assert (await ws.receive()).data == b"\x00\x01"
            await ws.close(code=4001)
            assert ws.close_code == 4001


def test_slow_image_is_ready_only_after_boot_seconds(cluster: Cluster, namespace: str) -> None:
    container = echo_container(image="wakegate.test/slow:1", env=[{"name": "BOOT_SECONDS", "value": "1.5"}])
    create_pod(cluster, namespace, pod_manifest("slow", container))
    running = wait_pod(cluster, namespace, "slow", lambda p: p.get("status", {}).get("phase") == "Running")
    started = time.monotonic()
    assert not is_ready(running)
    wait_pod(cluster, namespace, "slow", is_ready)
    assert time.monotonic() - started >= 1.0
