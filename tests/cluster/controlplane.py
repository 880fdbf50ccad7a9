"""A real Kubernetes control plane for tests: etcd, kube-apiserver, kube-controller-manager, node agent.

``python -m tests.cluster.controlplane up`` starts one into ``.cluster/`` (admin kubeconfig at
``.cluster/kubeconfig``, pids and ports in ``.cluster/state.json``); ``down`` stops it and removes
its state. The pytest fixture ``cluster`` (:mod:`tests.cluster.fixtures`) starts a private one per
test session with :meth:`Cluster.start`. Several instances can run side by side: each gets free
loopback ports, its own state directory and its own pod network slot (:mod:`tests.cluster.netalloc`).

Binaries come from ``tests/cluster/build.sh`` (cached outside the work tree). Needs root: pod
networking uses network namespaces, veth pairs and a bridge.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import yaml

from tests.cluster import netalloc, netpol

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
BUILD_SCRIPT = HERE / "build.sh"
GO_MOD = HERE / "k8sbuild" / "go.mod"
SYSTEM_KUBECTL = Path("/usr/bin/kubectl")
START_TIMEOUT = 120.0
#: Where the API server listens, on the host's address in the pod network (see :mod:`netalloc`).
API_SERVER_PORT = 6443
# Seconds between SIGTERM and SIGKILL. kube-apiserver stops listening at once on SIGTERM but can
# take a minute to drain long-running requests; nothing here needs that drain.
STOP_GRACE = {"network-policy": 5.0, "node-agent": 10.0, "controller-manager": 5.0, "apiserver": 2.0, "etcd": 5.0}
T = TypeVar("T")


class ClusterError(RuntimeError):
    """The control plane failed to start or to answer; the message carries the log tails."""


class ApiStatusError(RuntimeError):
    """An apiserver request answered with a non-2xx status."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(f"HTTP {status}: {body.get('message', body)}")
        self.status = status
        self.body = body


def k8s_version() -> str:
    for line in GO_MOD.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "k8s.io/kubernetes" and parts[1].startswith("v"):
            return parts[1]
    raise RuntimeError(f"no k8s.io/kubernetes requirement in {GO_MOD}")


def bin_dir() -> Path:
    root = Path(os.environ.get("WAKEGATE_K8S_CACHE") or Path.home() / ".cache" / "wakegate")
    return root / f"k8s-{k8s_version()}"


def ensure_binaries() -> Path:
    """Build the binaries unless they are cached (quick when they are)."""
    out = bin_dir()
    if not all((out / b).exists() for b in ("kube-apiserver", "kube-controller-manager", "etcd", "kubectl")):
        subprocess.run(["bash", str(BUILD_SCRIPT)], check=True)
    return out


def wait_for(what: str, check: Callable[[], bool], timeout: float, interval: float = 0.1) -> None:
    """Poll ``check`` until true (a ClusterError from it ends the wait); TimeoutError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except ClusterError:
            raise
        except Exception:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def port_free(host: str, port: int) -> bool:
    """Whether a listener (with SO_REUSEADDR, as Go's and etcd's) can bind ``host:port`` now."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(avoid: set[int], host: str = "127.0.0.1") -> int:
    """A free TCP port below the ephemeral range (so outgoing connections cannot take it)."""
    for _ in range(200):
        port = random.randint(20000, 32000)
        if port in avoid or not port_free(host, port):
            continue
        avoid.add(port)
        return port
    raise RuntimeError(f"no free port found on {host}")


