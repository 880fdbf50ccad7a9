"""Scenario ``replicas`` (issue 18): gateway replicas share activity without writing to the API server.

Two parts:

1. **API load vs replica count** on the ``tests/cluster`` control plane: for R = 1, 2, 3 gateway
   replicas (``wakegate serve --backend kubernetes`` with the gateway ServiceAccount's token, listed
   in the peer Service's EndpointSlices) and P active projects (2 requests/s each, round-robin over
   the replicas, plus one long-lived SSE stream per project), kube-apiserver's own ``/metrics`` are
   read at the start and the end of a steady-state window. Mutating requests are attributed exactly
   by FlowSchemas the bench installs (see :func:`flow_schemas`): the gateway's ServiceAccount, and
   kube-controller-manager (its own user and the kube-system ServiceAccounts it runs controllers as).
2. **10,000 projects**, no cluster: the activity map one replica serves, the memory the Lease holder
   keeps for two peers' snapshots, and the holder's decision latency (pull from two peers, then a
   reap pass of a real :class:`~gateway.lifecycle.Lifecycle` over 10,000 up projects). The peers are
   processes of their own (``python -m bench.replicas peer``) serving the real admin API.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import re
import secrets
import signal
import statistics
import sys
import time
import tracemalloc
from collections.abc import Iterator, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import yaml

from bench import wakegate
from bench.procs import BenchError, Proc, spawn, wait_until
from bench.report import ScenarioResult, Target

if TYPE_CHECKING:
    from bench.scenarios import Context
    from tests.cluster.controlplane import Cluster

ROOT = Path(__file__).resolve().parent.parent
ECHO_IMAGE = "wakegate.test/echo:1"
PEER_SERVICE = "wakegate-peers"
PULL_INTERVAL_S = 5.0
REQUESTS_PER_PROJECT_S = 2.0
MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE", "DELETECOLLECTION", "APPLY"})
RBAC_KINDS = {"Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}
FLOWCONTROL = "/apis/flowcontrol.apiserver.k8s.io/v1"
WRITE_VERBS = ["create", "update", "patch", "delete", "deletecollection"]

# FlowSchemas: name → what it classifies. First match by precedence wins, so the gateway's writes are
# split by resource before its remaining requests fall into the "reads" schema.
FS_GW_LEASES = "bench-gateway-writes-leases"
FS_GW_DEPLOYMENTS = "bench-gateway-writes-deployments"
FS_GW_EVENTS = "bench-gateway-writes-events"
FS_GW_OTHER = "bench-gateway-writes-other"
FS_GW_READS = "bench-gateway-reads"
FS_KCM_WRITES = "bench-controller-manager-writes"
GATEWAY_WRITE_SCHEMAS = (FS_GW_LEASES, FS_GW_DEPLOYMENTS, FS_GW_EVENTS, FS_GW_OTHER)


# --- Prometheus text -------------------------------------------------------------------------------

_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')

Labels = tuple[tuple[str, str], ...]


def samples(text: str, names: set[str]) -> dict[str, dict[Labels, float]]:
    """The samples of the named families: name → sorted label pairs → value."""
    out: dict[str, dict[Labels, float]] = {n: {} for n in names}
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        m = _LINE.match(line)
        if m is None or m.group(1) not in names:
            continue
        labels = tuple(sorted(_LABEL.findall(m.group(2) or "")))
        out[m.group(1)][labels] = float(m.group(3))
    return out


def delta(before: Mapping[Labels, float], after: Mapping[Labels, float]) -> dict[Labels, float]:
    """Counter increase per series (a series absent before started at zero)."""
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v - before.get(k, 0.0) != 0}


def by(series: Mapping[Labels, float], *keys: str) -> dict[tuple[str, ...], float]:
    """Sum the series by the given labels."""
    out: dict[tuple[str, ...], float] = {}
    for labels, v in series.items():
        d = dict(labels)
        k = tuple(d.get(key, "") for key in keys)
        out[k] = out.get(k, 0.0) + v
    return out


# --- FlowSchemas: exact attribution of API requests to who sent them --------------------------------


def flow_schemas(gateway_sa: tuple[str, str]) -> list[dict[str, Any]]:
    """FlowSchemas that classify the gateway ServiceAccount's requests (writes by resource, then the
    rest) and kube-controller-manager's writes, at the priority levels their default FlowSchemas use
    (``service-accounts`` → workload-low; ``kube-controller-manager``, ``kube-system-service-accounts``
    and ``endpoint-controller`` → workload-high), so the bench changes who is counted, not how
    requests are queued. Precedences 11-20 come before every default FlowSchema except ``exempt``
    (system:masters: the node agent and the bench's own admin requests)."""
    ns, name = gateway_sa
    gateway = [{"kind": "ServiceAccount", "serviceAccount": {"name": name, "namespace": ns}}]
    kcm = [{"kind": "User", "user": {"name": "system:kube-controller-manager"}},
           {"kind": "Group", "group": {"name": "system:serviceaccounts:kube-system"}}]

    def writes(groups: list[str], resources: list[str]) -> dict[str, Any]:
        return {"verbs": WRITE_VERBS, "apiGroups": groups, "resources": resources, "namespaces": ["*"],
                "clusterScope": True}

    def schema(fs: str, precedence: int, level: str, subjects: list[dict[str, Any]],
               resource_rules: list[dict[str, Any]], non_resource: bool = False) -> dict[str, Any]:
        rule: dict[str, Any] = {"subjects": subjects, "resourceRules": resource_rules}
        if non_resource:
            rule["nonResourceRules"] = [{"verbs": ["*"], "nonResourceURLs": ["*"]}]
        return {"apiVersion": "flowcontrol.apiserver.k8s.io/v1", "kind": "FlowSchema",
                "metadata": {"name": fs, "labels": {"app.kubernetes.io/managed-by": "wakegate-bench"}},
                "spec": {"priorityLevelConfiguration": {"name": level}, "matchingPrecedence": precedence,
                         "distinguisherMethod": {"type": "ByUser"}, "rules": [rule]}}

    return [
        schema(FS_GW_LEASES, 11, "workload-low", gateway, [writes(["coordination.k8s.io"], ["leases"])]),
        schema(FS_GW_DEPLOYMENTS, 12, "workload-low", gateway,
               [writes(["apps"], ["deployments", "deployments/scale", "deployments/status"])]),
        schema(FS_GW_EVENTS, 13, "workload-low", gateway, [writes(["", "events.k8s.io"], ["events"])]),
        schema(FS_GW_OTHER, 14, "workload-low", gateway, [writes(["*"], ["*"])]),
        schema(FS_GW_READS, 15, "workload-low", gateway,
               [{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"], "namespaces": ["*"], "clusterScope": True}],
               non_resource=True),
        schema(FS_KCM_WRITES, 20, "workload-high", kcm, [writes(["*"], ["*"])]),
    ]


def install_flow_schemas(cluster: Cluster, gateway_sa: tuple[str, str], timeout_s: float = 30) -> None:
    """Create the FlowSchemas and wait until the apiserver's flow-control configuration took them
    (their ``Dangling`` condition is set to False, i.e. their priority level exists)."""
    for fs in flow_schemas(gateway_sa):
        cluster.request("POST", f"{FLOWCONTROL}/flowschemas", body=fs)

    def applied() -> bool:
        for fs in flow_schemas(gateway_sa):
            got = cluster.request("GET", f"{FLOWCONTROL}/flowschemas/{fs['metadata']['name']}")
            conds = {c.get("type"): c.get("status") for c in (got.get("status") or {}).get("conditions") or []}
            if conds.get("Dangling") != "False":
                return False
        return True

    wait_until(applied, timeout_s, "the bench's FlowSchemas to be in effect", 0.2)


# --- the API server's counters over a window -------------------------------------------------------

FAMILIES = {"apiserver_request_total", "apiserver_watch_events_total",
            "apiserver_flowcontrol_dispatched_requests_total"}


@dataclass
class ApiLoad:
    """What kube-apiserver counted between two reads of its /metrics."""

    seconds: float
    requests: dict[Labels, float]  # apiserver_request_total increase
    watch_events: dict[Labels, float]
    dispatched: dict[str, float]  # by flow_schema

    @classmethod
    def between(cls, before: dict[str, dict[Labels, float]], after: dict[str, dict[Labels, float]],
                seconds: float) -> ApiLoad:
        dispatched = by(delta(before["apiserver_flowcontrol_dispatched_requests_total"],
                              after["apiserver_flowcontrol_dispatched_requests_total"]), "flow_schema")
        return cls(seconds,
                   delta(before["apiserver_request_total"], after["apiserver_request_total"]),
                   delta(before["apiserver_watch_events_total"], after["apiserver_watch_events_total"]),
                   {k[0]: v for k, v in dispatched.items()})

    def mutating(self) -> dict[Labels, float]:
        return {k: v for k, v in self.requests.items() if dict(k).get("verb") in MUTATING}

    def mutating_total(self) -> float:
        return sum(self.mutating().values())

    def mutating_breakdown(self) -> dict[str, float]:
        """verb resource[/subresource] → count, for the raw results."""
        out: dict[str, float] = {}
        for (verb, group, resource, sub), v in by(self.mutating(), "verb", "group", "resource", "subresource").items():
            key = f"{verb} {group + '/' if group else ''}{resource}{'/' + sub if sub else ''}"
            out[key] = out.get(key, 0.0) + v
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))

    def watch_breakdown(self) -> dict[str, float]:
        keys = ("group", "resource", "kind")
        out: dict[str, float] = {}
        for k, v in by(self.watch_events, *keys).items():
            group, resource, kind = k
            name = f"{group + '/' if group else ''}{resource or kind}"
            out[name] = out.get(name, 0.0) + v
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))

    def gateway_writes(self) -> float:
        return sum(self.dispatched.get(fs, 0.0) for fs in GATEWAY_WRITE_SCHEMAS)


