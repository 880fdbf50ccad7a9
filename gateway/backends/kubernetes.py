"""Kubernetes backend: projects are Deployments the provisioner labelled; pods are reached directly.

What it watches (all namespaces, by label; one shared ``ApiClient``, every call with a timeout):

* Namespaces managed by wakegate (and matching ``--namespace-selector``): a Deployment's claim to a
  project name counts only when its Namespace carries the same ``wakegate.io/project`` label, which
  a project's own automation cannot set, so one project cannot take over another's hostname;
* Deployments → the project table and per-project settings (annotations), replica counts and
  failure conditions;
* EndpointSlices of the projects' Services → ready pod IPs and ports, pushed to the lifecycle the
  moment they change (requests go straight to pods, no kube-proxy in the path);
* the projects' app pods → CrashLoopBackOff / image-pull failures, reported within seconds.

Lookups come from these watches' caches only: a host name that names no project never costs an API
request (see :meth:`KubernetesBackend.discover`).

Activity never goes to the API server: the reaper Lease holder pulls the other replicas' activity
from their admin ports and fails closed when one does not answer (:mod:`gateway.backends.k8s.exchange`).

Writes happen on transitions only: one merge patch of ``deployments/{name}/scale`` per wake; one
patch of the Deployment per sleep (``replicas: 0`` and ``wakegate.io/last-activity``, with its
resourceVersion as a precondition, so a wake racing it wins with a 409); the ``coordination.k8s.io``
Lease of the idle reaper (renewed every ``--leader-lease``/3 by the holder); an Event on the
Deployment when it is woken or put to sleep; and, once per Deployment, the removal of the
per-replica activity annotations that earlier versions wrote. No write per request or per active
project: with P active projects and R replicas the steady-state write rate is the Lease's alone.

The backend composes the table (the watches above, :mod:`~gateway.backends.k8s.objects` for what
they mean) with the reaper Lease (:mod:`~gateway.backends.k8s.election`), the activity exchange
(:mod:`~gateway.backends.k8s.exchange`) and the legacy-annotation pruning
(:mod:`~gateway.backends.k8s.legacy`); its background tasks are one :class:`~gateway.tasks.Tasks`.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import os
import socket
import time
from collections.abc import Mapping
from typing import Any

from gateway import contract as C
from gateway import logs
from gateway.activity import ALONE, SharedActivity
from gateway.backends.base import Backend, BackendError, BackendUnavailable, Endpoint, ProjectInfo
from gateway.backends.k8s import client as credentials
from gateway.backends.k8s import objects as obj
from gateway.backends.k8s.api import (
    MERGE_PATCH,
    ApiError,
    ApiUnreachable,
    Informer,
    Key,
    Kube,
    Obj,
    deployment_path,
    path_quote,
)
from gateway.backends.k8s.election import LeaseElection
from gateway.backends.k8s.exchange import ActivityExchange, describe
from gateway.backends.k8s.legacy import LegacyAnnotations
from gateway.config import Settings
from gateway.tasks import Tasks

#: The reaper Lease (``tests/test_manifests.py`` checks that the gateway's Role names exactly it).
LEASE_NAME = C.REAPER_LEASE

#: What the backend does with the API, by scope. ``tests/test_manifests.py`` checks that the install
#: manifests grant exactly these (cluster scope and the gateway namespace) and that the provisioner's
#: per-project Role covers the project-namespace part.
CLUSTER_PERMISSIONS: dict[tuple[str, str], tuple[str, ...]] = {
    ("", "namespaces"): ("list", "watch"),
    ("apps", "deployments"): ("get", "list", "watch"),
    ("discovery.k8s.io", "endpointslices"): ("list", "watch"),
    ("", "pods"): ("list", "watch"),
    ("", "events"): ("create",),
}
GATEWAY_NAMESPACE_PERMISSIONS: dict[tuple[str, str], tuple[str, ...]] = {
    ("coordination.k8s.io", "leases"): ("create", "get", "update"),
}
PROJECT_NAMESPACE_PERMISSIONS: dict[tuple[str, str], tuple[str, ...]] = {
    ("apps", "deployments"): ("patch",),  # the sleep (replicas 0 + last activity); legacy annotations pruned
    ("apps", "deployments/scale"): ("patch",),
}


def default_replica_id() -> str:
    """``$POD_NAME`` in a cluster, else ``<hostname>-<pid>``."""
    return os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"


async def make_api_client(settings: Settings) -> Any:
    """An ``ApiClient`` from ``--kubeconfig``/``--context``, a kubeconfig file, or in-cluster config
    inside a pod (:func:`gateway.backends.k8s.client.api_client`). Raises :class:`BackendError`."""
    try:
        return await credentials.api_client(settings.kubeconfig, settings.context)
    except credentials.CredentialsError as exc:
        raise BackendError(str(exc)) from None


class KubernetesBackend(Backend):
    """Projects as Deployments; endpoints from EndpointSlices; coordination through the API server."""

    def __init__(self, settings: Settings, *, api_client: Any = None, request_timeout_s: float = 10.0,
                 start_timeout_s: float = 15.0) -> None:
        self.settings = settings
        self.replica_id = settings.replica_id or default_replica_id()
        self.request_timeout_s = request_timeout_s
        self.start_timeout_s = start_timeout_s
        self._api_client = api_client
        self._owns_client = api_client is None
        self.kube: Kube | None = None
        self._tasks = Tasks()
        self._informers: list[Informer] = []
        # project state
        self._claims: dict[str, dict[str, obj.ProjectRef]] = {}
        self._table: dict[str, obj.ProjectRef] = {}
        self._projects: dict[str, ProjectInfo] = {}
        self._problems: dict[Key, list[str]] = {}
        self._slices: dict[Key, dict[str, Obj]] = {}  # (namespace, service) → slice name → slice
        self._pods: dict[Key, dict[str, Obj]] = {}  # (namespace, project) → pod name → pod
        self._pushed: dict[str, tuple[Endpoint, ...]] = {}
        self._reported: dict[str, str] = {}
        self._waking: dict[str, float] = {}  # project → monotonic time of our scale-up
        self._notify_scheduled = False
        # coordination between replicas: the reaper Lease, and the others' activity (pulled by its holder)
        self.election: LeaseElection | None = None
        self.exchange: ActivityExchange | None = None
        self._legacy: LegacyAnnotations | None = None

    # --- informers' stores -----------------------------------------------------------------------

    @property
    def namespaces(self) -> Informer:
        return self._informers[0]

    @property
    def deployments(self) -> Informer:
        return self._informers[1]

    # --- Backend: start / stop -------------------------------------------------------------------

    async def start(self) -> None:
        if self._api_client is None:
            self._api_client = await make_api_client(self.settings)
        self.kube = Kube(self._api_client, self.request_timeout_s)
        self.kube.on_reachability = self._reachability_changed
        ns_selector = C.MANAGED_SELECTOR
        if self.settings.namespace_selector:
            ns_selector += "," + self.settings.namespace_selector
        k = self.kube
        self._informers = [
            Informer(k, "namespaces", "/api/v1/namespaces", self._on_namespace, label_selector=ns_selector),
            Informer(k, "deployments", "/apis/apps/v1/deployments", self._on_deployment,
                     label_selector=f"{C.MANAGED_SELECTOR},{C.PROJECT_LABEL}"),
            Informer(k, "endpointslices", "/apis/discovery.k8s.io/v1/endpointslices", self._on_slice,
                     label_selector=C.PROJECT_LABEL),
            Informer(k, "pods", "/api/v1/pods", self._on_pod,
                     label_selector=f"{C.PROJECT_LABEL},{C.COMPONENT_LABEL}={C.COMPONENT_APP}"),
        ]
        self._legacy = LegacyAnnotations(k, self._tasks)
        self.election = LeaseElection(k, namespace=self.settings.gateway_namespace, identity=self.replica_id,
                                      lease_s=self.settings.leader_lease_s, on_acquired=self._lease_acquired)
        self.exchange = ActivityExchange.for_gateway(k, self.settings, self.replica_id, self._longest_idle_timeout_s)
        for inf in self._informers:
            self._tasks.spawn(inf.run(), f"wakegate-watch-{inf.kind}")
        self._tasks.spawn(self.election.run(), "wakegate-leader-election")
        self.exchange.start(self._tasks, self._holds_lease)
        try:
            await asyncio.wait_for(asyncio.gather(*(i.synced.wait() for i in (*self._informers, self.exchange.slices))),
                                   self.start_timeout_s)
        except TimeoutError:
            errors = "; ".join(f"{i.kind}: {i.last_error}" for i in self._informers if i.last_error)
            logs.event("backend_not_synced", logging.WARNING, backend="kubernetes",
                       error=errors or "initial lists still loading")
        else:
            logs.event("backend_synced", backend="kubernetes", projects=len(self._projects),
                       replica=self.replica_id)

    async def close(self) -> None:
        await self._tasks.close()
        if self.exchange is not None:
            await self.exchange.close()
        if self.election is not None:  # on shutdown: hand the reaper Lease over at once
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.election.release(), 3)
        if self._owns_client and self._api_client is not None:
            await self._api_client.close()

    # --- Backend: table --------------------------------------------------------------------------

    def projects(self) -> Mapping[str, ProjectInfo]:
        return self._projects

    @property
    def ready(self) -> bool:
        """Whether the initial lists are loaded. An API server outage after that does not make the
        gateway unready: it keeps serving warm projects from what it knows (only wakes fail), and a
        readiness probe failing on every replica at once would take those projects down too."""
        return bool(self._informers) and all(i.synced.is_set() for i in self._informers)

    @property
    def reachable(self) -> bool:
        """Whether the last request to the API server got an answer."""
        return self.kube is not None and self.kube.reachable

    def _reachability_changed(self, ok: bool, error: str) -> None:
        if ok:
            logs.event("kubernetes_api_reachable")
        else:
            logs.event("kubernetes_api_unreachable", logging.WARNING, error=error)

    async def discover(self, name: str) -> ProjectInfo | None:
        """A name missing from the lifecycle's table, answered from the informers' caches only.

        The table is derived from the watched Namespaces and Deployments, so this never calls the
        API server: every unknown host name the public listener sees lands here, and a request per
        name would let random names turn into a flood of cluster-wide LISTs. A project created a
        moment ago that the watch has not delivered yet is answered like any unknown name (404);
        the watch delivers it within milliseconds, and the table change (``projects_changed``)
        makes the lifecycle forget that negative answer at once.
        """
        return self._projects.get(name)

    # --- Backend: scaling ------------------------------------------------------------------------

    def _ref(self, name: str) -> obj.ProjectRef:
        ref = self._table.get(name)
        if ref is None:
            raise BackendError(f"project {name} is not known to the gateway (no managed Deployment)")
        return ref

    def _deployment(self, ref: obj.ProjectRef) -> Obj | None:
        return self.deployments.store.get((ref.namespace, ref.name)) if self._informers else None

    async def scale_up(self, name: str) -> None:
        ref = self._ref(name)
        self._waking[name] = time.monotonic()
        self._reported.pop(name, None)
        dep = self._deployment(ref)
        if dep is None or obj.spec_replicas(dep) <= 1:  # never lower a count someone raised
            await self._patch_scale(ref, obj.scale_patch(1))
            self._record_event(ref, "WokenUp", f"scaled to 1 by gateway replica {self.replica_id}")
        # Report what is already known (ready pods; a failure that will not go away) at once.
        asyncio.get_running_loop().call_soon(self._after_scale_up, name)

    def _after_scale_up(self, name: str) -> None:
        if name not in self._table:
            return
        eps = self._endpoints_for(name)
        if eps:
            self._push(name, eps, force=True)
        self._check_failure(name)

    async def scale_down(self, name: str, last_activity_wall_s: float | None = None) -> bool:
        ref = self._ref(name)
        if self._is_waking(name):
            return False  # this replica is waking it
        kube = self._require_kube()
        try:
            dep = await kube.request("GET", deployment_path(ref.namespace, name))
        except ApiUnreachable as exc:
            raise BackendUnavailable(f"Kubernetes API unreachable: {exc}") from None
        except ApiError as exc:
            raise BackendError(f"reading deployment {ref.namespace}/{name} failed: {exc}") from None
        if obj.spec_replicas(dep) == 0:
            return True
        # The lifecycle decided from the last pulls; every other replica must confirm now that it
        # has nothing open for this project and no activity the decision did not see (one that
        # does not answer blocks the sleep).
        idle, shared = await self.exchange.confirm_idle(name) if self.exchange is not None else (True, ALONE)
        if not idle:
            logs.event("sleep_refused", project=name, reason="another gateway replica is using it or did not answer",
                       **describe(shared))
            return False
        last = max((t for t in (last_activity_wall_s, shared.last_s) if t is not None), default=None)
        try:
            await self._patch_deployment(ref, obj.sleep_patch(str(obj.meta(dep).get("resourceVersion") or ""), last))
        except _Conflict:
            logs.event("sleep_refused", project=name, reason="the deployment changed meanwhile")
            return False
        # Stop routing to the old pods now rather than when the watch catches up.
        cached = self._deployment(ref)
        if cached is not None:
            cached = copy.deepcopy(cached)
            cached.setdefault("spec", {})["replicas"] = 0
            self.deployments.store[(ref.namespace, name)] = cached
        self._refresh_endpoints(name)
        self._record_event(ref, "ScaledToZero", f"idle; scaled to 0 by gateway replica {self.replica_id}")
        return True

    async def _patch_scale(self, ref: obj.ProjectRef, body: dict[str, Any]) -> None:
        await self._patch_deployment(ref, body, "/scale")

    async def _patch_deployment(self, ref: obj.ProjectRef, body: dict[str, Any], subresource: str = "") -> None:
        kube = self._require_kube()
        try:
            await kube.request("PATCH", deployment_path(ref.namespace, ref.name, subresource), body=body,
                               content_type=MERGE_PATCH, query={"fieldManager": C.GATEWAY_FIELD_MANAGER})
        except ApiUnreachable as exc:
            raise BackendUnavailable(f"Kubernetes API unreachable: {exc}") from None
        except ApiError as exc:
            where = f"deployment {ref.namespace}/{ref.name}"
            if exc.status == 409:
                raise _Conflict() from None
            if exc.status == 403:
                raise BackendError(f"the gateway may not scale {where}: {exc.message} (does the namespace have "
                                   f"the provisioner's {C.GATEWAY_ROLE} RoleBinding?)") from None
            if exc.status == 404:
                raise BackendError(f"{where} does not exist") from None
            raise BackendError(f"scaling {where} failed: {exc}") from None

    def _prune_legacy_of(self, ref: obj.ProjectRef) -> None:
        """Remove the per-replica activity annotations earlier versions wrote (holder only, once)."""
        if self._legacy is not None:
            self._legacy.prune(ref, self._deployment(ref))

    def _require_kube(self) -> Kube:
        if self.kube is None:
            raise BackendError("the Kubernetes backend is not started")
        return self.kube

    # --- coordination between replicas -----------------------------------------------------------

    def may_reap(self) -> bool:
        """The Lease holder reaps, once every other replica has answered it since it took the Lease
        (a new holder learns the current activity before it may put anything to sleep)."""
        election = self.election
        if election is None or not election.holds():
            return False
        return self.exchange is None or self.exchange.learned_since(election.since_wall_s)

    def shared_activity(self, name: str) -> SharedActivity:
        return self.exchange.shared(name) if self.exchange is not None else ALONE

    def _holds_lease(self) -> bool:
        return self.election is not None and self.election.holds()

    def _lease_acquired(self) -> None:
        for ref in list(self._table.values()):
            self._prune_legacy_of(ref)

    def _longest_idle_timeout_s(self) -> float:
        return max((r.info.settings.idle_timeout_s or 0.0 for r in self._table.values()),
                   default=0.0) or self.settings.idle_timeout_s

    # --- watch handlers --------------------------------------------------------------------------

    def _on_namespace(self, key: Key, old: Obj | None, new: Obj | None) -> None:
        ns = key[1]
        names = {obj.namespace_project(o) for o in (old, new) if o is not None}
        for name in names - {None}:
            assert name is not None
            self._refresh_claim(ns, name)

    def _on_deployment(self, key: Key, old: Obj | None, new: Obj | None) -> None:
        ns, dep_name = key
        self._refresh_claim(ns, dep_name)
        ref = self._table.get(dep_name)
        if ref is None or ref.namespace != ns or new is None:
            return
        self._refresh_endpoints(dep_name)
        self._check_failure(dep_name)
        if self._holds_lease():
            self._prune_legacy_of(ref)
        if (self._is_waking(dep_name) and obj.spec_replicas(new) == 0 and old is not None
                and obj.spec_replicas(old) > 0):
            # Another replica (or a person) scaled it down while our wake waits: scale up again.
            logs.event("rewake", project=dep_name, reason="scaled to zero while a wake was waiting")
            self._tasks.spawn(self._rewake(ref), "wakegate-rewake")

    def _is_waking(self, name: str) -> bool:
        """Whether this replica scaled ``name`` up and is still waiting for a ready pod."""
        woke_at = self._waking.get(name)
        ref = self._table.get(name)
        if woke_at is None or ref is None:
            return False
        hold_s = ref.info.settings.hold_timeout_s or self.settings.hold_timeout_s
        if time.monotonic() - woke_at < hold_s:
            return True
        del self._waking[name]
        return False

    async def _rewake(self, ref: obj.ProjectRef) -> None:
        try:
            await self._patch_scale(ref, obj.scale_patch(1))
        except (BackendError, _Conflict) as exc:
            logs.event("scale_error", logging.ERROR, project=ref.name, direction="up", error=str(exc))

    def _on_slice(self, key: Key, old: Obj | None, new: Obj | None) -> None:
        ns, slice_name = key
        touched = set()
        for o in (old, new):
            svc = obj.slice_service(o) if o is not None else None
            if svc:
                touched.add(svc)
        if old is not None and (svc := obj.slice_service(old)):
            self._slices.get((ns, svc), {}).pop(slice_name, None)
        if new is not None and (svc := obj.slice_service(new)):
            self._slices.setdefault((ns, svc), {})[slice_name] = new
        for svc in touched:
            if not self._slices.get((ns, svc)):
                self._slices.pop((ns, svc), None)
            ref = self._table.get(svc)
            if ref is not None and ref.namespace == ns:
                self._refresh_endpoints(svc)

    def _on_pod(self, key: Key, old: Obj | None, new: Obj | None) -> None:
        ns, pod_name = key
        touched = set()
        for o in (old, new):
            if o is not None and (project := obj.labels_of(o).get(C.PROJECT_LABEL)):
                touched.add(project)
                self._pods.get((ns, project), {}).pop(pod_name, None)
        if new is not None and (project := obj.labels_of(new).get(C.PROJECT_LABEL)):
            self._pods.setdefault((ns, project), {})[pod_name] = new
        for project in touched:
            if not self._pods.get((ns, project)):
                self._pods.pop((ns, project), None)
            ref = self._table.get(project)
            if ref is not None and ref.namespace == ns:
                self._check_failure(project)

    # --- derived state ---------------------------------------------------------------------------

    def _refresh_claim(self, ns: str, dep_name: str) -> None:
        dep = self.deployments.store.get((ns, dep_name))
        nsobj = self.namespaces.store.get(("", ns))
        ref, problems = obj.project_ref(dep, nsobj) if dep is not None else (None, [])
        if problems != self._problems.get((ns, dep_name), []):
            for p in problems:
                logs.event("project_annotation_invalid", logging.WARNING, project=dep_name, namespace=ns, error=p)
            self._problems[(ns, dep_name)] = problems
        claims = self._claims.setdefault(dep_name, {})
        if ref is None:
            claims.pop(ns, None)
        else:
            claims[ns] = ref
        if not claims:
            self._claims.pop(dep_name, None)
        self._settle(dep_name)

    def _settle(self, name: str) -> None:
        claims = self._claims.get(name, {})
        winner = min(claims.values(), key=lambda r: (r.created, r.namespace), default=None)
        current = self._table.get(name)
        if winner == current:
            return
        if len(claims) > 1:
            logs.event("project_claimed_twice", logging.WARNING, project=name,
                       namespaces=",".join(sorted(claims)), chosen=winner.namespace if winner else None)
        if winner is None:
            del self._table[name]
            del self._projects[name]
            self._pushed.pop(name, None)
            self._reported.pop(name, None)
            self._waking.pop(name, None)
        else:
            self._table[name] = winner
            self._projects[name] = winner.info
        self._notify_projects()
        if winner is not None and (current is None or current.namespace != winner.namespace):
            self._refresh_endpoints(name)

    def _notify_projects(self) -> None:
        if self._notify_scheduled or self.listener is None:
            return
        self._notify_scheduled = True

        def notify() -> None:
            self._notify_scheduled = False
            if self.listener is not None:
                self.listener.projects_changed()

        try:
            asyncio.get_running_loop().call_soon(notify)
        except RuntimeError:
            notify()

    def _endpoints_for(self, name: str) -> tuple[Endpoint, ...]:
        ref = self._table.get(name)
        if ref is None:
            return ()
        dep = self._deployment(ref)
        if dep is None or obj.spec_replicas(dep) < 1:
            return ()  # scaled to zero: whatever the slices still list is going away
        return obj.ready_endpoints(self._slices.get((ref.namespace, name), {}).values())

    def _refresh_endpoints(self, name: str) -> None:
        self._push(name, self._endpoints_for(name))

    def _push(self, name: str, eps: tuple[Endpoint, ...], force: bool = False) -> None:
        if not force and self._pushed.get(name, ()) == eps:
            return
        self._pushed[name] = eps
        if eps:
            self._waking.pop(name, None)
        if self.listener is not None:
            self.listener.endpoints_changed(name, eps)

    def _check_failure(self, name: str) -> None:
        ref = self._table.get(name)
        if ref is None:
            return
        reason = obj.wake_failure(self._deployment(ref), self._pods.get((ref.namespace, name), {}).values())
        if reason is None:
            self._reported.pop(name, None)
            return
        if self._reported.get(name) == reason:
            return
        self._reported[name] = reason
        self._waking.pop(name, None)
        logs.event("project_failing", logging.WARNING, project=name, error=reason)
        if self.listener is not None:
            self.listener.wake_failed(name, reason)

    # --- events ----------------------------------------------------------------------------------

    def _record_event(self, ref: obj.ProjectRef, reason: str, message: str) -> None:
        dep = self._deployment(ref)
        if dep is None or self.kube is None:
            return
        body = obj.event_body(dep, reason, message, self.replica_id, time.time())
        kube = self.kube

        async def send() -> None:
            with contextlib.suppress(ApiError, ApiUnreachable):
                await kube.request("POST", f"/api/v1/namespaces/{path_quote(ref.namespace)}/events", body=body)

        self._tasks.spawn(send(), "wakegate-event")


class _Conflict(Exception):
    """409 Conflict: the precondition (resourceVersion) failed."""

