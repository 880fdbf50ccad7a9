"""``wakegate controller``: keeps every ``Project``'s objects and status true (I/O).

One active replica, chosen by the ``coordination.k8s.io`` Lease :data:`~gateway.contract.CONTROLLER_LEASE`
(:class:`~gateway.backends.k8s.election.LeaseElection`, as the gateway's reaper). Every replica keeps
watch caches (:class:`~gateway.backends.k8s.api.Informer`) of Projects, and of the managed
Namespaces, Deployments and app pods; a change to any of them queues its project, and the holder
reconciles it, level-based:

1. a Project being deleted: its namespace is deleted (the volume's data kept with
   ``spec.storage.keepOnDelete``), then the finalizer :data:`~gateway.contract.PROJECT_FINALIZER` is
   removed;
2. otherwise the finalizer is added (once), the spec is translated
   (:func:`provisioner.project_resource.from_resource`) and rendered with the same code as
   ``wakegate project create`` (``render``), with ``spec.mode`` ``Running`` while a ``keepWarm``
   window is open; the objects are applied (server-side apply, field manager
   :data:`~gateway.contract.PROVISIONER_FIELD_MANAGER`) when the rendering changed since the last
   apply, when an owned Namespace or Deployment went missing, and every ``--resync`` (drift repair);
3. the status (:mod:`provisioner.project_status`) is written when it changed.

The controller never sets ``spec.replicas`` after creation: the gateway owns it.

API writes: the finalizer once per Project; one apply (about 15 server-side applies, no-ops for the
API server when nothing changed) per spec change, keep-warm boundary and resync interval; one status
write per phase transition. Reads are the watches. Failures are retried with per-project
exponential backoff (up to ``--backoff-max``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from gateway import contract as C
from gateway import logs
from gateway.backends.k8s import client as credentials
from gateway.backends.k8s import objects as K
from gateway.backends.k8s.api import ApiError, ApiUnreachable, Informer, Kube, path_quote
from gateway.backends.k8s.election import LeaseElection
from gateway.backends.kubernetes import default_replica_id
from gateway.config import ConfigError, HostPort, Option, parse_host_port
from gateway.tasks import Tasks

from . import apply as papply
from .errors import ProvisionError, SpecError
from .keep_warm import current_end, in_effect, next_change
from .project_resource import effective, from_resource
from .project_status import Observed, Problem, desired_status, status_update
from .render import render

log = logging.getLogger("wakegate.controller")

PROJECTS_PATH = f"/apis/{C.PROJECT_API_VERSION}/{C.PROJECT_PLURAL}"
APP_POD_SELECTOR = f"{C.MANAGED_SELECTOR},{C.COMPONENT_LABEL}={C.COMPONENT_APP}"
DEFAULT_LISTEN = HostPort("0.0.0.0", 8081)


# --- settings --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ControllerSettings:
    """Everything ``wakegate controller`` can be told. Units are in the names."""

    domain: str = C.DEFAULT_DOMAIN
    url_scheme: str = "https"
    namespace_prefix: str = C.DEFAULT_NAMESPACE_PREFIX
    gateway_namespace: str = C.DEFAULT_GATEWAY_NAMESPACE
    kubeconfig: Path | None = None
    context: str | None = None
    #: This replica's name in the Lease (default ``$POD_NAME``, else ``<host>-<pid>``).
    replica_id: str | None = None
    leader_lease_s: float = 15.0
    resync_s: float = 600.0
    backoff_max_s: float = 60.0
    request_timeout_s: float = 30.0
    workers: int = 4
    #: ``/healthz``, ``/readyz`` and ``/metrics``.
    listen: HostPort = DEFAULT_LISTEN
    log_format: str = "json"

    def url_for(self, project: str) -> str:
        """The URL the gateway serves ``project`` at."""
        return f"{self.url_scheme}://{project}.{self.domain}/"


def _scheme(text: str) -> str:
    if text not in ("https", "http"):
        raise ValueError(f"expected one of https, http, got {text!r}")
    return text


def _log_format(text: str) -> str:
    if text not in ("json", "text"):
        raise ValueError(f"expected one of json, text, got {text!r}")
    return text


def _workers(text: str) -> int:
    value = int(text) if text.isdigit() else 0
    if not 1 <= value <= 64:
        raise ValueError(f"expected a whole number from 1 to 64, got {text!r}")
    return value


OPTIONS: tuple[Option, ...] = (
    Option("domain", "--domain", C.dns_name, "projects are served at <project>.<domain> (their status.url)"),
    Option("url_scheme", "--url-scheme", _scheme, "scheme of status.url", choices=("https", "http")),
    Option("namespace_prefix", "--namespace-prefix", str, "a project's namespace is PREFIX + NAME"),
    Option("gateway_namespace", "--gateway-namespace", str,
           "namespace of the gateway (its pods are admitted to projects; the Lease lives here)"),
    Option("kubeconfig", "--kubeconfig", Path, "kubeconfig (default: in-cluster config)", "FILE"),
    Option("context", "--context", str, "kubeconfig context"),
    Option("replica_id", "--replica-id", str, "this replica's name (default $POD_NAME or host-pid)"),
    Option("leader_lease_s", "--leader-lease", C.parse_duration, "how long the controller Lease lasts", "DURATION"),
    Option("resync_s", "--resync", C.parse_duration, "re-apply every Project this often (drift repair)",
           "DURATION"),
    Option("backoff_max_s", "--backoff-max", C.parse_duration, "longest wait before retrying a failed Project",
           "DURATION"),
    Option("request_timeout_s", "--request-timeout", C.parse_duration, "timeout of each API request", "DURATION"),
    Option("workers", "--workers", _workers, "Projects reconciled at once", "N"),
    Option("listen", "--listen", parse_host_port, "/healthz, /readyz and /metrics", "HOST:PORT"),
    Option("log_format", "--log-format", _log_format, "log line format", choices=("json", "text")),
)


def validate(settings: ControllerSettings) -> None:
    """Cross-field checks: the prefix and gateway namespace are usable names."""
    from .spec import ProjectSpec

    try:
        ProjectSpec(name="a", image="a", namespace_prefix=settings.namespace_prefix,
                    gateway_namespace=settings.gateway_namespace)
    except SpecError as exc:
        raise ConfigError(str(exc)) from None


# --- the work queue --------------------------------------------------------------------------------


class WorkQueue:
    """Project names due at a monotonic time; each name is queued once (its earliest time wins) and
    handed to one worker at a time (a name queued while it is being worked on comes back after)."""

    def __init__(self) -> None:
        self._due: dict[str, float] = {}
        self._busy: set[str] = set()
        self._changed = asyncio.Event()

    def add(self, name: str, delay_s: float = 0.0) -> None:
        """Queue ``name`` to be worked on in ``delay_s`` (sooner if it already is)."""
        at = time.monotonic() + max(0.0, delay_s)
        if at < self._due.get(name, math.inf):
            self._due[name] = at
            self._changed.set()

    def __len__(self) -> int:
        return len(self._due)

    async def get(self) -> str:
        """The next due name that no other worker holds; call :meth:`done` after working on it."""
        while True:
            ready = [(at, n) for n, at in self._due.items() if n not in self._busy]
            now = time.monotonic()
            if ready:
                at, name = min(ready)
                if at <= now:
                    del self._due[name]
                    self._busy.add(name)
                    return name
            self._changed.clear()
            timeout = None if not ready else min(ready)[0] - now
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout)

    def done(self, name: str) -> None:
        """``name`` is no longer worked on."""
        self._busy.discard(name)
        self._changed.set()


# --- the controller --------------------------------------------------------------------------------


class Metrics:
    """The controller's Prometheus metrics (its own registry)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.reconciles = Counter("wakegate_controller_reconciles", "Project reconciles by result",
                                  ["result"], registry=self.registry)
        self.applies = Counter("wakegate_controller_applies", "Applies of a Project's objects",
                               registry=self.registry)
        self.status_writes = Counter("wakegate_controller_status_writes", "Writes of a Project's status",
                                     registry=self.registry)
        self.leader = Gauge("wakegate_controller_leader", "1 while this replica holds the controller Lease",
                            registry=self.registry)
        self.projects = Gauge("wakegate_controller_projects", "Projects by status phase", ["phase"],
                              registry=self.registry)


