"""The scenarios of issue 7, each measured side by side with nginx and a direct connection where a
peer applies. A scenario returns rows of numbers; it never asserts a time."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import statistics
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import nginx, wakegate
from bench.procs import BenchError, CpuTrace, Layout, Proc, cpu_between, free_port, pinned, spawn, wait_until
from bench.report import ScenarioResult, Target
from bench.tools import Loadgen, wrk

MiB = 1 << 20


@dataclass(frozen=True)
class Config:
    """Sizes of one run. :data:`SMOKE` is the tiny one ``make test`` runs."""

    smoke: bool = False
    repeat: int = 3
    duration_s: float = 10.0
    connections: int = 50
    cold_single: int = 20  # wakes with one held request each
    cold_many: int = 1000  # held requests per wake in the concurrent cold start
    herd: int = 10000
    project_counts: tuple[int, ...] = (10, 1000, 10000)
    metrics_projects: int = 5000
    metrics_rate: float = 2000.0
    # The open-loop generator is Python (~30 us of CPU per request) and shares its core with the
    # upstream: above ~15k req/s its own queueing, not the proxy, would set the tail latency.
    latency_max_rps: float = 15000.0
    scrape_interval_s: float = 0.5
    stream_bytes: int = 1 << 30
    boot_delay_s: float = 0.3  # how long the cold project takes to start listening
    kube_wakes: int = 5  # Kubernetes cold starts (each a Deployment scaled 0 -> 1)
    # replicas (issue 18): gateway replica counts, active projects, steady-state window, settling
    # time after the rollout; projects in the in-memory activity-exchange measurement.
    replica_counts: tuple[int, ...] = (1, 2, 3)
    replica_projects: int = 8
    replica_window_s: float = 60.0
    replica_settle_s: float = 10.0
    activity_projects: int = 10000

    def describe(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


SMOKE = Config(smoke=True, repeat=1, duration_s=1.0, connections=4, cold_single=2, cold_many=10, herd=20,
               project_counts=(3, 30), metrics_projects=20, metrics_rate=100.0, scrape_interval_s=0.2,
               stream_bytes=8 * MiB, boot_delay_s=0.05, kube_wakes=1, replica_counts=(1, 2), replica_projects=2,
               replica_window_s=3.0, replica_settle_s=1.0, activity_projects=1000)


@dataclass
class Context:
    config: Config
    layout: Layout
    work: Path
    logs: Path
    loadgen: Loadgen
    nginx_saturation_rps: float | None = None  # set by the throughput scenario, used by latency

    def dir(self, name: str) -> Path:
        path = self.work / name
        path.mkdir(parents=True, exist_ok=True)
        return path


@dataclass
class System:
    """One thing the load is pointed at: ``proc`` is the proxy whose CPU and memory are measured."""

    name: str
    port: int
    host: str
    proc: Proc | None = None
    with_children: bool = False  # nginx: master + worker


def _owned(stack: ExitStack, proc: Proc) -> Proc:
    stack.callback(proc.stop)
    return proc


def _start_gateway(ctx: Context, stack: ExitStack, d: Path, projects: dict[str, dict[str, Any]], *,
                   name: str = "wakegate", max_held: int = 1000, warm: str | None = None) -> wakegate.Gateway:
    projects_file = wakegate.write_projects(d / f"{name}-projects.yaml", projects)
    gw = wakegate.start(projects_file, ctx.layout, ctx.logs, name=name, max_held=max_held)
    _owned(stack, gw.proc)
    if warm is not None:
        status = gw.get(warm)
        if status != 200:
            raise BenchError(f"warming project {warm} through wakegate answered {status}; log:\n{gw.proc.tail()}")
    return gw


def _one_kib_systems(ctx: Context, d: Path, stack: ExitStack, res: ScenarioResult) -> dict[str, System]:
    """direct (an nginx upstream on the proxies' core), nginx proxying the same kind of upstream,
    and wakegate proxying a project that is that upstream too (warmed, so the gateway's own wake
    path started it)."""
    lay = ctx.layout
    direct_port, up_port, px_port = free_port(), free_port(), free_port()
    # Direct gets an upstream of its own on the core a proxy would use: sharing the load generator's
    # core would add a scheduling delay to every request and make "the limit" slower than a proxy.
    _owned(stack, nginx.start("upstream-direct", nginx.upstream_config(d / "upstream-direct", direct_port),
                              direct_port, ctx.logs, lay.proxy))
    _owned(stack, nginx.start("upstream", nginx.upstream_config(d / "upstream", up_port), up_port, ctx.logs,
                              lay.upstream))
    proxy = _owned(stack, nginx.start("nginx-proxy", nginx.proxy_config(d / "proxy", px_port, up_port), px_port,
                                      ctx.logs, lay.proxy))
    systems = {
        "direct": System("direct", direct_port, wakegate.host("warm")),
        "nginx": System("nginx", px_port, wakegate.host("warm"), proxy, True),
    }
    try:
        gw = _start_gateway(ctx, stack, d, {"warm": {"command": nginx.project_command(d / "project", lay)}},
                            warm="warm")
        systems["wakegate"] = System("wakegate", gw.port, wakegate.host("warm"), gw.proc)
    except BenchError as exc:
        _not_run(res, "wakegate", exc)
    return systems


def _not_run(res: ScenarioResult, system: str, exc: Exception) -> None:
    """Record that one system could not be measured (the others still are)."""
    res.notes.append(f"{system} did not run: {str(exc).splitlines()[0]}")
    res.raw[f"{system}_error"] = str(exc)


def _check_wrk(system: str, report: dict[str, Any], connections: int) -> None:
    if report["requests"] <= 0 or report["error_count"] > 0.01 * report["requests"]:
        raise BenchError(f"{system}: wrk saw {report['error_count']} errors in {report['requests']} requests "
                         f"({report['errors']})")
    if report["requests"] < connections:
        raise BenchError(f"{system}: requests hang: {report['requests']} answered over {connections} connections "
                         f"in {report['duration_us'] / 1e6:.0f} s")


# --- 1. warm throughput -------------------------------------------------------------------------


def throughput(ctx: Context) -> ScenarioResult:
    """Closed loop: wrk, one thread, 50 keep-alive connections, 1 KiB responses."""
    cfg, res = ctx.config, ScenarioResult("throughput", "1. Warm throughput")
    d = ctx.dir("throughput")
    with ExitStack() as stack:
        systems = _one_kib_systems(ctx, d, stack, res)
        for s in systems.values():  # warm-up: connections, caches, the upstream pools
            wrk(f"http://127.0.0.1:{s.port}/", s.host, cfg.connections, 1, ctx.layout.loadgen, d)
        rps: dict[str, list[float]] = {s: [] for s in systems}
        per_cpu: dict[str, list[float]] = {s: [] for s, v in systems.items() if v.proc}
        busy: dict[str, list[float]] = {s: [] for s in per_cpu}
        varied_rps: dict[str, list[float]] = {s: [] for s in per_cpu}
        varied_cpu: dict[str, list[float]] = {s: [] for s in per_cpu}
        for _ in range(cfg.repeat):
            for s in systems.values():
                before = s.proc.cpu_s(s.with_children) if s.proc else 0.0
                report = wrk(f"http://127.0.0.1:{s.port}/", s.host, cfg.connections, cfg.duration_s,
                             ctx.layout.loadgen, d)
                _check_wrk(s.name, report, cfg.connections)
                rps[s.name].append(report["rps"])
                if s.proc:
                    used = s.proc.cpu_s(s.with_children) - before
                    per_cpu[s.name].append(report["requests"] / max(used, 1e-6))
                    busy[s.name].append(100 * used / (report["duration_us"] / 1e6))
                res.raw.setdefault(s.name, []).append(report)
            for s in systems.values():  # the proxies again, no two consecutive request heads alike
                if s.proc is None:
                    continue
                before = s.proc.cpu_s(s.with_children)
                report = wrk(f"http://127.0.0.1:{s.port}/", s.host, cfg.connections, cfg.duration_s,
                             ctx.layout.loadgen, d, varied=True)
                _check_wrk(f"{s.name} (varied heads)", report, cfg.connections)
                used = s.proc.cpu_s(s.with_children) - before
                varied_rps[s.name].append(report["rps"])
                varied_cpu[s.name].append(report["requests"] / max(used, 1e-6))
                res.raw.setdefault(f"{s.name}_varied", []).append(report)
    res.raw["connections"] = cfg.connections
    for name, values in rps.items():
        res.add(name, "requests/s", "req/s", values)
    for name, values in per_cpu.items():
        res.add(name, "requests per CPU-second", "req/CPU-s", values)
    for name, values in busy.items():
        res.add(name, "CPU used by the proxy", "% of a core", values)
    for name, values in varied_rps.items():
        res.add(name, "requests/s, varied heads", "req/s", values)
    for name, values in varied_cpu.items():
        res.add(name, "requests per CPU-second, varied heads", "req/CPU-s", values)
    for metric in ("requests/s", "requests per CPU-second", "requests/s, varied heads",
                   "requests per CPU-second, varied heads"):
        res.compare(metric)
    ctx.nginx_saturation_rps = statistics.median(rps["nginx"])
    wg = res.find("wakegate", "requests/s")
    if wg is not None and wg.vs_nginx is not None:
        wg.target = Target("≥ 0.7 x nginx", wg.vs_nginx >= 0.7)
    cpu = res.find("wakegate", "requests per CPU-second")
    if cpu is not None:
        cpu.target = Target("≥ 15,000 (≤ 67 µs each)", cpu.median >= 15000)
        res.notes.append(f"wakegate spends {1e6 / cpu.median:.0f} µs of CPU per request "
                         "(KEDA's HTTP add-on interceptor: about 190 µs).")
    res.notes.append("a proxy that is the bottleneck uses ~100% of its core; clearly less means it was waiting "
                     "for its core (other processes on the machine) or for the load generator's.")
    res.notes.append("'varied heads': a wrk Lua request() puts a counter in the path's query and in an "
                     "X-Bench-Seq header, so no two consecutive request heads are byte-identical (the gateway "
                     "memoises identical heads); wrk spends more of its own core building them.")
    return res


# --- 2. added latency at a fixed rate -------------------------------------------------------------

PERCENTILES = ("p50", "p90", "p99", "p99_9")


def latency(ctx: Context) -> ScenarioResult:
    """Open loop at half of nginx's saturation rate; latency from the intended send time."""
    cfg, res = ctx.config, ScenarioResult("latency", "2. Latency at a fixed rate")
    d = ctx.dir("latency")
    with ExitStack() as stack:
        systems = _one_kib_systems(ctx, d, stack, res)
        saturation = ctx.nginx_saturation_rps
        if saturation is None:
            nx = systems["nginx"]
            report = wrk(f"http://127.0.0.1:{nx.port}/", nx.host, cfg.connections, max(1.0, cfg.duration_s / 2),
                         ctx.layout.loadgen, d)
            _check_wrk("nginx", report, cfg.connections)
            saturation = report["rps"]
            res.notes.append(f"nginx saturation measured here: {saturation:,.0f} req/s")
        rate = round(min(saturation / 2, cfg.latency_max_rps))
        res.raw["rate"] = rate
        warmup = 0.5 if cfg.smoke else 2.0
        p: dict[tuple[str, str], list[float]] = {}
        behind: dict[str, float] = {}  # systems that could not sustain the rate: lowest rate answered
        for _ in range(cfg.repeat):
            for s in systems.values():
                out = ctx.loadgen.rate(s.port, s.host, rate, cfg.connections, cfg.duration_s, warmup)
                bad = out["errors"] + out["non_2xx"]
                if out["requests"] <= 0 or bad > 0.01 * max(out["requests"], 1):
                    raise BenchError(f"{s.name}: {bad} failed requests of {out['requests']}: {out}")
                if out["unsent"] or out["rate"] < 0.95 * rate:
                    behind[s.name] = min(behind.get(s.name, rate), out["rate"])
                for pct in PERCENTILES:
                    p.setdefault((s.name, pct), []).append(out["latency_ms"][pct])
                res.raw.setdefault(s.name, []).append(out)
    for (name, pct), values in p.items():
        res.add(name, pct.replace("_", "."), "ms", values)
    for name in ("nginx", "wakegate"):
        for pct in ("p50", "p99"):
            if (name, pct) in p:
                added = [a - b for a, b in zip(p[(name, pct)], p[("direct", pct)], strict=True)]
                row = res.add(name, f"added {pct}", "ms", added)
                if name == "wakegate" and pct == "p99":
                    row.target = Target("≤ 2 ms", row.median <= 2.0)
    shares = [100 * o["loadgen_cpu_s"] / (o["duration_s"] + warmup) for n in systems for o in res.raw.get(n, [])
              if "loadgen_cpu_s" in o]
    if shares:
        res.notes.append(f"the load generator used {min(shares):.0f}-{max(shares):.0f}% of its core (shared with the "
                         "proxies' upstream); near 100% its own queueing would delay the upstream.")
    for name, answered in behind.items():
        res.notes.append(f"{name} did not keep up with {rate:,} req/s (as low as {answered:,.0f}/s answered in the "
                         "measured window): its latency includes the queue that built up.")
    capped = " (capped: the generator shares its core with the upstream)" if rate < round(saturation / 2) else ""
    res.notes.append(f"{rate:,} req/s over {cfg.connections} connections (half of nginx's saturation "
                     f"{saturation:,.0f} req/s{capped}), latency measured from each request's intended send "
                     "time; 'added' = system - direct, per repeat.")
    return res


# --- 3. cold start ------------------------------------------------------------------------------


def _ready_times(path: Path) -> list[int]:
    try:
        return [int(x) for x in path.read_text().split()]
    except FileNotFoundError:
        return []


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def _serve_command(ctx: Context, **kwargs: Any) -> list[str]:
    return [*ctx.layout.taskset(ctx.layout.upstream), *ctx.loadgen.serve_argv(**kwargs)]


def _held_burst(ctx: Context, gw: wakegate.Gateway, project: str, n: int, release: Path, d: Path,
                on_held: Callable[[], None] | None = None) -> dict[str, Any]:
    """``n`` requests released at once at a sleeping project whose process listens only once
    ``release`` exists; once the gateway holds all of them, run ``on_held`` and release it.
    The result also has ``gateway_cpu``: samples of the gateway's CPU time from the release
    until the client had every answer (see :func:`cpu_between`)."""
    progress = d / f"{project}.progress"
    progress.unlink(missing_ok=True)
    timeout_s = 120 + n / 50
    argv = ctx.loadgen.burst_argv(gw.port, wakegate.host(project), n, progress, timeout_s)
    client = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              preexec_fn=pinned(ctx.layout.loadgen))
    try:
        def sent() -> bool:
            if client.poll() is not None:
                raise BenchError(f"burst client exited early: {client.stderr.read().decode()[-1000:]}"
                                 if client.stderr else "burst client exited early")
            return progress.exists() and "sent" in progress.read_text()

        wait_until(sent, timeout_s, f"{n} requests sent to {project}", 0.02)
        _wait_held(gw, n, timeout_s)
        if on_held is not None:
            on_held()
        with CpuTrace(gw.proc, ctx.layout.loadgen) as trace:
            release.touch()
            out, err = client.communicate(timeout=timeout_s)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
    if client.returncode != 0:
        raise BenchError(f"burst client failed: {err.decode()[-1000:]}")
    result: dict[str, Any] = json.loads(out)
    result["gateway_cpu"] = trace.samples
    return result


