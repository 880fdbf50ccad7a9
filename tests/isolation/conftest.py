"""The isolation tests' world: the gateway installed from manifests/ as pods in the policy cluster,
projects made with the CLI (through the Project controller, also a pod), and client pods in the
namespaces a packet may come from. Every connection is made from inside a pod's network namespace
(:mod:`tests.cluster.pod_client`), so kube-router judges it as that pod's.
"""

from __future__ import annotations

import io
import socket
import time
from collections.abc import Generator, Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from dataclasses import dataclass
from typing import Any

import pytest

from gateway import contract as C
from provisioner.cli import main as project_cli
from tests.cluster import gateway_install, netpol
from tests.cluster.controlplane import ApiStatusError, Cluster
from tests.cluster.node_agent import pod_netns
from tests.cluster.pod_client import run_in_pod

Obj = dict[str, Any]
ECHO = "wakegate.test/echo:1"
DOMAIN = "env.test"
INGRESS_NS = "ingress-test"  # the Ingress controller's namespace (setting ingressNamespace)
MONITORING_NS = "monitoring-test"  # labelled wakegate.io/admin-access=true, as the README says
STRANGER_NS = "unlabelled-test"  # no labels, no policies
GATEWAY_NS = C.DEFAULT_GATEWAY_NAMESPACE
APP_PORT = 8080
DNS_PORT = 53
#: A wait for a pod, a rollout or the engine: generous for a loaded 2-core machine.
WAIT_S = 180.0


def kube_cli(cluster: Cluster, *argv: str) -> tuple[int, str, str]:
    """``wakegate project ARGV --kubeconfig <admin>`` in-process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = project_cli([*argv, "--kubeconfig", str(cluster.kubeconfig)])
    return code, out.getvalue(), err.getvalue()


def client_pod(name: str, namespace: str, labels: dict[str, str] | None = None, port: int = APP_PORT) -> Obj:
    """An echo pod that passes Pod Security ``restricted`` (connections are made from its namespace)."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": labels or {"app": name}},
        "spec": {
            "automountServiceAccountToken": False,
            "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "app",
                "image": ECHO,
                "ports": [{"containerPort": port}],
                "readinessProbe": {"tcpSocket": {"port": port}, "periodSeconds": 5},
                "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
            }],
        },
    }  # fmt: skip


def create_pod(cluster: Cluster, pod: Obj) -> None:
    """Create a pod (retrying while its namespace's default ServiceAccount does not exist yet)."""
    ns = pod["metadata"]["namespace"]
    deadline = time.monotonic() + 60
    while True:
        try:
            cluster.request("POST", f"/api/v1/namespaces/{ns}/pods", pod)
            return
        except ApiStatusError as exc:
            if exc.status == 409:
                return
            if exc.status != 403 or "serviceaccount" not in str(exc).lower() or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def ready_pod(cluster: Cluster, namespace: str, selector: str = "", name: str = "") -> Obj:
    """Wait (bounded) for a Ready pod, by name or label selector."""

    def ready(items: list[Obj]) -> Obj | None:
        for pod in items:
            if name and pod["metadata"]["name"] != name:
                continue
            if pod["metadata"].get("deletionTimestamp"):
                continue
            conds = {c["type"]: c["status"] for c in pod.get("status", {}).get("conditions", [])}
            if conds.get("Ready") == "True" and pod["status"].get("podIP"):
                return pod
        return None

    query = {"labelSelector": selector} if selector else {}
    return cluster.watch_until(f"/api/v1/namespaces/{namespace}/pods", ready, timeout=WAIT_S, **query)


@dataclass
class World:
    """Everything the isolation tests talk to."""

    cluster: Cluster
    install: gateway_install.Install
    pods: dict[str, Obj]  # role -> pod (client pods, gateway pods, project pods)
    public_listener: tuple[str, int]  # on this machine's address in the pod network
    private_listener: tuple[str, int]  # on its RFC 1918 address

    def ip(self, role: str) -> str:
        return str(self.pods[role]["status"]["podIP"])

    def connect(self, src: str, host: str, port: int, timeout_s: float = 5.0) -> str:
        """From pod ``src``: 'open', 'refused', 'unreachable' or 'timeout'."""
        return str(run_in_pod(self.netns(src), "connect", host, str(port), timeout_s=timeout_s)["result"])

    def http(self, src: str, url: str, host: str, *headers: str, timeout_s: float = 90.0) -> Obj:
        args = ["http", url, "--host", host, *(a for h in headers for a in ("--header", h))]
        return run_in_pod(self.netns(src), *args, timeout_s=timeout_s)

    def netns(self, role: str) -> str:
        return self.netns_of(self.pods[role])

    def netns_of(self, pod: Obj) -> str:
        return pod_netns(self.cluster.slot.index, pod["metadata"]["uid"])

    def refresh(self, role: str, namespace: str, selector: str) -> Obj:
        self.pods[role] = ready_pod(self.cluster, namespace, selector)
        return self.pods[role]

    def enforced(self) -> None:
        """Wait until the engine's rules match the policies the API holds now, for every pod here."""
        netpol.wait_enforced(self.cluster, list(self.pods.values()), timeout_s=WAIT_S)


