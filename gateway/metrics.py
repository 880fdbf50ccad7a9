"""Prometheus metrics. The metric names are an interface for ops: never rename one.

One :class:`Metrics` object per gateway, with its own registry (tests build many). It is both the
lifecycle's :class:`~gateway.lifecycle.LifecycleObserver` and the data path's ``RequestObserver``.

Hot-path cost is kept to well under a microsecond per request: finished requests are counted in
plain lists (count, sum and histogram buckets per status class) and exported by a collector at
scrape time, with the names, types, labels and buckets a prometheus-client Counter and Histogram
would have; the per-project counters are plain dict entries; values that only matter at scrape time
(projects by state, held and in-flight counts) are read by a custom collector when scraped.

``/metrics`` is produced by :meth:`Metrics.render`, which formats the per-project series in slices
and yields to the event loop between them, so a scrape with thousands of projects never stalls
proxied requests for more than a fraction of a millisecond at a time.
"""

from __future__ import annotations

import asyncio
import collections
import time
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Sequence
from operator import attrgetter
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector, generate_latest
from prometheus_client import metrics as _prometheus_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

if TYPE_CHECKING:
    from gateway.lifecycle import Lifecycle, Project

# Text exposition format 0.0.4: what we write for the per-project series, and what every
# Prometheus version scrapes.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Status classes, plus the waiting page: sent with 503 but a normal cold browser visit, counted apart
# so that error-rate alerts on 5xx do not fire on wakes.
CODE_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx", "other", "waiting_page")
WAITING_PAGE_CLASS = 6
# Sub-millisecond resolution for the warm path, up to the longest hold a request may see.
REQUEST_BUCKETS_S = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
)
# Tunnel and stream lifetimes: seconds to hours.
STREAM_BUCKETS_S = (0.1, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 14400.0, 86400.0)
STREAM_KINDS = ("tunnel", "stream")
WAKEUP_BUCKETS_S = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)
WAKE_RESULTS = ("ready", "timeout", "failed")
# Why a request for a project without a ready endpoint was answered with an error, counted once per
# request: overflow (too many waiting, 503), timeout (not ready within the hold timeout, 504),
# failed (the wake failed, 502), unavailable (the backend could not be reached, 503), removed (404),
# draining (the gateway stops, 503), rate_limited (it would have started a wake past the public
# wake rate limits, 429).
HELD_REJECT_REASONS = ("overflow", "timeout", "failed", "unavailable", "removed", "draining", "rate_limited")
UPSTREAM_ERROR_REASONS = ("connect", "timeout", "reset", "protocol")
# Per-project lines formatted, or projects counted by state, between two yields to the event loop.
RENDER_SLICE = 500
COUNT_SLICE = 1000
PROJECT_STATES = ("asleep", "waking", "ready", "failed")
_get_state = attrgetter("state")

PROJECT_REQUESTS = "wakegate_project_requests"
PROJECT_WAKEUPS = "wakegate_project_wakeups"
_PROJECT_HELP = {
    PROJECT_REQUESTS: "Requests finished, by project.",
    PROJECT_WAKEUPS: "Wakes finished (any result), by project.",
}