def read_apiserver(cluster: Cluster) -> tuple[dict[str, dict[Labels, float]], float]:
    """kube-apiserver's counters and the monotonic time the read took place (its midpoint)."""
    t0 = time.monotonic()
    text = cluster.request("GET", "/metrics", raw=True, timeout=60).decode()
    t1 = time.monotonic()
    return samples(text, FAMILIES), (t0 + t1) / 2


# --- load: requests at a fixed rate round-robin over the replicas, one SSE stream per project ---------


@dataclass
class LoadResult:
    sent: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    sse_events: dict[str, int] = field(default_factory=dict)  # project → events received in the window
    sse_alive_at_end: int = 0
    late_sends: int = 0  # requests sent > 100 ms after their slot (the bench's own scheduling)


async def _sse(session: aiohttp.ClientSession, port: int, project: str, count: int, first: asyncio.Event,
               received: dict[str, int]) -> None:
    """One long-lived server-sent-events stream through a replica; counts the events received."""
    url = f"http://127.0.0.1:{port}/events?interval=1&count={count}"
    async with session.get(url, headers={"Host": wakegate.host(project)},
                           timeout=aiohttp.ClientTimeout(total=None, sock_read=30)) as resp:
        if resp.status != 200:
            raise BenchError(f"SSE stream of {project} answered {resp.status}")
        async for line in resp.content:
            if line.startswith(b"data:"):
                received[project] = received.get(project, 0) + 1
                first.set()
    raise BenchError(f"the SSE stream of {project} ended before the window did")