@contextmanager
def policies_removed(world: World, *namespaces: str) -> Iterator[None]:
    """The negative control: delete every NetworkPolicy of ``namespaces`` (engine applied), then put
    them back as they were (engine applied)."""
    cluster = world.cluster
    saved = []
    for ns in namespaces:
        saved += cluster.request("GET", f"/apis/networking.k8s.io/v1/namespaces/{ns}/networkpolicies")["items"]
    for pol in saved:
        meta = pol["metadata"]
        base = f"/apis/networking.k8s.io/v1/namespaces/{meta['namespace']}/networkpolicies"
        cluster.request("DELETE", f"{base}/{meta['name']}")
    world.enforced()
    try:
        yield
    finally:
        for pol in saved:
            meta = pol["metadata"]
            body = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "spec": pol["spec"],
                    "metadata": {k: meta[k] for k in ("name", "namespace", "labels", "annotations") if k in meta}}
            cluster.request("POST", f"/apis/networking.k8s.io/v1/namespaces/{meta['namespace']}/networkpolicies", body)
        world.enforced()


def _listener(address: str) -> socket.socket:
    """A listening socket (the kernel completes handshakes: 'open' needs no accept loop)."""
    return socket.create_server((address, 0), backlog=64)


@pytest.fixture(scope="package")
def world(policy_cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Generator[World, None, None]:
    cluster = policy_cluster
    for ns, labels in ((INGRESS_NS, {}), (MONITORING_NS, {"wakegate.io/admin-access": "true"}), (STRANGER_NS, {})):
        cluster.request("POST", "/api/v1/namespaces",
                        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": labels}})
    install = gateway_install.install(
        cluster, tmp_path_factory.mktemp("install"),
        {"domain": DOMAIN, "trustedProxies": cluster.pod_cidr, "ingressNamespace": INGRESS_NS},
        components=["ingress-namespace"],
    )
    clients = {
        "ingress": client_pod("ingress", INGRESS_NS),
        "monitor": client_pod("prometheus", MONITORING_NS),
        "stranger": client_pod("stranger", STRANGER_NS),
        # In the gateway's namespace, but not the gateway: no gateway labels.
        "intruder": client_pod("intruder", GATEWAY_NS),
        # A stand-in for CoreDNS: the projects' DNS policy admits exactly these pods, on port 53.
        "dns": client_pod("coredns", "kube-system", {"k8s-app": "kube-dns"}, port=DNS_PORT),
    }
    for pod in clients.values():
        create_pod(cluster, pod)
    # Two projects kept awake (mode Running: the gateway wakes them without a request): one without
    # internet egress, one with.
    for name, extra in (("alpha", []), ("beta", ["--allow-internet"])):
        code, out, err = kube_cli(cluster, "create", name, "--image", ECHO, "--port", str(APP_PORT),
                                  "--mode", "Running", "--timeout", "120", *extra)
        assert code == 0, f"{out}\n{err}"
    pods = {role: ready_pod(cluster, pod["metadata"]["namespace"], name=pod["metadata"]["name"])
            for role, pod in clients.items()}
    for i, gw in enumerate(install.gateway_pods(cluster)):
        pods[f"gateway{i}"] = gw
    for name in ("alpha", "beta"):
        pods[name] = ready_pod(cluster, C.namespace_for(name), C.app_label_selector(name))
    public, private = _listener(cluster.gateway_ip), _listener(str(cluster.slot.private_address))
    world = World(cluster, install, pods, public.getsockname()[:2], private.getsockname()[:2])
    world.enforced()
    try:
        yield world
    finally:
        public.close()
        private.close()

