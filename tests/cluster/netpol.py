"""The test cluster's NetworkPolicy engine: kube-router's network-policy controller, in the node's namespace.

kube-router (built by ``tests/cluster/build.sh netpol`` from the pins in ``netpolbuild/go.mod``) runs
with ``--run-firewall`` only — no routing, no service proxy — inside the node namespace ``wgn<slot>``
(:mod:`tests.cluster.netalloc`). It watches pods, namespaces and NetworkPolicies on the test API
server and programs that namespace's iptables and ipsets; bridge netfilter hands it every packet
between pods (and between pods and this machine), as on a node with a bridge CNI. Traffic from the
node's own address (kubelet's probes, here the node agent's) is admitted, as kube-router does.

:func:`wait_enforced` waits until the engine's rules reflect what the API says now (each pod's
firewall chain runs through exactly the policies that select it), so a test asserts on packets only
after the engine has acted.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
GO_MOD = HERE / "netpolbuild" / "go.mod"
BUILD_SCRIPT = HERE / "build.sh"
HEALTH_PORT = 20244
SYNC_PERIOD = "1m"

Obj = dict[str, Any]


def version() -> str:
    """The pinned kube-router version (netpolbuild/go.mod)."""
    m = re.search(r"github\.com/cloudnativelabs/kube-router/v2 (v\S+)", GO_MOD.read_text())
    assert m, f"no kube-router requirement in {GO_MOD}"
    return m.group(1)


def binary() -> Path:
    """kube-router, built (once, cached) by build.sh."""
    out = subprocess.run(["bash", str(BUILD_SCRIPT), "netpol"], capture_output=True, text=True, timeout=3600)
    if out.returncode != 0:
        raise RuntimeError(f"building kube-router failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    path = Path(out.stdout.strip().splitlines()[-1]) / "kube-router"
    assert path.is_file(), f"build.sh netpol did not produce {path}"
    return path


def argv(binary: Path, *, node_netns: str, kubeconfig: Path, node_name: str, service_cidr: str) -> list[str]:
    """The engine's command line: kube-router's policy controller alone, in the node's namespace."""
    return [
        "nsenter", f"--net=/run/netns/{node_netns}", "--",
        str(binary),
        "--run-firewall=true",
        "--run-router=false",
        "--run-service-proxy=false",
        "--enable-cni=false",
        "--enable-ipv6=false",
        f"--kubeconfig={kubeconfig}",
        f"--hostname-override={node_name}",
        f"--service-cluster-ip-range={service_cidr}",
        f"--health-port={HEALTH_PORT}",
        f"--iptables-sync-period={SYNC_PERIOD}",
        "--v=1",
    ]  # fmt: skip


def filter_rules(node_netns: str) -> str:
    """``iptables-save -t filter`` of the node namespace."""
    out = subprocess.run(
        ["nsenter", f"--net=/run/netns/{node_netns}", "iptables-save", "-t", "filter"],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    return out.stdout


# --- what the engine has applied (pure) --------------------------------------------------------

_FORWARD_JUMP = re.compile(r"^-A KUBE-ROUTER-FORWARD -d (\S+)/32 .*-j (KUBE-POD-FW-\S+)$")
_POLICY_RULE = re.compile(r'^-A (KUBE-POD-FW-\S+) .*--comment "run through nw policy ([^"]+)"')


def applied_policies(rules: str) -> dict[str, set[str]]:
    """Pod IP -> names of the NetworkPolicies its firewall chain runs through (from iptables-save)."""
    chain_of: dict[str, str] = {}
    through: dict[str, set[str]] = {}
    for line in rules.splitlines():
        if m := _FORWARD_JUMP.match(line):
            chain_of[m.group(1)] = m.group(2)
        elif m := _POLICY_RULE.match(line):
            through.setdefault(m.group(1), set()).add(m.group(2))
    return {ip: through.get(chain, set()) for ip, chain in chain_of.items()}


def selects(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """A label selector (matchLabels and matchExpressions) against a pod's labels."""
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True


def expected_policies(pods: Iterable[Obj], policies: Iterable[Obj]) -> dict[str, set[str]]:
    """Pod IP -> names of the NetworkPolicies of its namespace that select it."""
    by_ns: dict[str, list[Obj]] = {}
    for pol in policies:
        by_ns.setdefault(pol["metadata"]["namespace"], []).append(pol)
    out = {}
    for pod in pods:
        ip = pod.get("status", {}).get("podIP")
        if not ip:
            continue
        labels = pod["metadata"].get("labels") or {}
        out[ip] = {
            p["metadata"]["name"]
            for p in by_ns.get(pod["metadata"]["namespace"], [])
            if selects(p["spec"].get("podSelector") or {}, labels)
        }
    return out


@dataclass(frozen=True)
class Mismatch:
    """A pod whose firewall chain does not (yet) match the API's policies."""

    ip: str
    want: frozenset[str]
    have: frozenset[str] | None  # None: no firewall chain for the pod yet

    def __str__(self) -> str:
        have = "no chain" if self.have is None else sorted(self.have)
        return f"{self.ip}: want {sorted(self.want)}, engine has {have}"


def mismatches(expected: Mapping[str, set[str]], applied: Mapping[str, set[str]]) -> list[Mismatch]:
    out = []
    for ip, want in sorted(expected.items()):
        have = applied.get(ip)
        if have is None or have != want:
            out.append(Mismatch(ip, frozenset(want), None if have is None else frozenset(have)))
    return out


# --- waiting on the engine ------------------------------------------------------------------------


def wait_enforced(cluster: Any, pods: Iterable[Obj], timeout_s: float = 120.0) -> None:
    """Wait until the engine's rules for ``pods`` (re-read from the API, so their IPs are current)
    match the NetworkPolicies that exist now. AssertionError naming the pods that differ on timeout."""
    keys = [(p["metadata"]["namespace"], p["metadata"]["name"]) for p in pods]
    deadline = time.monotonic() + timeout_s
    while True:
        current = [cluster.request("GET", f"/api/v1/namespaces/{ns}/pods/{name}") for ns, name in keys]
        policies = cluster.request("GET", "/apis/networking.k8s.io/v1/networkpolicies")["items"]
        missing_ip = [f"{p['metadata']['namespace']}/{p['metadata']['name']}" for p in current
                      if not p.get("status", {}).get("podIP")]
        applied = applied_policies(filter_rules(cluster.slot.node_netns))
        problems = mismatches(expected_policies(current, policies), applied)
        if not problems and not missing_ip:
            return
        if time.monotonic() > deadline:
            raise AssertionError(
                f"the NetworkPolicy engine did not apply the current policies within {timeout_s:.0f}s: "
                + "; ".join([*map(str, problems), *(f"{k}: no IP" for k in missing_ip)])
            )
        time.sleep(0.3)