async def drive(ports: list[int], projects: list[str], window_s: float, *, before: Any, after: Any,
                ready_timeout_s: float = 60) -> tuple[LoadResult, Any, Any]:
    """Open one SSE stream per project (project i through replica i mod R), wait for each one's first
    event, call ``before()`` (in a thread), send ``REQUESTS_PER_PROJECT_S`` requests/s per project for
    ``window_s`` (the k-th request of project j to replica (j + k) mod R), call ``after()``, and check
    the streams are still open."""
    res = LoadResult()
    count = int(window_s + ready_timeout_s + 120)  # events the stream would send: outlives the window
    conn = aiohttp.TCPConnector(limit=0, force_close=False)
    async with aiohttp.ClientSession(connector=conn) as session:
        firsts = {p: asyncio.Event() for p in projects}
        received: dict[str, int] = {}
        streams = {p: asyncio.create_task(_sse(session, ports[i % len(ports)], p, count, firsts[p], received))
                   for i, p in enumerate(projects)}
        try:
            all_first = asyncio.create_task(asyncio.wait_for(
                asyncio.gather(*(e.wait() for e in firsts.values())), ready_timeout_s))
            await asyncio.wait([all_first, *streams.values()], return_when=asyncio.FIRST_COMPLETED)
            for t in streams.values():
                if t.done():
                    all_first.cancel()
                    t.result()  # raises why it ended
            try:
                await all_first
            except TimeoutError:
                raise BenchError(f"SSE streams without a first event after {ready_timeout_s:.0f} s: "
                                 f"{[p for p, e in firsts.items() if not e.is_set()]}") from None
            start = await asyncio.to_thread(before)
            at_start = dict(received)
            await _requests(session, ports, projects, window_s, res)
            end = await asyncio.to_thread(after)
            res.sse_events = {p: received.get(p, 0) - at_start.get(p, 0) for p in projects}
            for t in streams.values():
                if t.done():
                    t.result()
            res.sse_alive_at_end = sum(not t.done() for t in streams.values())
        finally:
            for t in streams.values():
                t.cancel()
            await asyncio.gather(*streams.values(), return_exceptions=True)
    return res, start, end


async def _requests(session: aiohttp.ClientSession, ports: list[int], projects: list[str], window_s: float,
                    res: LoadResult) -> None:
    total_rate = REQUESTS_PER_PROJECT_S * len(projects)
    n_slots = max(1, int(window_s * total_rate))
    interval = 1.0 / total_rate
    tasks: list[asyncio.Task[None]] = []

    async def one(port: int, project: str, n: int) -> None:
        try:
            async with session.get(f"http://127.0.0.1:{port}/r{n}", headers={"Host": wakegate.host(project)},
                                   timeout=aiohttp.ClientTimeout(total=30)) as resp:
                await resp.read()
                res.statuses[resp.status] = res.statuses.get(resp.status, 0) + 1
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            key = type(exc).__name__
            res.errors[key] = res.errors.get(key, 0) + 1

    t0 = time.monotonic()
    for n in range(n_slots):
        due = t0 + n * interval
        now = time.monotonic()
        if due > now:
            await asyncio.sleep(due - now)
        elif now - due > 0.1:
            res.late_sends += 1
        j, k = n % len(projects), n // len(projects)
        tasks.append(asyncio.create_task(one(ports[(j + k) % len(ports)], projects[j], n)))
        res.sent += 1
    rest = t0 + window_s - time.monotonic()
    if rest > 0:
        await asyncio.sleep(rest)
    await asyncio.wait_for(asyncio.gather(*tasks), 60)