def _summary(burst: dict[str, Any]) -> dict[str, Any]:
    """A burst's result without its per-request and per-sample lists."""
    return {k: v for k, v in burst.items() if k not in ("first_byte_unix_ns", "gateway_cpu")}


def _one_request(ctx: Context, gw: wakegate.Gateway, project: str, d: Path, timeout_s: float) -> dict[str, Any]:
    """One request (a burst of one) to a sleeping project; the burst's result."""
    return _burst(ctx, gw.port, 1, d / f"{project}.progress", timeout_s, project)


def _wait_held(gw: wakegate.Gateway, n: int, timeout_s: float) -> None:
    """Until ``wakegate_held_requests`` reaches ``n``."""
    deadline = time.monotonic() + timeout_s
    held = -1.0
    while time.monotonic() < deadline:
        gw.proc.check_alive()
        held = wakegate.metric(gw.metrics(), "wakegate_held_requests")
        if held >= n:
            return
        time.sleep(0.02)
    raise BenchError(f"the gateway held {held:.0f} of {n} requests after {timeout_s:.0f} s")


def cold_start(ctx: Context) -> ScenarioResult:
    """From the moment the project's process listens to the first response byte at the client."""
    cfg, res = ctx.config, ScenarioResult("cold_start", "3. Cold start (local backend)")
    d = ctx.dir("cold_start")
    ready = d / "ready"
    ready.mkdir(exist_ok=True)
    projects: dict[str, dict[str, Any]] = {}
    for i in range(cfg.cold_single):
        projects[f"one-{i}"] = {"command": _serve_command(ctx, delay_s=cfg.boot_delay_s,
                                                          ready_file=ready / f"one-{i}")}
    for r in range(cfg.repeat):
        projects[f"many-{r}"] = {"command": _serve_command(ctx, wait_file=d / f"release-{r}",
                                                           ready_file=ready / f"many-{r}")}
    single: list[float] = []
    wake_total: list[float] = []
    many: dict[str, list[float]] = {"p50": [], "p99": [], "max": []}
    release_cpu_us: list[float] = []  # per released request, ready → last first byte
    release_busy: list[float] = []
    with ExitStack() as stack:
        gw = _start_gateway(ctx, stack, d, projects, max_held=max(1000, 2 * cfg.cold_many))
        for i in range(cfg.cold_single):
            name = f"one-{i}"
            out = _one_request(ctx, gw, name, d, 60)
            times = _ready_times(ready / name)
            if out["ok"] != 1 or len(times) != 1:
                raise BenchError(f"{name}: {out['ok']} answers, {len(times)} starts: {out}")
            first = out["first_byte_unix_ns"][0]
            single.append((first - times[0]) / 1e6)
            wake_total.append((first - out["sent_unix_ns"]) / 1e6)
        for r in range(cfg.repeat):
            name = f"many-{r}"
            out = _held_burst(ctx, gw, name, cfg.cold_many, d / f"release-{r}", d)
            times = _ready_times(ready / name)
            if out["ok"] != cfg.cold_many or len(times) != 1:
                raise BenchError(f"{name}: {out['ok']} of {cfg.cold_many} answered, {len(times)} starts: "
                                 f"{_summary(out)}")
            overheads = [(fb - times[0]) / 1e6 for fb in out["first_byte_unix_ns"]]
            for q, key in ((0.5, "p50"), (0.99, "p99"), (1.0, "max")):
                many[key].append(_pct(overheads, q))
            cpu_ns, wall_ns = cpu_between(out["gateway_cpu"], times[0], max(out["first_byte_unix_ns"]))
            release_cpu_us.append(cpu_ns / 1e3 / cfg.cold_many)
            release_busy.append(100 * cpu_ns / max(wall_ns, 1))
        res.raw["counters"] = wakegate.counters(gw.metrics())
    peers = _simultaneous_peers(ctx, d, res)
    res.add("wakegate", "1 held: ready → first byte, each wake", "ms", single)
    row = res.add("wakegate", f"1 held: p99 over {len(single)} wakes", "ms", [_pct(single, 0.99)])
    row.target = Target("≤ 10 ms", row.median <= 10)
    res.add("wakegate", "1 held: request → first byte (whole wake)", "ms", wake_total)
    res.add("wakegate", f"{cfg.cold_many:,} held: ready → first byte p50", "ms", many["p50"])
    row = res.add("wakegate", f"{cfg.cold_many:,} held: ready → first byte p99", "ms", many["p99"])
    floor = "".join(f"; {name} {statistics.median(v):.1f}" for name, v in peers.items() if v)
    row.target = Target(f"≤ 10 ms (same burst, running upstream{floor})" if floor else "≤ 10 ms", row.median <= 10)
    res.add("wakegate", f"{cfg.cold_many:,} held: ready → last first byte", "ms", many["max"])
    res.add("wakegate", f"{cfg.cold_many:,} held: gateway CPU per released request", "µs", release_cpu_us)
    res.add("wakegate", f"{cfg.cold_many:,} held: gateway core busy, ready → last first byte", "%", release_busy)
    for name, values in peers.items():
        res.add(name, f"{cfg.cold_many:,} at once, running upstream: send → first byte p99", "ms", values)
    if peers:
        res.notes.append(
            f"peer rows: the same {cfg.cold_many:,} requests sent at once to an upstream already running "
            "(`loadgen serve`), through nginx (upstream on the load generator's core) and directly (upstream on "
            "the proxy core), p99 from the send: what merely proxying that many simultaneous requests costs on one "
            "core, for comparison with wakegate's ready → first byte.")
    res.notes.append(
        "gateway CPU: its CPU-time clock, sampled every millisecond from a thread on the load generator's core, "
        "over the span from ready to the last first byte (widened to the samples around it); per released "
        "request = that CPU time / the requests, busy = that CPU time / the span. The gateway is one thread: "
        "busy near 100 % means its core was the limit, and the release could not end sooner on one core.")
    res.notes.append(
        f"'ready' is the instant the project's process returned from listen() (it writes the time to a file); "
        f"single wakes boot in {cfg.boot_delay_s} s, concurrent ones listen once all requests are held; "
        "the local backend notices readiness by probing the port with a backoff.")
    return res