# --- PKI ------------------------------------------------------------------------------------------


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_pki(pki: Path, service_ip: str, host_ip: str) -> None:
    """CA, apiserver serving cert, client certs (admin, controller-manager), service-account keys."""
    pki.mkdir(parents=True, exist_ok=True)

    def key(name: str) -> None:
        _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", f"{name}.key", cwd=pki)

    key("ca")
    _openssl(
        "req", "-x509", "-new", "-key", "ca.key", "-subj", "/CN=wakegate-test-ca", "-days", "3650",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
        "-out", "ca.crt", cwd=pki,
    )  # fmt: skip
    sans = f"IP:127.0.0.1,IP:{host_ip},IP:{service_ip},DNS:localhost,DNS:kubernetes,DNS:kubernetes.default"
    sans += ",DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
    leaves = {
        "apiserver": ("/CN=kube-apiserver", f"extendedKeyUsage=serverAuth\nsubjectAltName={sans}"),
        "admin": ("/O=system:masters/CN=wakegate-admin", "extendedKeyUsage=clientAuth"),
        "controller-manager": ("/CN=system:kube-controller-manager", "extendedKeyUsage=clientAuth"),
    }
    for name, (subject, ext) in leaves.items():
        key(name)
        (pki / f"{name}.ext").write_text(f"keyUsage=critical,digitalSignature,keyEncipherment\n{ext}\n")
        _openssl("req", "-new", "-key", f"{name}.key", "-subj", subject, "-out", f"{name}.csr", cwd=pki)
        _openssl(
            "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-set_serial", str(random.getrandbits(63)), "-days", "3650",
            "-extfile", f"{name}.ext", "-out", f"{name}.crt", cwd=pki,
        )  # fmt: skip
    key("sa")
    _openssl("pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=pki)


def kubeconfig(server: str, ca: Path, user: dict[str, str], name: str = "wakegate-test") -> str:
    """A single-context kubeconfig with the CA embedded; ``user`` is its ``users[].user`` entry."""
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": name,
                "cluster": {
                    "server": server,
                    "certificate-authority-data": base64.b64encode(ca.read_bytes()).decode(),
                },
            }
        ],
        "users": [{"name": name, "user": user}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": name}}],
        "current-context": name,
    }
    return yaml.safe_dump(doc, sort_keys=False)


def cert_user(pki: Path, name: str) -> dict[str, str]:
    return {
        "client-certificate-data": base64.b64encode((pki / f"{name}.crt").read_bytes()).decode(),
        "client-key-data": base64.b64encode((pki / f"{name}.key").read_bytes()).decode(),
    }


# --- processes ------------------------------------------------------------------------------------


@dataclass
class Component:
    """One control-plane process: how to start it, where it logs, which pid it has."""

    name: str
    argv: list[str]
    log: Path
    pid: int = 0
    start_time: int = 0
    env: dict[str, str] | None = field(default=None, repr=False)
    cwd: str | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def ref(self) -> netalloc.ProcRef:
        return netalloc.ProcRef(self.pid, self.start_time)

    def alive(self) -> bool:
        if self.proc is not None and self.proc.pid == self.pid:
            return self.proc.poll() is None  # our child: poll() also reaps it
        return self.pid != 0 and self.ref().alive()

    def launch(self, tie_to_parent: bool) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        argv = self.argv
        if tie_to_parent:  # die with the pytest process even if it is killed
            argv = ["setpriv", "--pdeathsig", "KILL", "--", *argv]
        with open(self.log, "ab") as out:
            out.write(f"--- {time.strftime('%H:%M:%S')} starting: {' '.join(self.argv)}\n".encode())
            out.flush()
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=self.env,
                cwd=self.cwd,
            )
        self.proc = proc
        self.pid = proc.pid
        self.start_time = netalloc.proc_start_time(proc.pid) or 0

    def stop(self) -> None:
        timeout = STOP_GRACE.get(self.name, 5.0)
        if not self.alive():
            self.pid = 0
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGTERM)
        try:
            wait_for(f"{self.name} to exit", lambda: not self.alive(), timeout, 0.05)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)
            wait_for(f"{self.name} to die", lambda: not self.alive(), 5.0, 0.05)
        self.pid = 0

    def tail(self, lines: int = 30) -> str:
        try:
            text = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return f"=== {self.name}: no log at {self.log}"
        return "\n".join([f"=== {self.name} ({self.log}), last {lines} lines:", *text[-lines:]])

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "argv": self.argv, "log": str(self.log), "pid": self.pid, "start": self.start_time}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Component:
        return cls(raw["name"], list(raw["argv"]), Path(raw["log"]), int(raw["pid"]), int(raw["start"]))


# --- the cluster ----------------------------------------------------------------------------------