# --- part 1: on the control plane -----------------------------------------------------------------


def _gateway_kubeconfig(cluster: Cluster) -> Path:
    """Install the RBAC part of ``manifests/`` (as tests/backends/test_kubernetes.py does) and return a
    kubeconfig with the gateway ServiceAccount's token."""
    from gateway import contract as L

    out = cluster.kubectl("kustomize", str(ROOT / "manifests"))
    objs = [o for o in yaml.safe_load_all(out.stdout) if o and o.get("kind") in RBAC_KINDS]
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "--field-manager=wakegate-bench", "-f", "-",
                    input=yaml.safe_dump_all(objs))
    return cluster.serviceaccount_kubeconfig(L.DEFAULT_GATEWAY_NAMESPACE, L.GATEWAY_SERVICEACCOUNT)


def _deployments_settled(cluster: Cluster, namespaces: Mapping[str, str]) -> bool:
    for name, ns in namespaces.items():
        dep = cluster.request("GET", f"/apis/apps/v1/namespaces/{ns}/deployments/{name}")
        spec, status, meta = dep.get("spec", {}), dep.get("status", {}), dep.get("metadata", {})
        if not (spec.get("replicas") == 1 and status.get("readyReplicas") == 1
                and status.get("updatedReplicas") == 1 and status.get("replicas") == 1
                and status.get("observedGeneration") == meta.get("generation")):
            return False
    return True


def _events(gw: wakegate.Gateway, kind: str) -> list[dict[str, Any]]:
    return [e for e in wakegate.log_events(gw.proc) if e.get("event") == kind]


@dataclass
class Replicas:
    """R running replicas; ``holder`` is the index of the reaper Lease holder."""

    gateways: list[wakegate.Gateway]
    holder: int


def _start_replicas(ctx: Context, stack: ExitStack, cluster: Cluster, kubeconfig: Path, token_file: Path,
                    count: int, tag: str) -> Replicas:
    from tests.cluster import gateway_peers

    gws: list[wakegate.Gateway] = []
    for i in range(count):
        replica = f"gw-{i}"
        gw = wakegate.start_replica(ctx.layout, ctx.logs, f"{tag}-{replica}", [
            "--backend", "kubernetes", "--kubeconfig", str(kubeconfig), "--replica-id", replica,
            "--admin-token-file", str(token_file), "--peer-service", PEER_SERVICE,
            "--activity-pull-interval", f"{PULL_INTERVAL_S:g}", "--idle-timeout", "3600", "--hold-timeout", "300",
            "--reap-interval", "5"])
        stack.callback(gw.proc.stop)
        stack.callback(gateway_peers.withdraw, cluster, replica, PEER_SERVICE)
        gateway_peers.publish(cluster, replica, gw.admin_port, PEER_SERVICE)
        gws.append(gw)

    def holder() -> bool:
        for gw in gws:
            gw.proc.check_alive()
        return any(_events(gw, "leader_acquired") for gw in gws)

    # A replica stopped gracefully releases the Lease; a killed one leaves it to expire (15 s).
    wait_until(holder, 60, f"one of {count} replicas to hold the reaper Lease", 0.1)
    index = next(i for i, gw in enumerate(gws) if _events(gw, "leader_acquired"))
    h = gws[index]
    others = {f"gw-{i}" for i in range(count) if i != index}

    def sees_peers() -> bool:
        h.proc.check_alive()
        seen = _events(h, "gateway_peers")
        return bool(seen) and set(filter(None, str(seen[-1].get("peers", "")).split(","))) - {"none"} == others

    if others:
        wait_until(sees_peers, 60, f"the Lease holder gw-{index} to list its peers {sorted(others)}", 0.1)
    return Replicas(gws, index)


def _gateway_counters(gws: list[wakegate.Gateway]) -> list[dict[str, float]]:
    return [wakegate.counters(gw.metrics(), ("wakegate_scale_operations_total", "wakegate_wakeups_total"))
            for gw in gws]