def _served_direct_and_by_nginx(ctx: Context, stack: ExitStack, d: Path, label: str) -> tuple[int, int, Proc]:
    """Two ``loadgen serve`` upstreams: one reached directly (on the proxy's core, as a proxy would be)
    and one behind nginx (on the upstream core). Returns (direct port, nginx port, nginx)."""
    lay = ctx.layout
    direct_port, up_port, px_port = free_port(), free_port(), free_port()
    for name, port, cores in ((f"{label}-upstream-direct", direct_port, lay.proxy),
                              (f"{label}-upstream", up_port, lay.upstream)):
        up = _owned(stack, spawn(name, ctx.loadgen.serve_argv(listen=f"127.0.0.1:{port}"), ctx.logs, cores))
        wait_until(functools.partial(up.listening, port), 10, name)
    proxy = _owned(stack, nginx.start(f"nginx-{label}", nginx.proxy_config(d / f"{label}-proxy", px_port, up_port),
                                      px_port, ctx.logs, lay.proxy))
    return direct_port, px_port, proxy


def _simultaneous_peers(ctx: Context, d: Path, res: ScenarioResult) -> dict[str, list[float]]:
    """``cold_many`` requests at once to an already-running ``loadgen serve``, through nginx and
    directly; per repeat, the p99 of first byte - send in ms. A peer that fails is noted, not fatal."""
    cfg = ctx.config
    n = cfg.cold_many
    out: dict[str, list[float]] = {}
    with ExitStack() as stack:
        direct_port, px_port, _ = _served_direct_and_by_nginx(ctx, stack, d, "burst")
        for system, port in (("nginx", px_port), ("direct", direct_port)):
            try:
                _burst(ctx, port, 1, d / f"{system}-warm.progress", 30)  # connections and workers are up
                for r in range(cfg.repeat):
                    burst = _burst(ctx, port, n, d / f"{system}-{r}.progress", 120 + n / 50)
                    if burst["ok"] != n:
                        raise BenchError(f"{burst['ok']} of {n} answered: "
                                         f"{_summary(burst)}")
                    waits = [(fb - burst["sent_unix_ns"]) / 1e6 for fb in burst["first_byte_unix_ns"]]
                    out.setdefault(system, []).append(_pct(waits, 0.99))
            except BenchError as exc:
                out.pop(system, None)
                _not_run(res, f"{system} ({n:,} at once)", exc)
    return out