class Controller:
    """The reconcile loop (see the module docstring)."""

    def __init__(self, settings: ControllerSettings, api_client: Any) -> None:
        self.settings = settings
        self.kube = Kube(api_client, settings.request_timeout_s)
        self.apply_kube = papply.Kube(api_client, settings.request_timeout_s)
        self.replica_id = settings.replica_id or default_replica_id()
        self.queue = WorkQueue()
        self.tasks = Tasks()
        self.metrics = Metrics()
        k = self.kube
        self.projects = Informer(k, "projects", PROJECTS_PATH, self._on_project)
        self.namespaces = Informer(k, "namespaces", "/api/v1/namespaces", self._on_owned,
                                   label_selector=C.MANAGED_SELECTOR)
        self.deployments = Informer(k, "deployments", "/apis/apps/v1/deployments", self._on_owned,
                                    label_selector=C.MANAGED_SELECTOR)
        self.pods = Informer(k, "pods", "/api/v1/pods", self._on_owned, label_selector=APP_POD_SELECTOR)
        self.informers = (self.projects, self.namespaces, self.deployments, self.pods)
        self.election = LeaseElection(k, namespace=settings.gateway_namespace, identity=self.replica_id,
                                      lease_s=settings.leader_lease_s, name=C.CONTROLLER_LEASE,
                                      on_acquired=self._enqueue_all)
        #: Per project: the digest of the objects last applied, and when (monotonic).
        self.applied: dict[str, tuple[str, float]] = {}
        self.failures: dict[str, int] = {}

    # --- events ----------------------------------------------------------------------------------

    def _on_project(self, key: tuple[str, str], old: Mapping[str, Any] | None,
                    new: Mapping[str, Any] | None) -> None:
        if old is not None and new is not None and _only_status_changed(old, new):
            return  # our own status write
        self.queue.add(key[1])

    def _on_owned(self, key: tuple[str, str], old: Mapping[str, Any] | None, new: Mapping[str, Any] | None) -> None:
        project = C.managed_project(K.labels_of(new or old or {}))
        if project:
            self.queue.add(project)

    def _enqueue_all(self) -> None:
        self.applied.clear()  # a new holder re-applies everything once: the last one may have stopped midway
        for _, name in list(self.projects.store):
            self.queue.add(name)

    # --- running ---------------------------------------------------------------------------------

    def ready(self) -> bool:
        """Every watch cache has listed once."""
        return all(inf.synced.is_set() for inf in self.informers)

    async def start(self) -> None:
        """Start the watches, the election and the workers."""
        for inf in self.informers:
            self.tasks.spawn(inf.run(), name=f"watch-{inf.kind}")
        self.tasks.spawn(self.election.run(), name="election")
        for i in range(self.settings.workers):
            self.tasks.spawn(self._work(), name=f"worker-{i}")

    async def close(self) -> None:
        """Stop the workers and watches; hand the Lease over."""
        await self.tasks.close()
        await self.election.release()

    async def _work(self) -> None:
        while True:
            name = await self.queue.get()
            try:
                if not self.election.holds():
                    continue  # the holder reconciles; _enqueue_all requeues everything on taking over
                if not self.ready():  # judged on a partial cache, a project would look unprovisioned
                    self.queue.add(name, 0.5)
                    continue
                await self.reconcile(name)
                self.failures.pop(name, None)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # one project's failure must not stop the others
                self._retry(name, exc)
            finally:
                self.queue.done(name)
                self.metrics.leader.set(1 if self.election.holds() else 0)

    def _retry(self, name: str, exc: BaseException) -> None:
        n = self.failures[name] = self.failures.get(name, 0) + 1
        delay = min(self.settings.backoff_max_s, 0.5 * 2 ** min(n, 10))
        self.metrics.reconciles.labels("error").inc()
        expected = isinstance(exc, (ApiError, ApiUnreachable, ProvisionError))
        logs.event("reconcile_failed", logging.WARNING, project=name, error=str(exc) or type(exc).__name__,
                   retry_in_s=delay)
        if not expected:
            log.exception("reconciling project %s failed unexpectedly", name)
        self.queue.add(name, delay)

    # --- one reconcile ---------------------------------------------------------------------------

    async def reconcile(self, name: str) -> None:
        """Make project ``name``'s objects and status what its Project says."""
        obj: Mapping[str, Any] | None = self.projects.store.get(("", name))
        if obj is None:
            self.applied.pop(name, None)
            return
        if K.meta(obj).get("deletionTimestamp"):
            await self._finalize(obj)
            return
        if C.PROJECT_FINALIZER not in (K.meta(obj).get("finalizers") or []):
            obj = await self._add_finalizer(obj)
        s = self.settings
        namespace = C.namespace_for(name, s.namespace_prefix)
        generation = int(K.meta(obj).get("generation") or 0)
        observed = Observed(generation=generation, namespace=namespace, url=s.url_for(name), mode="Auto",
                            provisioned=False)
        try:
            resource = from_resource(obj, namespace_prefix=s.namespace_prefix,
                                     gateway_namespace=s.gateway_namespace)
        except SpecError as exc:
            await self._write_status(obj, replace(observed, refused=Problem("InvalidSpec", str(exc))))
            self.metrics.reconciles.labels("refused").inc()
            return
        now = datetime.now(UTC)
        mode, until = resource.spec.mode, None
        if resource.keep_warm:
            flip = next_change(resource.keep_warm, now)
            if flip is not None:  # wake (or release) exactly at the window's edge
                self.queue.add(name, (flip - now).total_seconds() + 0.05)
            if mode == "Auto" and in_effect(resource.keep_warm, now):
                mode = "Running"
                end = current_end(resource.keep_warm, now)
                until = end.strftime("%Y-%m-%dT%H:%M:%SZ") if end is not None else None
        objs = render(effective(resource, mode))
        digest = hashlib.sha256(json.dumps(objs, sort_keys=True).encode()).hexdigest()
        observed = replace(observed, mode=mode, keep_warm_until=until)
        if self._apply_due(name, namespace, digest):
            try:
                report = await papply.apply_objects(self.apply_kube, objs, prune_kinds=papply.CONTROLLER_PRUNE_KINDS)
            except ProvisionError as exc:
                reason = "NamespaceConflict" if exc.exit_code == 2 and "namespace" in str(exc) else "ApplyFailed"
                await self._write_status(obj, replace(observed, refused=Problem(reason, str(exc))))
                raise
            self.applied[name] = (digest, time.monotonic())
            self.metrics.applies.inc()
            changed = report.created + report.configured + report.pruned
            if changed:
                logs.event("project_applied", project=name, generation=generation, mode=mode,
                           changed=len(changed), objects=",".join(changed[:20]))
        self.queue.add(name, s.resync_s)
        pods = [p for (ns, _), p in self.pods.store.items()
                if ns == namespace and K.labels_of(p).get(C.PROJECT_LABEL) == name]
        await self._write_status(obj, replace(observed, provisioned=True,
                                               deployment=self.deployments.store.get((namespace, name)),
                                               pods=pods))
        self.metrics.reconciles.labels("ok").inc()

    def _apply_due(self, name: str, namespace: str, digest: str) -> bool:
        last = self.applied.get(name)
        if last is None or last[0] != digest or time.monotonic() - last[1] >= self.settings.resync_s:
            return True
        # An owned object that went missing is put back at once, not at the next resync.
        return ("", namespace) not in self.namespaces.store or (namespace, name) not in self.deployments.store

    async def _write_status(self, obj: Mapping[str, Any], observed: Observed) -> None:
        current = obj.get("status") if isinstance(obj.get("status"), Mapping) else None
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        new = status_update(current, desired_status(observed, current), now)
        phase = (new or current or {}).get("phase")
        if new is None:
            return
        name = str(K.meta(obj).get("name"))
        await self.kube.request("PATCH", f"{PROJECTS_PATH}/{path_quote(name)}/status",
                                query={"fieldManager": C.CONTROLLER_FIELD_MANAGER},
                                body={"status": new}, content_type="application/merge-patch+json")
        self.metrics.status_writes.inc()
        if (current or {}).get("phase") != phase:
            failed = next((c for c in new["conditions"] if c["type"] == "Failed" and c["status"] == "True"), None)
            logs.event("project_phase", project=name, phase=phase, previous=(current or {}).get("phase"),
                       reason=failed["reason"] if failed else None)
        self._count_phases()

    def _count_phases(self) -> None:
        counts = dict.fromkeys(("Provisioning", "Sleeping", "Waking", "Running", "Suspended", "Failed"), 0)
        for p in self.projects.store.values():
            phase = (p.get("status") or {}).get("phase")
            if phase in counts:
                counts[phase] += 1
        for phase, n in counts.items():
            self.metrics.projects.labels(phase).set(n)

    async def _add_finalizer(self, obj: Mapping[str, Any]) -> Mapping[str, Any]:
        finalizers = [*(K.meta(obj).get("finalizers") or []), C.PROJECT_FINALIZER]
        return await self._patch_finalizers(obj, finalizers)

    async def _patch_finalizers(self, obj: Mapping[str, Any], finalizers: list[str]) -> Mapping[str, Any]:
        name = str(K.meta(obj).get("name"))
        body = {"metadata": {"finalizers": finalizers, "resourceVersion": K.meta(obj).get("resourceVersion")}}
        return await self.kube.request("PATCH", f"{PROJECTS_PATH}/{path_quote(name)}",
                                       query={"fieldManager": C.CONTROLLER_FIELD_MANAGER}, body=body,
                                       content_type="application/merge-patch+json")

    async def _finalize(self, obj: Mapping[str, Any]) -> None:
        finalizers = list(K.meta(obj).get("finalizers") or [])
        if C.PROJECT_FINALIZER not in finalizers:
            return
        name = str(K.meta(obj).get("name"))
        namespace = C.namespace_for(name, self.settings.namespace_prefix)
        ns = await self.apply_kube.get(papply.TYPES["Namespace"].object_path(namespace))
        if ns is not None and C.managed_project(K.labels_of(ns)) == name:
            storage = ((obj.get("spec") or {}).get("storage") or {})
            keep = bool(storage.get("keepOnDelete", False)) if isinstance(storage, Mapping) else False
            if not K.meta(ns).get("deletionTimestamp"):
                await papply.delete_project(self.apply_kube, name, namespace, keep_data=keep)
                logs.event("project_deleting", project=name, namespace=namespace, keep_data=keep)
            self.queue.add(name, 2.0)  # and at once when the namespace's deletion is seen
            return
        await self._patch_finalizers(obj, [f for f in finalizers if f != C.PROJECT_FINALIZER])
        self.applied.pop(name, None)
        logs.event("project_deleted", project=name, namespace=namespace)