@dataclass
class Cluster:
    """A running control plane plus node agent.

    Attributes:
        state_dir: everything of this instance: ``pki/``, ``etcd/``, ``logs/<component>.log``,
            ``pods/<ns>_<pod>_<uid>/<container>.log`` (container stdout/stderr), kubeconfigs.
        kubeconfig: admin kubeconfig (client cert in ``system:masters``).
        server: ``https://<gateway_ip>:6443`` (another port if 6443 is taken there); ``ca_file``: the
            cluster CA (PEM). Pods reach the API server at the same address.
        pod_cidr: this cluster's pod network (a /24 of 198.18.0.0/16, split between nodes when
            there are several); ``service_cidr``: ClusterIP range (unreachable: no kube-proxy).
        gateway_ip: the host's address on the pod bridge (pods reach host services there).
        bridge: the host's link into the pod bridge; node_names: the fake nodes; version: the
            Kubernetes version.
        bin_dir: where kube-apiserver, kube-controller-manager, kubectl and etcd live.
    """

    state_dir: Path
    slot: netalloc.Slot
    version: str
    bin_dir: Path
    ports: dict[str, int]
    node_names: list[str]
    components: dict[str, Component] = field(default_factory=dict)
    detached: bool = False
    network_policies: bool = False

    def __repr__(self) -> str:
        return f"Cluster(server={self.server!r}, pod_cidr={self.pod_cidr!r}, state_dir='{self.state_dir}')"

    # -- derived attributes --

    @property
    def server(self) -> str:
        return f"https://{self.gateway_ip}:{self.ports['apiserver']}"

    @property
    def kubeconfig(self) -> Path:
        return self.state_dir / "kubeconfig"

    @property
    def pki(self) -> Path:
        return self.state_dir / "pki"

    @property
    def ca_file(self) -> Path:
        return self.pki / "ca.crt"

    @property
    def logs_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def pod_cidr(self) -> str:
        return str(self.slot.pod_subnet)

    @property
    def service_cidr(self) -> str:
        return str(self.slot.service_subnet)

    @property
    def gateway_ip(self) -> str:
        return str(self.slot.gateway)

    @property
    def bridge(self) -> str:
        return self.slot.bridge

    @property
    def kubectl_path(self) -> Path:
        own = self.bin_dir / "kubectl"
        return own if own.exists() else SYSTEM_KUBECTL

    # -- lifecycle --

    @classmethod
    def start(
        cls, state_dir: Path | None = None, *, nodes: int = 1, detached: bool = False, network_policies: bool = False
    ) -> Cluster:
        """Start a fresh cluster. ``detached`` ones outlive this process (``make cluster-up``);
        ``network_policies`` ones enforce NetworkPolicies (:mod:`tests.cluster.netpol`)."""
        if os.geteuid() != 0:
            raise ClusterError("the test cluster needs root (network namespaces, bridges)")
        bins = ensure_binaries()
        if state_dir is None:
            state_dir = Path(tempfile.mkdtemp(prefix="wakegate-cluster-"))
        state_dir = state_dir.resolve()
        state_dir.mkdir(parents=True, exist_ok=True)
        slot = netalloc.allocate(state_dir, owner=os.getpid())
        suffix = f"{slot.index}-{os.urandom(2).hex()}"
        node_names = [f"wg-node-{suffix}" + (f"-{i}" if nodes > 1 else "") for i in range(nodes)]
        cluster = cls(
            state_dir, slot, k8s_version(), bins, {}, node_names, detached=detached, network_policies=network_policies
        )
        try:
            cluster._boot()
        except BaseException:
            tails = cluster.logs_tail()
            cluster.stop(keep_state=True)
            raise ClusterError(f"cluster failed to start (state in {state_dir})\n{tails}") from None
        return cluster

    def _boot(self) -> None:
        started = time.monotonic()
        service_ip = str(self.slot.service_subnet.network_address + 1)
        make_pki(self.pki, service_ip, self.gateway_ip)
        self._start_etcd()
        self._start_apiserver_with_retry()
        self.kubeconfig.write_text(kubeconfig(self.server, self.ca_file, cert_user(self.pki, "admin")))
        kcm_config = self.state_dir / "controller-manager.kubeconfig"
        kcm_config.write_text(kubeconfig(self.server, self.ca_file, cert_user(self.pki, "controller-manager")))
        self._launch("controller-manager", self._kcm_argv(kcm_config))
        self._launch("node-agent", self._agent_argv(), env=self._agent_env(), cwd=str(REPO))
        deadline = START_TIMEOUT - (time.monotonic() - started)
        wait_for("the default ServiceAccount (controller-manager)", self._has_default_sa, max(deadline, 10))
        wait_for("the nodes to be Ready (node agent)", self._nodes_ready, max(deadline, 10))
        if self.network_policies:
            self._start_policy_engine()
        self._save()

    def _start_policy_engine(self) -> None:
        argv = netpol.argv(
            netpol.binary(),
            node_netns=self.slot.node_netns,
            kubeconfig=self.kubeconfig,
            node_name=self.node_names[0],  # every fake node has the same address: one engine serves all
            service_cidr=self.service_cidr,
        )
        self._launch("network-policy", argv)
        comp = self.components["network-policy"]
        health = f"http://{self.slot.node_address}:{netpol.HEALTH_PORT}/healthz"

        def enforcing() -> bool:
            if not comp.alive():
                raise ClusterError(f"the NetworkPolicy engine (kube-router) exited:\n{comp.tail(30)}")
            with urllib.request.urlopen(health, timeout=2) as resp:
                healthy = resp.status == 200
            return healthy and ":KUBE-ROUTER-FORWARD" in netpol.filter_rules(self.slot.node_netns)

        wait_for("the NetworkPolicy engine (kube-router) to program the node", enforcing, START_TIMEOUT)

    def policy_engine_running(self) -> bool:
        """True while this cluster's NetworkPolicy engine runs (and it was asked for one)."""
        comp = self.components.get("network-policy")
        return self.network_policies and comp is not None and comp.alive()

    def _launch(self, name: str, argv: list[str], env: dict[str, str] | None = None, cwd: str | None = None) -> None:
        comp = Component(name, argv, self.logs_dir / f"{name}.log", env=env, cwd=cwd)
        # The parent-death signal fires when the *thread* that forked exits: only tie components to
        # the main thread (a worker thread may exit while the cluster is still in use).
        main_thread = threading.current_thread() is threading.main_thread()
        comp.launch(tie_to_parent=not self.detached and main_thread)
        self.components[name] = comp
        self._save()

    def _start_etcd(self) -> None:
        for attempt in range(3):
            avoid = set(self.ports.values())
            self.ports["etcd"], self.ports["etcd-peer"] = free_port(avoid), free_port(avoid)
            client, peer = f"http://127.0.0.1:{self.ports['etcd']}", f"http://127.0.0.1:{self.ports['etcd-peer']}"
            argv = [
                str(self.bin_dir / "etcd"),
                "--name=wakegate",
                f"--data-dir={self.state_dir / 'etcd'}",
                f"--listen-client-urls={client}",
                f"--advertise-client-urls={client}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=wakegate={peer}",
                "--unsafe-no-fsync",
                "--quota-backend-bytes=2147483648",
                "--log-level=warn",
            ]
            self._launch("etcd", argv)
            try:
                wait_for("etcd /health", partial(_etcd_healthy, f"{client}/health"), 30)
                return
            except TimeoutError:
                if attempt == 2 or "address already in use" not in self.components["etcd"].tail(50):
                    raise
                self.components["etcd"].stop()
                shutil.rmtree(self.state_dir / "etcd", ignore_errors=True)

    def _apiserver_argv(self) -> list[str]:
        pki = self.pki
        return [
            str(self.bin_dir / "kube-apiserver"),
            f"--etcd-servers=http://127.0.0.1:{self.ports['etcd']}",
            f"--bind-address={self.gateway_ip}",
            f"--secure-port={self.ports['apiserver']}",
            f"--advertise-address={self.gateway_ip}",
            f"--service-cluster-ip-range={self.service_cidr}",
            f"--cert-dir={self.state_dir / 'apiserver'}",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NamespaceLifecycle,LimitRanger,ServiceAccount,PodSecurity,"
            "ResourceQuota,NodeRestriction,DefaultTolerationSeconds,MutatingAdmissionWebhook,"
            "ValidatingAdmissionWebhook,ValidatingAdmissionPolicy",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            "--allow-privileged=true",
            "--profiling=false",
        ]

    def _start_apiserver_with_retry(self) -> None:
        for attempt in range(3):
            # 6443 like a real control plane (the gateway's NetworkPolicy admits egress to 443 and
            # 6443); each cluster listens on its own address, so several can use it side by side.
            if attempt == 0 and port_free(self.gateway_ip, API_SERVER_PORT):
                self.ports["apiserver"] = API_SERVER_PORT
            else:
                self.ports["apiserver"] = free_port(set(self.ports.values()), self.gateway_ip)
            try:
                self._start_apiserver()
                return
            except (TimeoutError, ClusterError):
                comp = self.components.get("apiserver")
                if attempt == 2 or comp is None or "address already in use" not in comp.tail(50):
                    raise
                comp.stop()

    def _start_apiserver(self) -> None:
        self._launch("apiserver", self._apiserver_argv())
        comp = self.components["apiserver"]

        def ready() -> bool:
            if not comp.alive():
                raise ClusterError("kube-apiserver exited")
            return bool(self.request("GET", "/readyz", raw=True) == b"ok")

        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                if ready():
                    return
            except ClusterError:
                raise
            except Exception:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("timed out waiting for kube-apiserver /readyz")
            time.sleep(0.2)

    def _kcm_argv(self, config: Path) -> list[str]:
        pki = self.pki
        return [
            str(self.bin_dir / "kube-controller-manager"),
            f"--kubeconfig={config}",
            "--secure-port=0",
            "--leader-elect=false",
            "--controllers=*,-nodelifecycle",
            "--use-service-account-credentials=true",
            f"--service-account-private-key-file={pki / 'sa.key'}",
            f"--root-ca-file={pki / 'ca.crt'}",
            f"--cluster-signing-cert-file={pki / 'ca.crt'}",
            f"--cluster-signing-key-file={pki / 'ca.key'}",
            f"--service-cluster-ip-range={self.service_cidr}",
            "--concurrent-deployment-syncs=10",
            "--concurrent-replicaset-syncs=10",
            "--concurrent-service-endpoint-syncs=10",
            "--endpointslice-updates-batch-period=0s",
        ]

    def _agent_argv(self) -> list[str]:
        argv = [
            sys.executable,
            "-m",
            "tests.cluster.node_agent",
            f"--kubeconfig={self.kubeconfig}",
            f"--subnet={self.pod_cidr}",
            f"--node-netns={self.slot.node_netns}",
            f"--slot={self.slot.index}",
            f"--state-dir={self.state_dir}",
        ]
        return argv + [f"--node={n}" for n in self.node_names]

    def _agent_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
        env["PYTHONPATH"] = str(REPO)
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def _has_default_sa(self) -> bool:
        self.request("GET", "/api/v1/namespaces/default/serviceaccounts/default")
        return True

    def _nodes_ready(self) -> bool:
        for name in self.node_names:
            node = self.request("GET", f"/api/v1/nodes/{name}")
            conds = {c["type"]: c["status"] for c in node.get("status", {}).get("conditions", [])}
            if conds.get("Ready") != "True":
                return False
        return True

    def stop(self, keep_state: bool = False) -> None:
        """Stop every component (node agent first, so pods end cleanly) and free the pod network."""
        for name in ("network-policy", "node-agent", "controller-manager", "apiserver", "etcd"):
            comp = self.components.get(name)
            if comp is not None:
                with contextlib.suppress(Exception):
                    comp.stop()
        netalloc.release(self.slot)
        if not keep_state and not os.environ.get("WAKEGATE_CLUSTER_KEEP"):
            shutil.rmtree(self.state_dir, ignore_errors=True)

    def stop_apiserver(self) -> None:
        """Stop only kube-apiserver (SIGTERM, SIGKILL after 2 s); everything else keeps running."""
        self.components["apiserver"].stop()

    def start_apiserver(self) -> None:
        """Restart kube-apiserver on the same port with the same etcd data; wait for /readyz."""
        self._start_apiserver()
        self._save()

    def alive(self) -> bool:
        return all(c.alive() for c in self.components.values())

    # -- state file --

    def _save(self) -> None:
        self.slot.procs = [c.ref() for c in self.components.values() if c.pid]
        self.slot.save()
        state = {
            "state_dir": str(self.state_dir),
            "version": self.version,
            "bin_dir": str(self.bin_dir),
            "server": self.server if "apiserver" in self.ports else "",
            "kubeconfig": str(self.kubeconfig),
            "pod_cidr": self.pod_cidr,
            "service_cidr": self.service_cidr,
            "gateway_ip": self.gateway_ip,
            "bridge": self.bridge,
            "nodes": self.node_names,
            "ports": self.ports,
            "slot": self.slot.index,
            "owner": self.slot.owner.to_json(),
            "detached": self.detached,
            "network_policies": self.network_policies,
            "components": {n: c.to_json() for n, c in self.components.items()},
        }
        tmp = self.state_dir / "state.json.tmp"
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(self.state_dir / "state.json")

    @classmethod
    def load(cls, state_dir: Path) -> Cluster:
        """Attach to a cluster started elsewhere (e.g. by ``make cluster-up``)."""
        raw = json.loads((state_dir / "state.json").read_text())
        slot = netalloc.Slot(
            index=int(raw["slot"]),
            state_dir=raw["state_dir"],
            owner=netalloc.ProcRef.from_json(raw["owner"]),
        )
        comps = {n: Component.from_json(c) for n, c in raw["components"].items()}
        slot.procs = [c.ref() for c in comps.values() if c.pid]
        return cls(
            Path(raw["state_dir"]),
            slot,
            raw["version"],
            Path(raw["bin_dir"]),
            {k: int(v) for k, v in raw["ports"].items()},
            list(raw["nodes"]),
            comps,
            detached=bool(raw["detached"]),
            network_policies=bool(raw.get("network_policies")),
        )

    # -- talking to it --

    def _ssl(self, client_cert: bool = True) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        if client_cert:
            ctx.load_cert_chain(str(self.pki / "admin.crt"), str(self.pki / "admin.key"))
        return ctx

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        content_type: str = "application/json",
        raw: bool = False,
        timeout: float = 10.0,
        token: str | None = None,
    ) -> Any:
        """An API request as admin (or with a bearer ``token``).

        Returns the decoded JSON (bytes if ``raw``); raises ApiStatusError on a non-2xx answer.
        """
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.server + path, data=data, method=method)
        req.add_header("Accept", "application/json")
        if token is not None:
            req.add_header("Authorization", f"Bearer {token}")
        if data is not None:
            req.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(req, context=self._ssl(token is None), timeout=timeout) as resp:
                payload: bytes = resp.read()
        except urllib.error.HTTPError as exc:
            text = exc.read()
            try:
                info = json.loads(text)
            except ValueError:
                info = {"message": text.decode(errors="replace")}
            raise ApiStatusError(exc.code, info) from None
        if raw:
            return payload
        return json.loads(payload) if payload else {}

    def kubectl(
        self,
        *args: str,
        check: bool = True,
        input: str | None = None,
        timeout: float = 60.0,
        kubeconfig: Path | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``kubectl --kubeconfig <admin> ARGS`` (the kubectl built with the server, if any).

        ``kubeconfig`` replaces the admin one, e.g. with :meth:`serviceaccount_kubeconfig`'s.
        """
        proc = subprocess.run(
            [str(self.kubectl_path), f"--kubeconfig={kubeconfig or self.kubeconfig}", *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise subprocess.CalledProcessError(proc.returncode, proc.args, proc.stdout, proc.stderr)
        return proc

    def watch_until(
        self,
        collection: str,
        predicate: Callable[[list[dict[str, Any]]], T | None],
        timeout: float = 60.0,
        **selectors: str,
    ) -> T:
        """List ``collection`` (an API path such as ``/api/v1/namespaces/x/pods``), then watch it.

        ``predicate`` gets the current items after the list and after every event until it returns
        something other than None, which is returned. ``selectors``: ``labelSelector``,
        ``fieldSelector``. TimeoutError (with the last items) after ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        query = urllib.parse.urlencode(selectors)
        listing = self.request("GET", f"{collection}?{query}")
        items = {i["metadata"]["uid"]: i for i in listing.get("items", [])}
        rv = listing["metadata"]["resourceVersion"]
        while True:
            result = predicate(list(items.values()))
            if result is not None:
                return result
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                names = [i["metadata"]["name"] for i in items.values()]
                raise TimeoutError(f"timed out after {timeout:.0f}s watching {collection}; items: {names}")
            params = {**selectors, "watch": "1", "resourceVersion": rv, "allowWatchBookmarks": "true"}
            params["timeoutSeconds"] = str(max(1, int(remaining)))
            req = urllib.request.Request(f"{self.server}{collection}?{urllib.parse.urlencode(params)}")
            try:
                with urllib.request.urlopen(req, context=self._ssl(), timeout=remaining + 5) as resp:
                    for line in resp:
                        event = json.loads(line)
                        obj = event["object"]
                        if event["type"] == "ERROR":
                            if obj.get("code") == 410:  # resourceVersion too old: list again
                                return self.watch_until(
                                    collection, predicate, max(1.0, deadline - time.monotonic()), **selectors
                                )
                            raise ApiStatusError(int(obj.get("code", 500)), obj)
                        rv = obj["metadata"]["resourceVersion"]
                        if event["type"] == "DELETED":
                            items.pop(obj["metadata"]["uid"], None)
                        elif event["type"] in ("ADDED", "MODIFIED"):
                            items[obj["metadata"]["uid"]] = obj
                        else:
                            continue
                        result = predicate(list(items.values()))
                        if result is not None:
                            return result
            except (TimeoutError, urllib.error.URLError, ConnectionError):
                if time.monotonic() > deadline:
                    continue  # reported by the check at the top
                time.sleep(0.2)

    def serviceaccount_token(self, namespace: str, name: str, expiration_seconds: int = 86400) -> str:
        """A bound token for the ServiceAccount (TokenRequest API)."""
        body: dict[str, Any] = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"expirationSeconds": expiration_seconds},
        }
        resp = self.request("POST", f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token", body)
        return str(resp["status"]["token"])

    def serviceaccount_kubeconfig(self, namespace: str, name: str) -> Path:
        """A kubeconfig authenticating as ``system:serviceaccount:<namespace>:<name>``."""
        token = self.serviceaccount_token(namespace, name)
        path = self.state_dir / f"sa-{namespace}-{name}.kubeconfig"
        path.write_text(kubeconfig(self.server, self.ca_file, {"token": token}, name=f"{namespace}-{name}"))
        return path

    def env(self) -> dict[str, str]:
        """``os.environ`` plus ``KUBECONFIG`` pointing at the admin kubeconfig."""
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig)}

    def pod_log(self, namespace: str, pod: str, container: str | None = None) -> str:
        """stdout/stderr of a pod's container (there is no ``kubectl logs`` without a kubelet API)."""
        dirs = sorted((self.state_dir / "pods").glob(f"{namespace}_{pod}_*"), key=lambda p: p.stat().st_mtime)
        if not dirs:
            return ""
        files = sorted(dirs[-1].glob(f"{container or '*'}.log"))
        return "".join(f.read_text(errors="replace") for f in files)

    def logs_tail(self, lines: int = 40) -> str:
        """The last lines of every component's log, for failure reports."""
        return "\n".join(c.tail(lines) for c in self.components.values())