def _burst(ctx: Context, port: int, n: int, progress: Path, timeout_s: float,
           project: str = "warm") -> dict[str, Any]:
    """A burst of ``n`` requests for ``project``'s host at ``port``, sent at once; its result."""
    argv = ctx.loadgen.burst_argv(port, wakegate.host(project), n, progress, timeout_s)
    done = subprocess.run(argv, capture_output=True, timeout=timeout_s + 30, preexec_fn=pinned(ctx.layout.loadgen),
                          check=False)
    if done.returncode != 0:
        raise BenchError(f"burst of {n} to {project} failed: {done.stderr.decode(errors='replace')[-1000:]}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


async def provision(kubeconfig: Path, names: list[str], image: str = "wakegate.test/echo:1") -> dict[str, str]:
    """Create the projects with the real provisioner (Deployments at 0 replicas); name → namespace."""
    from provisioner import apply as papply
    from provisioner.render import render
    from provisioner.spec import ProjectSpec

    api = await papply.connect(kubeconfig)
    out = {}
    try:
        for name in names:
            spec = ProjectSpec(name=name, image=image)
            await papply.create_project(papply.Kube(api), render(spec), wait_timeout_s=60)
            out[name] = spec.namespace
    finally:
        await api.close()
    return out


KUBE_IMAGE = "wakegate.test/echo:1"
WATCH_CONNECTIONS = 3


def cold_start_kubernetes(ctx: Context) -> ScenarioResult:
    """From the EndpointSlice saying ready to the first response byte, on the test control plane."""
    cfg, res = ctx.config, ScenarioResult("cold_start_k8s", "3b. Cold start (Kubernetes)")
    d = ctx.dir("cold_start_k8s")
    from gateway.contract import PROJECT_LABEL

    try:
        from tests.cluster.controlplane import Cluster
    except ImportError as exc:
        raise BenchError(f"needs the repository's test control plane (tests/cluster): {exc}") from exc
    overhead: list[float] = []
    whole: list[float] = []
    spread: list[float] = []
    with ExitStack() as stack:
        cluster = Cluster.start(d / "cluster")
        stack.callback(cluster.stop)
        names = [f"cold-{i}" for i in range(cfg.kube_wakes)]
        namespaces = asyncio.run(provision(cluster.kubeconfig, names))
        gw = wakegate.start(None, ctx.layout, ctx.logs, name="wakegate-kubernetes", backend=[
            "--backend", "kubernetes", "--kubeconfig", str(cluster.kubeconfig), "--replica-id", "bench"])
        _owned(stack, gw.proc)
        for name in names:
            progress = d / f"{name}.watching"
            # Two kinds of watch: the namespace's, and a cluster-wide one by label like the gateway's own.
            urls = [f"{cluster.server}/apis/discovery.k8s.io/v1/namespaces/{namespaces[name]}/endpointslices",
                    f"{cluster.server}/apis/discovery.k8s.io/v1/endpointslices?"
                    f"labelSelector={urllib.parse.quote(f'{PROJECT_LABEL}={name}')}"]
            argv = ctx.loadgen.watch_argv(urls, cluster.ca_file, cluster.pki / "admin.crt", cluster.pki / "admin.key",
                                          progress, 180, WATCH_CONNECTIONS)
            watcher = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                       preexec_fn=pinned(ctx.layout.loadgen))
            try:
                def watching(w: subprocess.Popen[bytes] = watcher, progress: Path = progress) -> bool:
                    if w.poll() is not None:
                        raise BenchError(f"the EndpointSlice watch ended: {w.communicate()[1].decode()[-500:]}")
                    return progress.exists()

                wait_until(watching, 30, f"the EndpointSlice watch of {name}")
                out = _one_request(ctx, gw, name, d, 180)
                stdout, stderr = watcher.communicate(timeout=60)
            finally:
                if watcher.poll() is None:
                    watcher.kill()
                    watcher.wait()
            if watcher.returncode != 0:
                raise BenchError(f"{name}: no ready EndpointSlice seen: {stderr.decode()[-500:]}")
            if out["ok"] != 1:
                raise BenchError(f"{name}: the request was not answered: {out}")
            seen = json.loads(stdout)
            ready_ns = seen["ready_unix_ns"]
            spread.append((seen["arrivals_unix_ns"][-1] - ready_ns) / 1e6)
            first = out["first_byte_unix_ns"][0]
            res.raw.setdefault("wakes", []).append({"project": name, "ready_unix_ns": ready_ns,
                                                    "first_byte_unix_ns": first})
            overhead.append((first - ready_ns) / 1e6)
            whole.append((first - out["sent_unix_ns"]) / 1e6)
        res.raw["counters"] = wakegate.counters(gw.metrics())
    res.raw["watch_spread_ms"] = spread
    res.add("wakegate", "1 held: EndpointSlice ready → first byte, each wake", "ms", overhead)
    row = res.add("wakegate", f"1 held: EndpointSlice ready → first byte, p99 over {len(overhead)} wakes", "ms",
                  [_pct(overhead, 0.99)])
    row.target = Target("≤ 10 ms", row.median <= 10)
    res.add("wakegate", "1 held: request → first byte (whole wake)", "ms", whole)
    res.notes.append(
        "tests/cluster control plane (etcd, kube-apiserver, kube-controller-manager, node agent); projects "
        f"created by the provisioner with the {KUBE_IMAGE} test image (an aiohttp app). 'Ready' is when a watch "
        "of the project's EndpointSlices (a process of its own) first receives the event with a ready endpoint, "
        "the event the gateway's informer also waits for. The apiserver writes that event to each watcher from "
        "a goroutine of its own, so two watchers can see it milliseconds apart on a busy machine: the bench "
        f"watches on {WATCH_CONNECTIONS} connections each the namespace's EndpointSlices and, like the gateway's "
        "informer, all EndpointSlices by label, and takes the earliest arrival (median spread between them "
        f"{statistics.median(spread) if spread else float('nan'):.2f} ms). The gateway's own watch can still be "
        "earlier than all of them, so a single sample may come out slightly below zero. Unlike on a real "
        "cluster, the control plane, the node agent and the pod share this machine's cores with the gateway, "
        "and they are busiest at that very moment (pod status, Deployment status and the EndpointSlice written "
        "and sent to every watcher): single wakes vary by several ms, and the p99 over a few wakes is their "
        "maximum. 1,000 held requests are measured with the local backend only: here the Python test app's own "
        "time to answer them would dominate.")
    return res


