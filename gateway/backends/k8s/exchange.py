"""The I/O side of the activity exchange (rules: :mod:`gateway.backends.k8s.peers`).

The reaper Lease holder watches the gateway Service's EndpointSlices in the gateway namespace
(who the other replicas are) and, every ``--activity-pull-interval``, pulls each one's activity map
from its admin port (``GET /api/v1/activity``, with the admin bearer token). Before each sleep it asks
every peer once more about that one project (:meth:`ActivityExchange.confirm`), so the decision
rests on answers given after the project's last activity anywhere.

API server load: one watch (EndpointSlices of one Service); no writes. Peer load: one small HTTP
request per peer and interval from the holder only, plus one per peer and sleep.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import aiohttp

from gateway import contract as C
from gateway import logs
from gateway.activity import SharedActivity
from gateway.backends.k8s import peers as pr
from gateway.backends.k8s.api import Informer, Key, Kube, Obj, path_quote
from gateway.config import Settings, read_token
from gateway.tasks import Tasks

PEER_TIMEOUT_S = 3.0
#: The port of the gateway Service that reaches a replica's admin API.
ADMIN_PORT_NAME = "admin"


class ActivityExchange:
    """The other replicas and what they last said about their projects' activity."""

    def __init__(self, kube: Kube, *, namespace: str, service: str, port_name: str, own_name: str,
                 own_ip: str | None, token: bytes | None, interval_s: float,
                 since_window_s: Callable[[], float]) -> None:
        self.interval_s = interval_s
        self.max_age_s = pr.STALE_PULL_INTERVALS * interval_s
        self._port_name = port_name
        self._own_name = own_name
        self._own_ip = own_ip
        self._headers = {"Authorization": "Bearer " + token.decode()} if token else {}
        self._since_window_s = since_window_s  # how far back activity can still matter (longest idle timeout)
        self.slices = Informer(kube, "gateway-endpointslices",
                               f"/apis/discovery.k8s.io/v1/namespaces/{path_quote(namespace)}/endpointslices",
                               self._on_slice, label_selector=f"{C.SERVICE_NAME_LABEL}={service}")
        self.peers: tuple[pr.Peer, ...] = ()
        self.snapshots: dict[str, pr.Snapshot] = {}
        self.failures: dict[str, str] = {}  # peer → why its last pull failed (logged on change)
        self._session: aiohttp.ClientSession | None = None
        self._round_started: float | None = None  # wall time the last complete round was started

    @classmethod
    def for_gateway(cls, kube: Kube, settings: Settings, replica_id: str,
                    since_window_s: Callable[[], float]) -> ActivityExchange:
        """The exchange of a gateway replica: its peers are the endpoints of ``--peer-service`` in the
        gateway namespace (port ``admin``), pulled every ``--activity-pull-interval`` with the admin
        token; ``$POD_IP`` is this replica's own address."""
        token = read_token(settings.admin_token_file) if settings.admin_token_file else None
        return cls(kube, namespace=settings.gateway_namespace, service=settings.peer_service,
                   port_name=ADMIN_PORT_NAME, own_name=replica_id, own_ip=os.environ.get("POD_IP"), token=token,
                   interval_s=settings.activity_pull_interval_s, since_window_s=since_window_s)

    def start(self, tasks: Tasks, active: Callable[[], bool]) -> None:
        """Watch the peers, and pull their activity while ``active()`` (this replica holds the Lease)."""
        tasks.spawn(self.slices.run(), f"wakegate-watch-{self.slices.kind}")
        tasks.spawn(self.run(active), "wakegate-activity-exchange")

    # --- peers -------------------------------------------------------------------------------------

    def _on_slice(self, key: Key, old: Obj | None, new: Obj | None) -> None:
        peers = pr.peers_from_slices(self.slices.store.values(), self._port_name, self._own_name, self._own_ip)
        if peers != self.peers:
            gone = {p.name for p in self.peers} - {p.name for p in peers}
            for name in gone:  # its claims go with it
                self.snapshots.pop(name, None)
                self.failures.pop(name, None)
            self.peers = peers
            logs.event("gateway_peers", peers=",".join(p.name for p in peers) or "none")

    # --- pulling -----------------------------------------------------------------------------------

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=PEER_TIMEOUT_S))
        return self._session

    async def pull(self, peer: pr.Peer, project: str | None = None) -> pr.Snapshot | None:
        """Ask ``peer`` for its activity (of one ``project``, or of all that may matter); stores and
        returns the snapshot, or ``None`` (logged) when it did not answer properly."""
        asked = time.time()
        query = {"since": f"{asked - self._since_window_s():.3f}"}
        if project is not None:
            query["project"] = project
        try:
            async with self._client().get(peer.url + "/api/v1/activity", params=query, headers=self._headers) as resp:
                if resp.status != 200:
                    raise ValueError(f"answered {resp.status}")
                snap = pr.decode_activity(json.loads(await resp.read()), asked)
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
            error = str(exc) or type(exc).__name__
            if self.failures.get(peer.name) != error:
                logs.event("peer_unreachable", logging.WARNING, peer=peer.name, error=error)
            self.failures[peer.name] = error
            return None
        if peer.name in self.failures:
            del self.failures[peer.name]
            logs.event("peer_reachable", peer=peer.name)
        if project is None:
            self.snapshots[peer.name] = snap
        return snap

    async def pull_all(self) -> bool:
        """One round over every peer; True when all answered."""
        started = time.time()
        peers = self.peers
        results = await asyncio.gather(*(self.pull(p) for p in peers))
        complete = all(r is not None for r in results)
        if complete:
            self._round_started = started
        return complete

    async def run(self, active: Callable[[], bool]) -> None:
        """Pull every interval while ``active()`` (this replica holds the reaper Lease)."""
        while True:
            if active():
                await self.pull_all()
            await asyncio.sleep(self.interval_s)

    def learned_since(self, wall_s: float) -> bool:
        """Whether a round in which every peer answered started at or after ``wall_s``."""
        return self._round_started is not None and self._round_started >= wall_s

    # --- decisions ---------------------------------------------------------------------------------

    def shared(self, project: str) -> SharedActivity:
        """The other replicas' activity for ``project`` from the last pulls (peers without a fresh
        answer are ``unknown``)."""
        return pr.verdict(self.peers, self.snapshots, project, now_s=time.time(), max_age_s=self.max_age_s)

    async def confirm(self, project: str) -> SharedActivity:
        """Ask every peer about ``project`` now (the last word before a sleep)."""
        peers = self.peers
        answers = await asyncio.gather(*(self.pull(p, project) for p in peers))
        fresh = {p.name: a for p, a in zip(peers, answers, strict=True) if a is not None}
        return pr.verdict(peers, fresh, project, now_s=time.time(), max_age_s=float("inf"))

    async def confirm_idle(self, project: str) -> tuple[bool, SharedActivity]:
        """Whether every peer, asked now, upholds the idle decision made from the last pulls
        (:func:`~gateway.backends.k8s.peers.confirms_idle`); with what they answered."""
        seen = self.shared(project)
        confirmed = await self.confirm(project)
        return pr.confirms_idle(seen, confirmed), confirmed

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def describe(shared: SharedActivity) -> dict[str, Any]:
    """Log fields for a decision refused because of other replicas."""
    return {"peers_unknown": ",".join(shared.unknown) or None, "peers_open": shared.open or None}