def code_class(status: int) -> str:
    """``"2xx"`` for 200..299 and so on; ``"other"`` for anything outside 100..599."""
    return CODE_CLASSES[status // 100 - 1] if 100 <= status <= 599 else "other"


def _escape_label(value: str) -> str:
    if "\\" in value or '"' in value or "\n" in value:
        return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return value


class Metrics:
    """Every wakegate metric, in its own :class:`CollectorRegistry`.

    Implements ``LifecycleObserver`` (wakes, holds, scale operations, removed projects) and the
    data path's ``RequestObserver`` (finished requests, upstream errors, in-flight changes).
    """

    def __init__(self, lifecycle: Lifecycle | None = None, created_series: bool = False) -> None:
        self.lifecycle = lifecycle
        # prometheus-client's ``*_created`` series (its switch is process-wide): off unless asked for.
        _prometheus_metrics._use_created = created_series
        self.held = 0
        self.inflight = 0
        self.project_requests: dict[str, int] = {}
        self.project_wakeups: dict[str, int] = {}
        # Projects by state counted by render() ahead of the exposition (None: count when collected).
        self._state_counts: dict[str, int] | None = None

        # Finished requests per class (index = status // 100 - 1 for 1xx..5xx, then other, then the
        # waiting page): histogram buckets of the time to the response head (not cumulative; the last
        # one is +Inf) and their sum. The request count of a class is the sum of its buckets.
        self._request_buckets = [[0] * (len(REQUEST_BUCKETS_S) + 1) for _ in CODE_CLASSES]
        self._request_sums = [0.0] * len(CODE_CLASSES)

        # Everything but the per-project series: rendered in one go (bounded size).
        self.core_registry = core = CollectorRegistry(auto_describe=True)
        requests = _RequestCollector(self)
        core.register(requests)

        self._wakeups_total = wakeups = Counter("wakegate_wakeups_total", "Wakes finished, by result.", ["result"],
                                                registry=core)
        self._wakeups = {r: wakeups.labels(r) for r in WAKE_RESULTS}
        self._wakeup_duration = Histogram("wakegate_wakeup_duration_seconds",
                                          "Time from wake start to ready (or failure).",
                                          buckets=WAKEUP_BUCKETS_S, registry=core)
        self._wakes_started = Counter("wakegate_wakeups_started_total", "Wakes started.", registry=core)

        self._held_rejected = Counter("wakegate_held_rejected_total",
                                      "Requests for a project without a ready endpoint (held, or asking for "
                                      "the waiting page) answered with an error instead of being proxied, "
                                      "once per request, by reason: overflow, timeout, failed, unavailable, "
                                      "removed, draining, rate_limited (429: past the public wake rate limits).",
                                      ["reason"], registry=core)
        self._held_rejected_by = {r: self._held_rejected.labels(r) for r in HELD_REJECT_REASONS}

        scale = Counter("wakegate_scale_operations_total", "Scale operations sent to the backend.",
                        ["direction", "result"], registry=core)
        self._scale = {(d, ok): scale.labels(d, "ok" if ok else "error")
                       for d in ("up", "down") for ok in (True, False)}

        self._upstream_errors = Counter("wakegate_upstream_errors_total",
                                        "Failures talking to a project's endpoint, by reason.", ["reason"],
                                        registry=core)
        self._upstream_by = {r: self._upstream_errors.labels(r) for r in UPSTREAM_ERROR_REASONS}
        self._streams = Histogram("wakegate_stream_duration_seconds",
                                  "Lifetime of WebSocket (and other upgrade) tunnels and of responses streamed "
                                  "over more than one read (SSE, downloads), from response head to end, by kind.",
                                  ["kind"], buckets=STREAM_BUCKETS_S, registry=core)
        self._streams_by = {k: self._streams.labels(k) for k in STREAM_KINDS}
        self._live = _LiveCollector(self)
        core.register(self._live)
        process = ProcessCollector(registry=core)  # process_cpu_seconds_total, memory, open fds
        self._core_collectors: tuple[Collector, ...] = (
            requests, wakeups, self._wakeup_duration, self._wakes_started, self._held_rejected, scale,
            self._upstream_errors, self._streams, self._live, process,
        )

        # The full registry (core + per-project series) for synchronous generate_latest users.
        self.registry = CollectorRegistry(auto_describe=True)
        for collector in (*self._core_collectors, _ProjectCollector(self)):
            self.registry.register(collector)

    def attach(self, lifecycle: Lifecycle) -> None:
        """Read project states from ``lifecycle`` at scrape time (it is built after its observer)."""
        self.lifecycle = lifecycle

    # --- RequestObserver (data path) -------------------------------------------------------------

    def request_finished(self, project: str | None, status: int, duration_s: float, page: bool = False) -> None:
        """A response is complete (or failed); ``duration_s`` is the time to its head; ``project`` is
        None when routing failed; ``page``: it was the waiting page."""
        i = status // 100 - 1
        if page:
            i = WAITING_PAGE_CLASS
        elif i < 0 or i > 4:
            i = 5
        self._request_buckets[i][bisect_left(REQUEST_BUCKETS_S, duration_s)] += 1
        self._request_sums[i] += duration_s
        if project is not None:
            table = self.project_requests
            n = table.get(project)
            if n is None:
                self._count(table, project)
            else:
                table[project] = n + 1

    def stream_finished(self, kind: str, duration_s: float) -> None:
        """A tunnel (``kind`` "tunnel") or a streamed response ("stream") ended ``duration_s`` after its head."""
        self._streams_by[kind].observe(duration_s)

    def upstream_error(self, reason: str) -> None:
        """The data path could not talk to an endpoint (``connect``, ``timeout``, ``reset``, …)."""
        child = self._upstream_by.get(reason)
        if child is None:
            child = self._upstream_by[reason] = self._upstream_errors.labels(reason)
        child.inc()

    def inflight_changed(self, delta: int) -> None:
        """Requests being proxied (not held) went up or down by ``delta``."""
        self.inflight += delta

    # --- LifecycleObserver -----------------------------------------------------------------------

    def wake_started(self, project: str) -> None:
        self._wakes_started.inc()

    def wake_finished(self, project: str, result: str, duration_s: float) -> None:
        child = self._wakeups.get(result)
        if child is None:
            child = self._wakeups[result] = self._wakeups_total.labels(result)
        child.inc()
        self._wakeup_duration.observe(duration_s)
        self._count(self.project_wakeups, project)

    def held_changed(self, delta: int) -> None:
        self.held += delta

    def held_rejected(self, reason: str) -> None:
        child = self._held_rejected_by.get(reason)
        if child is None:
            child = self._held_rejected_by[reason] = self._held_rejected.labels(reason)
        child.inc()

    def scale_operation(self, direction: str, ok: bool) -> None:
        self._scale[(direction, ok)].inc()

    def project_removed(self, project: str) -> None:
        self.project_requests.pop(project, None)
        self.project_wakeups.pop(project, None)

    def project_changed(self, project: str) -> None:
        pass  # states are read from the lifecycle at scrape time

    def _count(self, table: dict[str, int], project: str) -> None:
        n = table.get(project)
        if n is None:
            lifecycle = self.lifecycle
            if lifecycle is not None and project not in lifecycle.projects:
                return  # removed meanwhile: do not resurrect its series
            n = 0
        table[project] = n + 1

    # --- exposition ------------------------------------------------------------------------------

    async def render(self) -> bytes:
        """The ``/metrics`` body, yielding to the event loop between slices of per-project lines."""
        parts = []
        if self.lifecycle is not None:
            projects = list(self.lifecycle.projects.values())
            counts: collections.Counter[str] = collections.Counter()
            for start in range(0, len(projects), COUNT_SLICE):
                if start:
                    await asyncio.sleep(0)
                counts.update(count_states(projects[start:start + COUNT_SLICE]))
            self._state_counts = dict(counts)
        try:
            for collector in self._core_collectors:  # one family at a time: histograms take ~1 ms each
                parts.append(generate_latest(_Only(collector)))
                await asyncio.sleep(0)
        finally:
            self._state_counts = None
        for family, table in ((PROJECT_REQUESTS, self.project_requests), (PROJECT_WAKEUPS, self.project_wakeups)):
            items = list(table.items())  # a snapshot: the loop may change the dict between slices
            parts.append(f"# HELP {family}_total {_PROJECT_HELP[family]}\n# TYPE {family}_total counter\n".encode())
            for start in range(0, len(items), RENDER_SLICE):
                if start:
                    await asyncio.sleep(0)
                parts.append("".join(
                    f'{family}_total{{project="{_escape_label(name)}"}} {n}.0\n'
                    for name, n in items[start:start + RENDER_SLICE]
                ).encode())
        return b"".join(parts)


def count_states(projects: Sequence[Project]) -> dict[str, int]:
    """Projects by state name, like ``Lifecycle.count_by_state`` but ~3x faster: the states are
    counted by identity in C (hashing an enum member runs Python code)."""
    by_id = collections.Counter(map(id, map(_get_state, projects)))
    out: dict[str, int] = {}
    if by_id:
        from gateway.lifecycle import State

        for state in State:
            n = by_id.get(id(state))
            if n:
                out[state.value] = n
    return out


class _Only:
    """A registry-like wrapper so ``generate_latest`` renders a single collector."""

    __slots__ = ("_collector",)

    def __init__(self, collector: Collector) -> None:
        self._collector = collector

    def collect(self) -> Iterable[Metric]:
        return self._collector.collect()


class _RequestCollector(Collector):
    """``wakegate_requests_total`` and ``wakegate_request_duration_seconds``, from the plain
    counts :meth:`Metrics.request_finished` keeps; exposed exactly as a prometheus-client Counter
    and Histogram with one child per status class would be (``_created`` samples included)."""

    def __init__(self, metrics: Metrics) -> None:
        self._m = metrics
        self._created = time.time()
        self._le = [floatToGoString(b) for b in REQUEST_BUCKETS_S] + ["+Inf"]  # type: ignore[no-untyped-call]

    def describe(self) -> Iterable[Metric]:
        return (Metric("wakegate_requests", _REQUESTS_HELP, "counter"),
                Metric("wakegate_request_duration_seconds", _DURATION_HELP, "histogram"))

    def collect(self) -> Iterator[Metric]:
        m = self._m
        buckets = [list(b) for b in m._request_buckets]  # a snapshot
        sums = list(m._request_sums)
        created = _prometheus_metrics._use_created
        requests = Metric("wakegate_requests", _REQUESTS_HELP, "counter")
        durations = Metric("wakegate_request_duration_seconds", _DURATION_HELP, "histogram")
        for i, cls in enumerate(CODE_CLASSES):
            labels = {"code_class": cls}
            total = 0
            for le, n in zip(self._le, buckets[i], strict=True):
                total += n
                durations.add_sample("wakegate_request_duration_seconds_bucket", {"code_class": cls, "le": le},
                                     float(total))
            durations.add_sample("wakegate_request_duration_seconds_count", labels, float(total))
            durations.add_sample("wakegate_request_duration_seconds_sum", labels, sums[i])
            requests.add_sample("wakegate_requests_total", labels, float(total))
            if created:
                durations.add_sample("wakegate_request_duration_seconds_created", labels, self._created)
                requests.add_sample("wakegate_requests_created", labels, self._created)
        yield requests
        yield durations


_REQUESTS_HELP = "Requests answered by the public listener, by status class."
_DURATION_HELP = ("Time from the request head to the response head (including holds), by status class "
                  "(waiting_page: the waiting page); tunnel and stream lifetimes are in "
                  "wakegate_stream_duration_seconds.")


class _LiveCollector(Collector):
    """Values read at scrape time: projects by state, held and in-flight requests."""

    def __init__(self, metrics: Metrics) -> None:
        self._m = metrics

    def describe(self) -> Iterable[Metric]:
        return ()  # dynamic: no registration-time collect()

    def collect(self) -> Iterator[Metric]:
        m = self._m
        states = GaugeMetricFamily("wakegate_projects", "Known projects, by state.", labels=["state"])
        counts = m._state_counts
        if counts is None:
            counts = count_states(list(m.lifecycle.projects.values())) if m.lifecycle is not None else {}
        for state in PROJECT_STATES:
            states.add_metric([state], counts.get(state, 0))
        yield states
        yield GaugeMetricFamily("wakegate_held_requests", "Requests waiting for their project to wake.", m.held)
        yield GaugeMetricFamily("wakegate_inflight_requests", "Requests being proxied to a project.", m.inflight)
        if m.lifecycle is not None:
            backend = m.lifecycle.backend
            yield GaugeMetricFamily("wakegate_backend_reachable",
                                    "1 when the backend (the Kubernetes API server) answered its last request.",
                                    1 if backend.reachable else 0)
            yield GaugeMetricFamily("wakegate_reaper_leader",
                                    "1 on the replica that runs the idle reaper (holds the Lease).",
                                    1 if backend.may_reap() else 0)


class _ProjectCollector(Collector):
    """Per-project counters, for synchronous exposition (``/metrics`` uses :meth:`Metrics.render`)."""

    def __init__(self, metrics: Metrics) -> None:
        self._m = metrics

    def describe(self) -> Iterable[Metric]:
        return ()

    def collect(self) -> Iterator[Metric]:
        for family, table in ((PROJECT_REQUESTS, self._m.project_requests),
                              (PROJECT_WAKEUPS, self._m.project_wakeups)):
            counter = CounterMetricFamily(family, _PROJECT_HELP[family], labels=["project"])
            for name, n in list(table.items()):
                counter.add_metric([name], n)
            yield counter