# --- 4. herd --------------------------------------------------------------------------------------


class PeakRSS:
    """Samples a process's RSS in a thread while the block runs."""

    def __init__(self, proc: Proc, with_children: bool = False, interval_s: float = 0.02) -> None:
        self.proc, self.with_children, self.interval_s = proc, with_children, interval_s
        self.baseline = self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(Exception):
                self.peak = max(self.peak, self.proc.rss_bytes(self.with_children))
            self._stop.wait(self.interval_s)

    def __enter__(self) -> PeakRSS:
        self.baseline = self.peak = self.proc.rss_bytes(self.with_children)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.proc.rss_bytes(self.with_children))


def herd(ctx: Context) -> ScenarioResult:
    """N concurrent requests on one sleeping project: one scale-up, all answered, memory per hold."""
    cfg, res = ctx.config, ScenarioResult("herd", "4. Herd")
    d = ctx.dir("herd")
    n = cfg.herd
    answered, starts, scale_ups, per_held, held_rss, connect_s = [], [], [], [], [], []
    for r in range(cfg.repeat):
        name = f"herd-{r}"
        ready = d / f"{name}.ready"
        ready.unlink(missing_ok=True)
        release = d / f"release-{r}"
        release.unlink(missing_ok=True)
        with ExitStack() as stack:
            gw = _start_gateway(ctx, stack, d, {name: {"command": _serve_command(ctx, wait_file=release,
                                                                                 ready_file=ready)}},
                                name=f"wakegate-herd-{r}", max_held=n)
            ups_before = wakegate.metric(gw.metrics(), "wakegate_scale_operations_total", {"direction": "up"})
            base = gw.proc.rss_bytes()
            at_hold: list[int] = []

            def note_rss(gw: wakegate.Gateway = gw, at_hold: list[int] = at_hold) -> None:
                at_hold.append(gw.proc.rss_bytes())

            out = _held_burst(ctx, gw, name, n, release, d, on_held=note_rss)
            text = gw.metrics()
            ups = wakegate.metric(text, "wakegate_scale_operations_total", {"direction": "up"}) - ups_before
            res.raw.setdefault("counters", []).append(wakegate.counters(text))
        answered.append(out["ok"])
        starts.append(len(_ready_times(ready)))
        scale_ups.append(ups)
        per_held.append((at_hold[0] - base) / n / 1024)
        held_rss.append(at_hold[0] / MiB)
        connect_s.append(out["connect_s"])
        res.raw.setdefault("bursts", []).append(_summary(out))
    res.add("wakegate", "answered (2xx)", "", answered, Target(f"all {n:,}", min(answered) == n))
    res.add("wakegate", "scale-ups (metrics)", "", scale_ups, Target("exactly 1", all(u == 1 for u in scale_ups)))
    res.add("wakegate", "process starts", "", starts, Target("exactly 1", all(s == 1 for s in starts)))
    row = res.add("wakegate", "memory per held request", "KiB", per_held)
    row.target = Target("≤ 20 KiB", row.median <= 20)
    res.add("wakegate", f"RSS while holding {n:,}", "MiB", held_rss)
    if any(u != 1 for u in scale_ups):
        res.notes.append("more scale-up calls than process starts: the gateway asked the backend again after "
                         "upstream connects to the new process failed (see counters in latest.json).")
    res.notes.append(f"{n:,} connections opened first, then one request each released at once; memory per held "
                     "request = (gateway RSS once all are held - RSS before connecting) / N.")
    return res