def api_load(ctx: Context, res: ScenarioResult) -> None:
    """Part 1: the API server's load with R = 1, 2, 3 replicas and P active projects."""
    cfg = ctx.config
    d = ctx.dir("replicas")
    try:
        from gateway import contract as L
        from tests.cluster.controlplane import Cluster
    except ImportError as exc:
        raise BenchError(f"needs the repository's test control plane (tests/cluster): {exc}") from exc
    projects = [f"act-{i}" for i in range(cfg.replica_projects)]
    p = len(projects)
    window_s = cfg.replica_window_s
    per_r: dict[int, dict[str, Any]] = {}
    with ExitStack() as stack:
        cluster = Cluster.start(d / "cluster")
        stack.callback(cluster.stop)
        install_flow_schemas(cluster, (L.DEFAULT_GATEWAY_NAMESPACE, L.GATEWAY_SERVICEACCOUNT))
        kubeconfig = _gateway_kubeconfig(cluster)
        token_file = d / "admin-token"
        token_file.write_text(secrets.token_hex(24) + "\n")
        token_file.chmod(0o600)
        from bench.scenarios import provision  # scenarios imports this module

        namespaces = asyncio.run(provision(cluster.kubeconfig, projects, ECHO_IMAGE))
        for r in cfg.replica_counts:
            with ExitStack() as replicas_stack:
                reps = _start_replicas(ctx, replicas_stack, cluster, kubeconfig, token_file, r, f"replicas-{r}")
                gws = reps.gateways
                # Wake every project (the first R only; later ones find them running), then let the
                # rollout settle: steady state is what is measured.
                for j, name in enumerate(projects):
                    status = gws[j % r].get(name, timeout_s=180)
                    if status != 200:
                        raise BenchError(f"waking {name} through gw-{j % r} answered {status}; log:\n"
                                         f"{gws[j % r].proc.tail()}")
                wait_until(lambda: _deployments_settled(cluster, namespaces), 120,
                           "every project's Deployment to be rolled out (1 ready replica)", 0.5)
                # At least two complete pull rounds by the holder, and the rollout's writes done.
                time.sleep(max(cfg.replica_settle_s, 2 * PULL_INTERVAL_S if r > 1 else 0.0))
                counters_before = _gateway_counters(gws)
                unreachable_before = len(_events(gws[reps.holder], "peer_unreachable"))
                load, (m0, t0), (m1, t1) = asyncio.run(drive(
                    [gw.port for gw in gws], projects, window_s,
                    before=lambda: read_apiserver(cluster), after=lambda: read_apiserver(cluster)))
                counters_after = _gateway_counters(gws)
                for gw in gws:
                    gw.proc.check_alive()
                holder_log = wakegate.log_events(gws[reps.holder].proc)
                unreachable = _events(gws[reps.holder], "peer_unreachable")[unreachable_before:]
                sleeps = [e for gw in gws for e in _events(gw, "sleep")]
                api = ApiLoad.between(m0, m1, t1 - t0)
                if load.errors or set(load.statuses) != {200}:
                    raise BenchError(f"R={r}: requests failed during the window: statuses {load.statuses}, "
                                     f"errors {load.errors}")
                if load.sse_alive_at_end != p:
                    raise BenchError(f"R={r}: {p - load.sse_alive_at_end} SSE streams ended during the window")
                per_r[r] = {"api": api, "load": load, "holder": f"gw-{reps.holder}",
                            "peer_pull_failures": len(unreachable), "sleeps": len(sleeps),
                            "gateway_counters_before": counters_before, "gateway_counters_after": counters_after,
                            "holder_log_lines": len(holder_log),
                            # cumulative since the cluster started: the wakes and rollouts before the
                            # window show that the controller-manager's FlowSchema does catch its writes
                            "flow_schemas_until_window": {
                                k[0]: v for k, v in by(m0["apiserver_flowcontrol_dispatched_requests_total"],
                                                       "flow_schema").items() if k[0].startswith("bench-")}}
    for r, got in per_r.items():
        _report_r(res, r, p, got)
    res.raw["projects"] = p
    res.raw["window_s"] = window_s
    res.notes.append(
        f"Part 1: tests/cluster control plane; {p} projects provisioned with the {ECHO_IMAGE} test image, woken, "
        f"then {REQUESTS_PER_PROJECT_S:g} requests/s per project round-robin over the replicas plus one SSE "
        f"stream per project, for {window_s:g} s per replica count, after the rollout settled. The API server's "
        "own /metrics are read at the window's start and end. Gateway and kube-controller-manager requests are "
        "attributed exactly by FlowSchemas the bench installs (apiserver_flowcontrol_dispatched_requests_total "
        "by flow_schema): the gateway ServiceAccount's writes by resource (leases, deployments, events, other), "
        "and writes by system:kube-controller-manager or a kube-system ServiceAccount (the controllers run as "
        "those). 'Other writers' are the rest of apiserver_request_total's mutating verbs: the test node agent "
        "(node Lease, pod status), kube-apiserver's own identity Lease, and the bench itself (none during the "
        "window). Watch events include the periodic bookmarks every watch receives. 'Per active project per "
        "minute per replica' = count / window minutes / P / R. Target: zero steady-state writes per active "
        "project; the gateway's only writes are the reaper Lease renewals by its holder (every leader-lease/3 "
        "= 5 s), a constant independent of P and R.")


