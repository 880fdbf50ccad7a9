"""Pod network slots for test clusters: allocation, host-side setup, and cleanup of leftovers.

Every cluster instance on this machine owns one *slot* N (0..255) of 198.18.0.0/15:

* the node: a network namespace ``wgnN`` that plays the node's host network. It holds the pod
  bridge ``cbr0`` (address 198.18.N.254, the node's own) and runs the NetworkPolicy engine when a
  cluster asks for one: pod-to-pod traffic is bridged there, and bridge netfilter
  (``bridge-nf-call-iptables``) hands it to that namespace's iptables, as on a real node;
* pods:     198.18.N.0/24 on that bridge; each pod's veth has its node end in ``wgnN``;
* this machine: a veth ``wgbrN`` from the host into the node's bridge, holding 198.18.N.1, the
  pods' default gateway. The API server listens there (pods reach it like a node's pods reach the
  control plane), and so can host processes that must appear as endpoints;
* a private address, 10.255.N.1 (a /32 on ``wgbrN``): stands for the private networks around a
  real cluster (VNet, peered networks), which a project's internet egress must never reach;
* services: 198.19.N.0/24, the apiserver's ``--service-cluster-ip-range``. Nothing implements
  ClusterIPs here (no kube-proxy), so that range gets an ``unreachable`` route and a connection to
  a ClusterIP fails at once instead of leaving the machine.

Packets arriving from the pods are never forwarded by the host (``conf/wgbrN/forwarding=0``) nor by
the node namespace (no IP forwarding), and nothing is NATed, so pod traffic stays between this
machine and its own namespaces. A slot is free when no route overlaps either range; if a route that
is not ours overlaps 198.18.0.0/15 at all, nothing is allocated. Allocations are recorded in
``/run/wakegate-cluster/slot-N.json`` under a file lock; slots whose processes are all dead are
reclaimed (host link, node namespace, route, pod namespaces and their processes).
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import shutil
import signal
import subprocess
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SUPERNET = ipaddress.IPv4Network("198.18.0.0/15")
SLOTS = 256
BRIDGE_PREFIX = "wgbr"  # the host's link into slot N's pod bridge: wgbr<slot>
NETNS_PREFIX = "wgp"  # pod namespaces are named wgp<slot>-<pod>
NODE_NETNS_PREFIX = "wgn"  # the node namespace of slot N: wgn<slot>
NODE_BRIDGE = "cbr0"  # the pod bridge, inside the node namespace
NODE_UPLINK = "uplink"  # the node end of the host link, a port of the pod bridge
ROUTE_PROTO = "177"  # marks the unreachable service-range routes we add
REGISTRY = Path(os.environ.get("WAKEGATE_CLUSTER_REGISTRY", "/run/wakegate-cluster"))


class NetworkConflict(RuntimeError):
    """198.18.0.0/15 is (partly) routed by something other than a test cluster on this machine."""


def pod_subnet(slot: int) -> ipaddress.IPv4Network:
    return ipaddress.IPv4Network(f"198.18.{slot}.0/24")


def service_subnet(slot: int) -> ipaddress.IPv4Network:
    return ipaddress.IPv4Network(f"198.19.{slot}.0/24")


def bridge_name(slot: int) -> str:
    """The host's link into the slot's pod bridge (a veth; its address is the pods' gateway)."""
    return f"{BRIDGE_PREFIX}{slot}"


def node_netns(slot: int) -> str:
    return f"{NODE_NETNS_PREFIX}{slot}"


def private_address(slot: int) -> ipaddress.IPv4Address:
    """An RFC 1918 address on this machine that pods of the slot can reach (if policies allow)."""
    return ipaddress.IPv4Address(f"10.255.{slot}.1")


def node_address(slot: int) -> ipaddress.IPv4Address:
    """The node namespace's own address on the pod bridge (the last host address of the slot)."""
    return pod_subnet(slot).broadcast_address - 1


@dataclass(frozen=True)
class Route:
    """One IPv4 route as printed by ``ip -j route show table all``."""

    dst: ipaddress.IPv4Network | None  # None for "default"
    dev: str = ""
    type: str = "unicast"
    protocol: str = ""

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Route:
        dst = raw.get("dst", "default")
        return cls(
            dst=None if dst == "default" else ipaddress.IPv4Network(dst, strict=False),
            dev=str(raw.get("dev", "")),
            type=str(raw.get("type", "unicast")),
            protocol=str(raw.get("protocol", "")),
        )

    @property
    def ours(self) -> bool:
        """Made by a test cluster: on one of our bridges, or our tagged unreachable service route."""
        if self.dev.startswith(BRIDGE_PREFIX):
            return True
        return (
            self.type == "unreachable"
            and self.protocol == ROUTE_PROTO
            and self.dst is not None
            and (self.dst.subnet_of(SUPERNET))
        )

    def overlaps(self, net: ipaddress.IPv4Network) -> bool:
        return self.dst is not None and self.dst.overlaps(net)


def parse_routes(text: str) -> list[Route]:
    return [Route.from_json(r) for r in json.loads(text or "[]")]


def current_routes() -> list[Route]:
    out = subprocess.run(
        ["ip", "-j", "-4", "route", "show", "table", "all"], check=True, capture_output=True, text=True
    ).stdout
    return parse_routes(out)


def foreign_conflicts(routes: Iterable[Route]) -> list[Route]:
    """Routes not made by us that overlap 198.18.0.0/15 (the default route does not count)."""
    return [r for r in routes if r.overlaps(SUPERNET) and not r.ours]


def free_slot(routes: Iterable[Route], taken: Iterable[int]) -> int | None:
    """The lowest slot that is neither taken nor overlapped by any route, or None."""
    routes = list(routes)
    if bad := foreign_conflicts(routes):
        raise NetworkConflict(
            f"{SUPERNET} is already routed on this machine ({', '.join(str(r.dst) for r in bad)}); "
            "refusing to create test pod networks there"
        )
    busy = set(taken)
    for slot in range(SLOTS):
        if slot in busy:
            continue
        if any(r.overlaps(pod_subnet(slot)) or r.overlaps(service_subnet(slot)) for r in routes):
            continue
        return slot
    return None


# --- process identity -------------------------------------------------------------------------


@dataclass(frozen=True)
class ProcRef:
    """A pid plus its start time, so a recycled pid is not mistaken for our process."""

    pid: int
    start: int

    @classmethod
    def of(cls, pid: int) -> ProcRef:
        return cls(pid, proc_start_time(pid) or 0)

    def alive(self) -> bool:
        return self.start != 0 and proc_start_time(self.pid) == self.start

    def to_json(self) -> dict[str, int]:
        return {"pid": self.pid, "start": self.start}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> ProcRef:
        return cls(int(raw["pid"]), int(raw["start"]))


def proc_start_time(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] == "Z":
        return None
    return int(fields[19])


# --- the registry -------------------------------------------------------------------------------


@dataclass
class Slot:
    """A slot allocated to one cluster instance, and the processes that keep it alive."""

    index: int
    state_dir: str
    owner: ProcRef  # the process that allocated the slot (pytest, or `controlplane up`)
    procs: list[ProcRef] = field(default_factory=list)

    @property
    def pod_subnet(self) -> ipaddress.IPv4Network:
        return pod_subnet(self.index)

    @property
    def service_subnet(self) -> ipaddress.IPv4Network:
        return service_subnet(self.index)

    @property
    def bridge(self) -> str:
        return bridge_name(self.index)

    @property
    def gateway(self) -> ipaddress.IPv4Address:
        return self.pod_subnet.network_address + 1

    @property
    def node_netns(self) -> str:
        return node_netns(self.index)

    @property
    def node_address(self) -> ipaddress.IPv4Address:
        return node_address(self.index)

    @property
    def private_address(self) -> ipaddress.IPv4Address:
        return private_address(self.index)

    @property
    def path(self) -> Path:
        return REGISTRY / f"slot-{self.index}.json"

    def alive(self) -> bool:
        return any(r.alive() for r in [self.owner, *self.procs])

    def save(self) -> None:
        data = {
            "index": self.index,
            "state_dir": self.state_dir,
            "owner": self.owner.to_json(),
            "procs": [p.to_json() for p in self.procs],
        }
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        tmp.replace(self.path)

    @classmethod
    def load(cls, path: Path) -> Slot:
        raw = json.loads(path.read_text())
        return cls(
            index=int(raw["index"]),
            state_dir=str(raw["state_dir"]),
            owner=ProcRef.from_json(raw["owner"]),
            procs=[ProcRef.from_json(p) for p in raw.get("procs", [])],
        )


@contextlib.contextmanager
def registry_lock() -> Iterator[None]:
    REGISTRY.mkdir(parents=True, exist_ok=True)
    with open(REGISTRY / "lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _run(*argv: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), check=check, capture_output=True, text=True, input=input)


def _links() -> list[str]:
    out = _run("ip", "-j", "link", "show").stdout
    return [str(link["ifname"]) for link in json.loads(out or "[]")]


def _netns() -> list[str]:
    out = _run("ip", "-j", "netns", "list", check=False).stdout
    return [str(ns["name"]) for ns in json.loads(out or "[]")] if out.strip() else []


def slot_netns(names: Iterable[str], slot: int) -> list[str]:
    return [n for n in names if n.startswith(f"{NETNS_PREFIX}{slot}-")]


def remove_netns(name: str) -> None:
    """Kill every process left in a pod namespace, then delete it."""
    pids = _run("ip", "netns", "pids", name, check=False).stdout.split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)
    _run("ip", "netns", "delete", name, check=False)


def teardown_network(slot: int) -> None:
    """Remove the pod namespaces, the node namespace (and its engine), the host link and the
    service route of a slot (best effort)."""
    names = _netns()
    for ns in slot_netns(names, slot):
        remove_netns(ns)
    if node_netns(slot) in names:
        remove_netns(node_netns(slot))
    _run("ip", "link", "delete", bridge_name(slot), check=False)
    _run("ip", "route", "delete", "unreachable", str(service_subnet(slot)), "proto", ROUTE_PROTO, check=False)


def _reap_locked() -> set[int]:
    """Reclaim slots of dead instances and stray bridges/namespaces; return the live slots."""
    live: set[int] = set()
    for path in sorted(REGISTRY.glob("slot-*.json")):
        try:
            slot = Slot.load(path)
        except (OSError, ValueError, KeyError):
            path.unlink(missing_ok=True)
            continue
        if slot.alive():
            live.add(slot.index)
            continue
        for ref in slot.procs:
            with contextlib.suppress(ProcessLookupError):
                if ref.alive():
                    os.kill(ref.pid, signal.SIGKILL)
        teardown_network(slot.index)
        if Path(slot.state_dir).name.startswith("wakegate-cluster-"):
            shutil.rmtree(slot.state_dir, ignore_errors=True)
        path.unlink(missing_ok=True)
    for link in _links():
        suffix = link[len(BRIDGE_PREFIX) :]
        if link.startswith(BRIDGE_PREFIX) and suffix.isdigit() and int(suffix) not in live:
            teardown_network(int(suffix))
    for ns in _netns():
        head = ns.split("-", 1)[0][len(NETNS_PREFIX) :]
        if ns.startswith(NETNS_PREFIX) and head.isdigit() and int(head) not in live:
            remove_netns(ns)
        node = ns[len(NODE_NETNS_PREFIX) :]
        if ns.startswith(NODE_NETNS_PREFIX) and node.isdigit() and int(node) not in live:
            remove_netns(ns)
    return live


def reap() -> None:
    """Clean up after crashed instances (their owner and processes are all dead)."""
    with registry_lock():
        _reap_locked()


def allocate(state_dir: Path, owner: int) -> Slot:
    """Reserve a slot and create its network: node namespace and bridge, host link, service route."""
    with registry_lock():
        live = _reap_locked()
        index = free_slot(current_routes(), live)
        if index is None:
            raise NetworkConflict(f"no free /24 left in {SUPERNET} for another test cluster")
        slot = Slot(index=index, state_dir=str(state_dir), owner=ProcRef.of(owner))
        slot.save()
        try:
            _create_network(slot)
        except (subprocess.CalledProcessError, OSError) as exc:
            teardown_network(index)
            slot.path.unlink(missing_ok=True)
            detail = exc.stderr if isinstance(exc, subprocess.CalledProcessError) else str(exc)
            raise RuntimeError(f"could not set up the pod network {slot.pod_subnet}: {detail}") from exc
        return slot


def _create_network(slot: Slot) -> None:
    host_link, node, prefix = slot.bridge, slot.node_netns, slot.pod_subnet.prefixlen
    _run("ip", "netns", "add", node)
    _run("ip", "link", "add", host_link, "type", "veth", "peer", "name", NODE_UPLINK, "netns", node)
    _run("ip", "addr", "add", f"{slot.gateway}/{prefix}", "dev", host_link)
    _run("ip", "addr", "add", f"{slot.private_address}/32", "dev", host_link)
    _run("ip", "link", "set", host_link, "up")
    Path(f"/proc/sys/net/ipv4/conf/{host_link}/forwarding").write_text("0\n")
    _run(
        "ip", "-n", node, "-batch", "-",
        input=(
            "link set lo up\n"
            f"link add {NODE_BRIDGE} type bridge\n"
            f"link set {NODE_UPLINK} master {NODE_BRIDGE}\n"
            f"link set {NODE_UPLINK} up\n"
            f"addr add {slot.node_address}/{prefix} dev {NODE_BRIDGE}\n"
            f"link set {NODE_BRIDGE} up\n"
        ),
    )
    # Bridged pod-to-pod packets go through this namespace's iptables (what a policy engine on a
    # node with a bridge CNI relies on); the node namespace routes nothing.
    _run(
        "nsenter", f"--net=/run/netns/{node}", "sh", "-c",
        "echo 1 > /proc/sys/net/bridge/bridge-nf-call-iptables && echo 0 > /proc/sys/net/ipv4/ip_forward",
    )
    _run("ip", "route", "add", "unreachable", str(slot.service_subnet), "proto", ROUTE_PROTO)


def release(slot: Slot) -> None:
    """Tear down a slot's network and forget it."""
    with registry_lock():
        teardown_network(slot.index)
        slot.path.unlink(missing_ok=True)