# --- 5. scale of projects -------------------------------------------------------------------------


def _sleeping(count: int, command: list[str], prefix: str) -> dict[str, dict[str, Any]]:
    return {f"{prefix}{i}": {"command": command} for i in range(count)}


def projects(ctx: Context) -> ScenarioResult:
    """Warm throughput and CPU per request to one project among 10 / 1,000 / 10,000, and the RSS."""
    cfg, res = ctx.config, ScenarioResult("projects", "5. Scale of projects")
    d = ctx.dir("projects")
    warm_cmd = nginx.project_command(d / "project", ctx.layout)
    idle_cmd = _serve_command(ctx)
    duration = max(1.0, cfg.duration_s / 2)
    rps: dict[int, list[float]] = {n: [] for n in cfg.project_counts}
    cpu_us: dict[int, list[float]] = {n: [] for n in cfg.project_counts}
    rss: dict[int, list[float]] = {n: [] for n in cfg.project_counts}
    startup: dict[int, list[float]] = {n: [] for n in cfg.project_counts}
    for _ in range(cfg.repeat):
        for n in cfg.project_counts:
            table = {"warm": {"command": warm_cmd}, **_sleeping(n - 1, idle_cmd, "idle-")}
            with ExitStack() as stack:
                began = time.monotonic()
                gw = _start_gateway(ctx, stack, d, table, name=f"wakegate-{n}", warm="warm")
                startup[n].append(time.monotonic() - began)
                url = f"http://127.0.0.1:{gw.port}/"
                wrk(url, wakegate.host("warm"), cfg.connections, 1, ctx.layout.loadgen, d)
                before = gw.proc.cpu_s()
                report = wrk(url, wakegate.host("warm"), cfg.connections, duration, ctx.layout.loadgen, d)
                used = gw.proc.cpu_s() - before
                _check_wrk(f"wakegate with {n} projects", report, cfg.connections)
                rps[n].append(report["rps"])
                cpu_us[n].append(used / report["requests"] * 1e6)
                rss[n].append(gw.proc.rss_bytes() / 1e6)
    low, high = min(cfg.project_counts), max(cfg.project_counts)
    for n in cfg.project_counts:
        res.add("wakegate", f"requests/s, {n:,} projects", "req/s", rps[n])
    for n in cfg.project_counts:
        row = res.add("wakegate", f"CPU per request, {n:,} projects", "µs", cpu_us[n])
        if n == high and n != low:
            ratio = row.median / statistics.median(cpu_us[low])
            row.target = Target(f"flat (≤ 1.1 x at {low:,}: {ratio:.2f})", ratio <= 1.1)
    for n in cfg.project_counts:
        row = res.add("wakegate", f"RSS, {n:,} projects", "MB", rss[n])
        if n == high:
            row.target = Target("≤ 100 MB" if n >= 10000 else f"≤ 100 MB (at 10,000; here {n:,})", row.median <= 100)
    for n in cfg.project_counts:
        res.add("wakegate", f"startup, {n:,} projects", "s", startup[n])
    res.notes.append("one warm project (nginx upstream) among N-1 asleep ones; wrk as in scenario 1 for "
                     f"{duration:.0f} s; CPU per request = gateway CPU time / requests.")
    return res