def _report_r(res: ScenarioResult, r: int, p: int, got: dict[str, Any]) -> None:
    api: ApiLoad = got["api"]
    load: LoadResult = got["load"]
    s = api.seconds
    system = f"wakegate, {r} replica{'s' if r > 1 else ''}"
    per = 60.0 / s / p / r  # a count over the window → per active project per minute per replica
    gw_writes = api.gateway_writes()
    lease = api.dispatched.get(FS_GW_LEASES, 0.0)
    non_lease = gw_writes - lease
    kcm = api.dispatched.get(FS_KCM_WRITES, 0.0)
    total = api.mutating_total()
    other = total - gw_writes - kcm
    watch = sum(api.watch_events.values())
    reads = api.dispatched.get(FS_GW_READS, 0.0)
    res.add(system, "API writes/s: gateway (all replicas)", "req/s", [gw_writes / s])
    res.add(system, "API writes/s: gateway, reaper Lease renewals", "req/s", [lease / s])
    res.add(system, "API writes/s: kube-controller-manager", "req/s", [kcm / s])
    res.add(system, "API writes/s: other writers (node agent, kube-apiserver's own Lease)", "req/s", [other / s])
    res.add(system, "API writes/s: all (mutating apiserver_request_total)", "req/s", [total / s])
    res.add(system, "API reads/s: gateway (all replicas; watches counted when opened)", "req/s", [reads / s])
    res.add(system, "API watch events sent/s (all watchers)", "events/s", [watch / s])
    res.add(system, "gateway writes per active project per minute per replica", "writes", [gw_writes * per],
            Target(f"Lease only (= Lease renewals ÷ {p} projects ÷ {r} replicas)", non_lease == 0))
    res.add(system, "gateway writes per active project per minute per replica, excluding the Lease", "writes",
            [non_lease * per], Target("0", non_lease == 0))
    res.add(system, "controller-manager writes per active project per minute per replica", "writes", [kcm * per])
    res.add(system, "watch events per active project per minute per replica", "events", [watch * per])
    gw_sent = sum(load.statuses.values())
    res.add(system, "load: requests answered per second (through all replicas)", "req/s", [gw_sent / s])
    res.raw.setdefault("by_replicas", {})[str(r)] = {
        "window_s": s,
        "holder": got["holder"],
        "flow_schemas": api.dispatched,
        "mutating_by_verb_resource": api.mutating_breakdown(),
        "watch_events_by_resource": api.watch_breakdown(),
        "requests": {"sent": load.sent, "statuses": load.statuses, "errors": load.errors,
                     "late_sends": load.late_sends},
        "sse_events_in_window": load.sse_events,
        "peer_pull_failures_in_window": got["peer_pull_failures"],
        "sleeps_logged": got["sleeps"],
        "gateway_counters_before": got["gateway_counters_before"],
        "gateway_counters_after": got["gateway_counters_after"],
        "flow_schemas_until_window": got["flow_schemas_until_window"],
    }
    if got["peer_pull_failures"]:
        res.notes.append(f"R={r}: the Lease holder logged {got['peer_pull_failures']} failed peer pulls in the window.")


# --- part 2: 10,000 projects, in memory ------------------------------------------------------------


def _table_backend(names: list[str]) -> Any:
    """A Backend with a fixed table whose projects are all up (reported ready on start); scale
    operations do nothing. ``shared`` (optional) answers the other replicas' activity."""
    from gateway.activity import ALONE, SharedActivity
    from gateway.backends.base import Backend, Endpoint, ProjectInfo

    class TableBackend(Backend):
        def __init__(self) -> None:
            self.table = {n: ProjectInfo(n, location="bench") for n in names}
            self.shared: Any = None
            self.report_up = False

        async def start(self) -> None:
            if self.report_up:
                assert self.listener is not None
                ep = [Endpoint("127.0.0.1", 9)]
                for n in self.table:
                    self.listener.endpoints_changed(n, ep)

        async def close(self) -> None:
            return None

        def projects(self) -> Mapping[str, ProjectInfo]:
            return self.table

        async def scale_up(self, name: str) -> None:
            return None

        async def scale_down(self, name: str, last_activity_wall_s: float | None = None) -> bool:
            return True

        def shared_activity(self, name: str) -> SharedActivity:
            shared: SharedActivity = ALONE if self.shared is None else self.shared(name)
            return shared

    return TableBackend()