def _etcd_healthy(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as resp:
        return b'"health":"true"' in resp.read()


# --- CLI ------------------------------------------------------------------------------------------


def cmd_up(state_dir: Path, network_policies: bool = False) -> int:
    if (state_dir / "state.json").exists():
        try:
            existing = Cluster.load(state_dir)
            if existing.alive() and existing.request("GET", "/readyz", raw=True) == b"ok":
                print(f"cluster already up: {existing.server} (kubeconfig {existing.kubeconfig})")
                return 0
        except Exception as exc:
            print(f"existing cluster state is unusable ({exc}); restarting")
        cmd_down(state_dir)
    started = time.monotonic()
    try:
        cluster = Cluster.start(state_dir, detached=True, network_policies=network_policies)
    except ClusterError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(
        f"cluster up in {time.monotonic() - started:.1f}s: Kubernetes {cluster.version} at {cluster.server}\n"
        f"  kubeconfig: {cluster.kubeconfig}\n"
        f"  pods: {cluster.pod_cidr} on bridge {cluster.bridge} (host {cluster.gateway_ip}), "
        f"nodes: {', '.join(cluster.node_names)}\n"
        f"  logs: {cluster.logs_dir}"
    )
    return 0


def cmd_down(state_dir: Path) -> int:
    if (state_dir / "state.json").exists():
        try:
            Cluster.load(state_dir).stop(keep_state=True)
        except Exception as exc:
            print(f"warning: {exc}", file=sys.stderr)
        print(f"cluster in {state_dir} stopped")
    netalloc.reap()
    shutil.rmtree(state_dir, ignore_errors=True)
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description="Start or stop the local test cluster.")
    parser.add_argument("command", choices=["up", "down"])
    parser.add_argument("--state-dir", type=Path, default=Path(".cluster"))
    parser.add_argument("--network-policies", action="store_true",
                        help="enforce NetworkPolicies (kube-router in the node's namespace)")
    args = parser.parse_args()
    state_dir = args.state_dir.resolve()
    sys.exit(cmd_up(state_dir, args.network_policies) if args.command == "up" else cmd_down(state_dir))


if __name__ == "__main__":
    main()