async def _touch_projects(port: int, hosts: list[str], concurrency: int = 32) -> dict[int, int]:
    """One GET to each host as a Kubernetes probe would send it (the default ignore rules answer it
    without waking the project); returns status counts."""
    sem = asyncio.Semaphore(concurrency)
    counts: dict[int, int] = {}

    async def one(h: str) -> None:
        async with sem:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                writer.write(f"GET /healthz HTTP/1.1\r\nHost: {h}\r\nUser-Agent: kube-probe/1.30\r\n"
                             "Connection: close\r\n\r\n".encode())
                status_line = await asyncio.wait_for(reader.readline(), 60)
                status = int(status_line.split()[1]) if len(status_line.split()) > 1 else 0
                counts[status] = counts.get(status, 0) + 1
                await asyncio.wait_for(reader.read(), 60)
            finally:
                writer.close()

    await asyncio.gather(*(one(h) for h in hosts))
    return counts


def metrics_scrape(ctx: Context) -> ScenarioResult:
    """p99 of requests at a fixed rate with and without /metrics being scraped, 5,000 projects."""
    cfg, res = ctx.config, ScenarioResult("metrics_scrape", "5b. /metrics scrape, many projects")
    d = ctx.dir("metrics_scrape")
    m = cfg.metrics_projects
    table = {"warm": {"command": nginx.project_command(d / "project", ctx.layout)},
             **_sleeping(m - 1, ["/bin/false"], "asleep-")}
    p99: dict[str, list[float]] = {"without": [], "with": []}
    scrape_ms: list[float] = []
    with ExitStack() as stack:
        gw = _start_gateway(ctx, stack, d, table, max_held=max(1000, m), warm="warm")
        # One request to every other project, so each has its per-project series, as on a gateway that
        # has seen traffic for all of them. They stay asleep: probes never wake a project.
        statuses = asyncio.run(_touch_projects(gw.port, [wakegate.host(f"asleep-{i}") for i in range(m - 1)]))
        res.raw["populate_statuses"] = statuses
        series = sum(1 for line in gw.metrics().splitlines() if line.startswith("wakegate_project_"))
        res.raw["per_project_series"] = series
        url = f"http://127.0.0.1:{gw.admin_port}/metrics"
        warmup = 0.5 if cfg.smoke else 1.0
        for _ in range(cfg.repeat):
            for mode in ("without", "with"):
                out = ctx.loadgen.rate(gw.port, wakegate.host("warm"), cfg.metrics_rate, cfg.connections,
                                       cfg.duration_s, warmup, scrape_url=url if mode == "with" else None,
                                       scrape_interval_s=cfg.scrape_interval_s)
                if out["errors"] or out["non_2xx"] or out["requests"] <= 0:
                    raise BenchError(f"requests failed during the scrape test: {out}")
                if mode == "with":
                    if not out["scrapes"] or out["scrape_errors"]:
                        raise BenchError(f"scrapes failed: {out}")
                    scrape_ms.append(out["scrape_ms"]["p50"])
                p99[mode].append(out["latency_ms"]["p99"])
                res.raw.setdefault(mode, []).append(out)
    res.add("wakegate", "p99, no scrape", "ms", p99["without"])
    res.add("wakegate", f"p99, scrape every {cfg.scrape_interval_s} s", "ms", p99["with"])
    added = [a - b for a, b in zip(p99["with"], p99["without"], strict=True)]
    res.add("wakegate", "p99 added by scraping", "ms", added, Target("≤ 5 ms", statistics.median(added) <= 5))
    res.add("wakegate", "scrape duration p50", "ms", scrape_ms)
    res.notes.append(f"{m:,} projects, {series:,} per-project series in /metrics; {cfg.metrics_rate:,.0f} req/s "
                     f"open loop to one warm project while /metrics is fetched every {cfg.scrape_interval_s} s.")
    return res