async def _peer(count: int, replica: str, token_file: Path, port_file: Path, open_every: int) -> None:
    """A replica's admin API over ``count`` projects, every one active a moment ago (every
    ``open_every``-th with a request still open), until SIGTERM."""
    from gateway.admin import create_admin_app, start_admin
    from gateway.config import HostPort, Settings
    from gateway.lifecycle import Lifecycle
    from gateway.metrics import Metrics

    names = [f"project-{i:05d}" for i in range(count)]
    settings = Settings(replica_id=replica, admin_token_file=token_file, idle_timeout_s=3600, reap_interval_s=3600)
    backend = _table_backend(names)
    lifecycle = Lifecycle(backend, settings)
    await lifecycle.start()
    for i, p in enumerate(lifecycle.projects.values()):
        lifecycle.begin(p)
        if i % open_every:
            lifecycle.end(p)
    runner, port = await start_admin(create_admin_app(settings, lifecycle, Metrics(), backend),
                                     HostPort("127.0.0.1", 0))
    await asyncio.to_thread(port_file.write_text, str(port))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    await stop.wait()
    await runner.cleanup()
    await lifecycle.close()


@contextlib.contextmanager
def _peers(ctx: Context, count: int, token_file: Path, n: int = 2) -> Iterator[list[int]]:
    """``n`` peer processes (on the load generator's core; the holder is this process); their ports."""
    procs: list[Proc] = []
    try:
        files = []
        for i in range(n):
            port_file = ctx.work / f"activity-peer-{i}.port"
            port_file.unlink(missing_ok=True)
            files.append(port_file)
            procs.append(spawn(f"activity-peer-{i}", [
                sys.executable, "-m", "bench.replicas", "peer", "--projects", str(count), "--replica", f"peer-{i}",
                "--token-file", str(token_file), "--port-file", str(port_file)], ctx.logs, ctx.layout.loadgen,
                env={"PYTHONPATH": str(ROOT)}))

        def up() -> bool:
            for proc in procs:
                proc.check_alive()
            return all(f.exists() and f.read_text().strip() for f in files)

        wait_until(up, 120, f"{n} activity peers with {count} projects each", 0.05)
        yield [int(f.read_text()) for f in files]
    finally:
        for proc in procs:
            proc.stop()


async def _holder_measure(names: list[str], ports: list[int], token: bytes, repeats: int) -> dict[str, Any]:
    from gateway.backends.k8s import peers as pr
    from gateway.backends.k8s.api import Kube
    from gateway.backends.k8s.exchange import ActivityExchange
    from gateway.config import Settings
    from gateway.lifecycle import Lifecycle

    out: dict[str, Any] = {"pull_ms": [], "reap_ms": [], "pull_to_decision_ms": [], "wire_bytes": [],
                           "snapshot_bytes": [], "encode_ms": [], "decode_ms": []}
    # The exchange the Kubernetes backend uses, with its peers set as its EndpointSlice watch would.
    exchange = ActivityExchange(Kube(None), namespace="wakegate-system", service=PEER_SERVICE, port_name="admin",
                                own_name="holder", own_ip=None, token=token, interval_s=PULL_INTERVAL_S,
                                since_window_s=lambda: 3600.0)
    exchange.peers = tuple(pr.Peer(f"peer-{i}", "127.0.0.1", port) for i, port in enumerate(ports))
    backend = _table_backend(names)
    backend.report_up = True
    backend.shared = exchange.shared
    lifecycle = Lifecycle(backend, Settings(replica_id="holder", idle_timeout_s=3600, reap_interval_s=3600))
    await lifecycle.start()
    try:
        up = sum(1 for p in lifecycle.projects.values() if p.state.value == "ready")
        if up != len(names):
            raise BenchError(f"only {up} of {len(names)} holder projects are up")
        headers = {"Authorization": "Bearer " + token.decode()}
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as s:
            for _ in range(repeats):
                # (a) one replica's activity map as it goes over the wire, and what the holder keeps of two.
                bodies = []
                for port in ports:
                    since = time.time() - 3600
                    async with s.get(f"http://127.0.0.1:{port}/api/v1/activity", params={"since": f"{since:.3f}"},
                                     headers=headers) as resp:
                        if resp.status != 200:
                            raise BenchError(f"peer on {port} answered {resp.status}")
                        bodies.append(await resp.read())
                out["wire_bytes"].append(statistics.mean(len(b) for b in bodies))
                payloads = [json.loads(b) for b in bodies]
                if any(len(pl["projects"]) != len(names) for pl in payloads):
                    raise BenchError("a peer's activity map does not list every project")
                t = time.perf_counter()
                snaps = [pr.decode_activity(pl, time.time()) for pl in payloads]
                out["decode_ms"].append((time.perf_counter() - t) / len(payloads) * 1000)
                del snaps, payloads
                # What the holder keeps: parsed and decoded under tracemalloc (the names and floats
                # the snapshots hold come from the parse), the parsed JSON then dropped.
                gc.collect()
                tracemalloc.start()
                base = tracemalloc.get_traced_memory()[0]
                payloads = [json.loads(b) for b in bodies]
                snaps = [pr.decode_activity(pl, time.time()) for pl in payloads]
                del payloads
                gc.collect()
                kept = tracemalloc.get_traced_memory()[0] - base
                tracemalloc.stop()
                out["snapshot_bytes"].append(kept)
                # encode on the serving side (pure function, the admin handler's core), timed alone
                acts = {n: pr.Activity(a.last_s, a.open) for n, a in snaps[0].projects.items()}
                t = time.perf_counter()
                json.dumps(pr.encode_activity("peer-0", time.time(), acts, time.time() - 3600))
                out["encode_ms"].append((time.perf_counter() - t) * 1000)
                del snaps, bodies, acts
                # (b) the holder's decision: a full pull round (HTTP, decode), then a reap pass.
                t0 = time.perf_counter()
                if not await exchange.pull_all():
                    raise BenchError(f"a peer did not answer the pull: {exchange.failures}")
                t1 = time.perf_counter()
                slept = lifecycle.reap_once()
                t2 = time.perf_counter()
                if slept:  # every project is active on a peer: nothing may sleep
                    raise BenchError(f"the reap pass chose {len(slept)} active projects to sleep")
                shared = exchange.shared(names[0])
                if shared.unknown or shared.last_s is None:
                    raise BenchError(f"the holder's verdict ignores the peers' snapshots: {shared}")
                out["pull_ms"].append((t1 - t0) * 1000)
                out["reap_ms"].append((t2 - t1) * 1000)
                out["pull_to_decision_ms"].append((t2 - t0) * 1000)
    finally:
        await exchange.close()
        await lifecycle.close()
    return out