def _only_status_changed(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    def core(o: Mapping[str, Any]) -> tuple[Any, ...]:
        m = K.meta(o)
        return (m.get("generation"), m.get("deletionTimestamp"), tuple(m.get("finalizers") or ()))
    return core(old) == core(new) and old.get("status") != new.get("status")


# --- the process -----------------------------------------------------------------------------------


def _http_app(controller: Controller) -> web.Application:
    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(_: web.Request) -> web.Response:
        if controller.ready():
            return web.Response(text="ready\n")
        errors = "; ".join(f"{inf.kind}: {inf.last_error}" for inf in controller.informers if inf.last_error)
        return web.Response(status=503, text=f"watch caches not synced yet{': ' + errors if errors else ''}\n")

    async def metrics(_: web.Request) -> web.Response:
        controller.metrics.leader.set(1 if controller.election.holds() else 0)
        return web.Response(body=generate_latest(controller.metrics.registry),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app


async def run(settings: ControllerSettings, stop: asyncio.Event | None = None) -> None:
    """Run the controller until ``stop`` is set (SIGTERM and SIGINT set it)."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        api = await credentials.api_client(settings.kubeconfig, settings.context)
    except credentials.CredentialsError as exc:
        raise ConfigError(f"the controller needs a Kubernetes cluster: {exc}") from None
    controller = Controller(settings, api)
    runner = web.AppRunner(_http_app(controller), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.listen.host, settings.listen.port)
    try:
        await site.start()
        await controller.start()
        port = next((a[1] for a in runner.addresses if isinstance(a, tuple)), settings.listen.port)
        logs.event("controller_started", replica=controller.replica_id, port=port, domain=settings.domain,
                   namespace_prefix=settings.namespace_prefix)
        await stop.wait()
    finally:
        await controller.close()
        await runner.cleanup()
        await api.close()
        logs.event("controller_stopped", replica=controller.replica_id)