# --- 6. streaming --------------------------------------------------------------------------------


def streaming(ctx: Context) -> ScenarioResult:
    """One large download and one large upload through each system; throughput and memory growth."""
    cfg, res = ctx.config, ScenarioResult("streaming", "6. Streaming")
    d = ctx.dir("streaming")
    size = cfg.stream_bytes
    with ExitStack() as stack:
        direct_port, px_port, proxy = _served_direct_and_by_nginx(ctx, stack, d, "stream")
        systems = [System("direct", direct_port, wakegate.host("stream")),
                   System("nginx", px_port, wakegate.host("stream"), proxy, True)]
        try:
            gw = _start_gateway(ctx, stack, d, {"stream": {"command": _serve_command(ctx)}}, warm="stream")
            systems.append(System("wakegate", gw.port, wakegate.host("stream"), gw.proc))
        except BenchError as exc:
            res.notes.append(f"wakegate did not run: {exc}")
        mibps: dict[tuple[str, str], list[float]] = {}
        growth: dict[tuple[str, str], list[float]] = {}
        for _ in range(cfg.repeat):
            for s in systems:
                for mode in ("download", "upload"):
                    with _maybe_rss(s) as sampler:
                        out = ctx.loadgen.stream(s.port, s.host, mode, size)
                    mibps.setdefault((s.name, mode), []).append(out["bytes_per_s"] / MiB)
                    if sampler is not None:
                        growth.setdefault((s.name, mode), []).append((sampler.peak - sampler.baseline) / MiB)
    for mode in ("download", "upload"):
        metric = f"{mode} throughput"
        for s in systems:
            res.add(s.name, metric, "MiB/s", mibps[(s.name, mode)])
        res.compare(metric)
        wg = res.find("wakegate", metric)
        if wg is not None and wg.vs_nginx is not None:
            wg.target = Target("≥ 0.5 x nginx", wg.vs_nginx >= 0.5)
        for s in systems:
            if (s.name, mode) in growth:
                row = res.add(s.name, f"{mode} memory growth", "MiB", growth[(s.name, mode)])
                if s.name == "wakegate":
                    row.target = Target("flat (≤ 32 MiB)", row.median <= 32)
    res.notes.append(f"{size / MiB:,.0f} MiB per transfer, one connection; memory growth = peak RSS during the "
                     "transfer - RSS before it (nginx: master + worker).")
    return res


@contextlib.contextmanager
def _maybe_rss(s: System) -> Iterator[PeakRSS | None]:
    if s.proc is None:
        yield None
        return
    with PeakRSS(s.proc, s.with_children) as sampler:
        yield sampler


# --- 7. replicas (issue 18) ------------------------------------------------------------------------


def replicas(ctx: Context) -> ScenarioResult:
    """API server load vs gateway replica count on the test control plane; the activity exchange at
    10,000 projects (bench/replicas.py)."""
    from bench import replicas as scenario

    return scenario.run(ctx)


SCENARIOS: dict[str, Callable[[Context], ScenarioResult]] = {
    "throughput": throughput,
    "latency": latency,
    "cold_start": cold_start,
    "cold_start_k8s": cold_start_kubernetes,
    "herd": herd,
    "projects": projects,
    "metrics_scrape": metrics_scrape,
    "streaming": streaming,
    "replicas": replicas,
}