def activity_at_scale(ctx: Context, res: ScenarioResult) -> None:
    """Part 2: 10,000 projects, two peers, one holder; real code paths, measured."""
    n = ctx.config.activity_projects
    names = [f"project-{i:05d}" for i in range(n)]
    token_file = ctx.work / "activity-token"
    token = secrets.token_hex(24).encode()
    token_file.write_bytes(token + b"\n")
    token_file.chmod(0o600)
    repeats = max(3, ctx.config.repeat * 3)
    with _peers(ctx, n, token_file) as ports:
        got = asyncio.run(_holder_measure(names, ports, token, repeats))
    system = f"wakegate, {n:,} projects"
    res.add(system, f"activity map of one replica ({n:,} active projects), on the wire", "bytes", got["wire_bytes"])
    res.add(system, "holder memory for 2 peers' snapshots (tracemalloc: JSON parse + decode_activity, kept)", "bytes",
            got["snapshot_bytes"])
    res.add(system, "encode one activity map (encode_activity + json.dumps)", "ms", got["encode_ms"])
    res.add(system, "decode one activity map (decode_activity of the parsed JSON)", "ms", got["decode_ms"])
    res.add(system, "pull round from 2 peers (HTTP, peer's scan + encode, decode)", "ms", got["pull_ms"])
    res.add(system, f"reap pass (Lifecycle.reap_once, {n:,} up projects, 2 peer snapshots)", "ms", got["reap_ms"])
    res.add(system, "peer pull → decision (pull round + reap pass)", "ms", got["pull_to_decision_ms"])
    res.notes.append(
        f"Part 2: no cluster. Two peer processes (`python -m bench.replicas peer`, on the load generator's core) "
        f"each run a real Lifecycle of {n:,} projects, all active a moment ago (every 10th with a request still "
        "open), behind the real admin API (GET /api/v1/activity, bearer token). The holder is this process: the "
        "Kubernetes backend's ActivityExchange (peers set as its EndpointSlice watch would) feeding a real "
        f"Lifecycle of {n:,} up projects through Backend.shared_activity. 'On the wire' is the HTTP body of one "
        "peer's answer; the snapshot memory is what tracemalloc counts as still allocated after decode_activity "
        "of both answers, the JSON parse included (the snapshots keep its strings and floats), the parsed JSON "
        "then freed; the decode time is measured without tracemalloc. 'Peer pull → decision' is "
        "ActivityExchange.pull_all (both "
        "peers concurrently) then Lifecycle.reap_once, whose verdict for every project reads both snapshots; "
        f"every project is active, so the pass decides that none may sleep. {repeats} repeats.")


def run(ctx: Context) -> ScenarioResult:
    res = ScenarioResult("replicas", "7. Replicas: API load and activity exchange (issue 18)")
    activity_at_scale(ctx, res)
    api_load(ctx, res)
    return res


# --- ``python -m bench.replicas peer``: one replica's activity, served -------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.replicas")
    sub = p.add_subparsers(dest="cmd", required=True)
    peer = sub.add_parser("peer", help="serve the admin API of a replica whose projects are all active")
    peer.add_argument("--projects", type=int, required=True)
    peer.add_argument("--replica", required=True)
    peer.add_argument("--token-file", type=Path, required=True)
    peer.add_argument("--port-file", type=Path, required=True)
    peer.add_argument("--open-every", type=int, default=10)
    args = p.parse_args(argv)
    asyncio.run(_peer(args.projects, args.replica, args.token_file, args.port_file, args.open_every))
    return 0


if __name__ == "__main__":
    sys.exit(main())
