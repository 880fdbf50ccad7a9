"""The I/O side of leader election (decisions: :mod:`gateway.backends.k8s.leader`).

Every gateway replica runs :meth:`LeaseElection.run`: it reads the ``coordination.k8s.io`` Lease
:data:`~gateway.contract.REAPER_LEASE` in the gateway namespace every ``--leader-lease``/3 seconds,
renews it while it holds it, and takes it over once it was released or has not changed for a whole
lease as seen by this replica's clock. The holder runs the idle reaper; on shutdown it releases the
Lease so another replica takes over at once.

API server load: one GET per replica and renew interval, plus one PUT by the holder.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable

from gateway import contract as C
from gateway import logs
from gateway.backends.k8s import leader
from gateway.backends.k8s.api import ApiError, ApiUnreachable, Kube, path_quote


class LeaseElection:
    """This replica's hold on the reaper Lease: :meth:`holds` says whether it holds it now."""

    def __init__(self, kube: Kube, *, namespace: str, identity: str, lease_s: float,
                 name: str = C.REAPER_LEASE, on_acquired: Callable[[], None] | None = None) -> None:
        self.kube = kube
        self.namespace = namespace
        self.identity = identity
        self.name = name
        self.lease_s = lease_s
        self.renew_interval_s = max(0.2, lease_s / 3)
        #: Called when this replica becomes the holder.
        self.on_acquired = on_acquired
        #: Wall time this replica last became the holder (infinity until then).
        self.since_wall_s = math.inf
        self._until = 0.0  # monotonic time until which this replica holds the Lease
        self._record: leader.LeaseRecord | None = None  # the Lease as this replica last wrote it

    @property
    def path(self) -> str:
        return f"{self._collection}/{self.name}"

    @property
    def _collection(self) -> str:
        return f"/apis/coordination.k8s.io/v1/namespaces/{path_quote(self.namespace)}/leases"

    def holds(self) -> bool:
        """Whether this replica holds the Lease now (it stops a little before others could take over)."""
        return time.monotonic() < self._until

    async def run(self) -> None:
        """Try to acquire, then renew, the Lease every renew interval, until cancelled."""
        observed: tuple[str | None, str] | None = None
        observed_at = time.monotonic()
        while True:
            started = time.monotonic()
            try:
                try:
                    record: leader.LeaseRecord | None = leader.parse_lease(await self.kube.request("GET", self.path))
                except ApiError as exc:
                    if exc.status != 404:
                        raise
                    record = None
                if record is not None and record.version != observed:
                    observed, observed_at = record.version, started
                action = leader.decide(record, self.identity, observed_at, started, self.lease_s)
                if action is leader.Action.FOLLOW:
                    self._set(False, record)
                else:
                    body = leader.lease_body(self.name, self.namespace, self.identity, self.lease_s, time.time(),
                                             record)
                    if action is leader.Action.CREATE:
                        new = await self.kube.request("POST", self._collection, body=body)
                    else:
                        new = await self.kube.request("PUT", self.path, body=body)
                    self._record = leader.parse_lease(new)
                    observed = self._record.version
                    # Others take over only a full lease after they see this renewal; stop a bit earlier.
                    self._set(True, self._record, started + self.lease_s * 0.8)
            except ApiError as exc:
                if exc.status == 409:  # another replica wrote first
                    self._set(False, None)
                else:
                    logs.event("leader_election_error", logging.WARNING, error=str(exc))
            except ApiUnreachable as exc:
                logs.event("leader_election_error", logging.WARNING, error=str(exc))
            await asyncio.sleep(self.renew_interval_s)

    def _set(self, held: bool, record: leader.LeaseRecord | None, until: float = 0.0) -> None:
        was = self.holds()
        self._until = until if held else 0.0
        if held and not was:
            self.since_wall_s = time.time()
            logs.event("leader_acquired", replica=self.identity, lease=self.name)
            if self.on_acquired is not None:
                self.on_acquired()
        elif not held and was:
            logs.event("leader_lost", logging.WARNING, replica=self.identity,
                       holder=record.holder if record else None)

    async def release(self) -> None:
        """On shutdown: hand the Lease over at once (if this replica holds it)."""
        if self._record is None or not self.holds():
            return
        body = leader.release_body(self.name, self.namespace, self._record, time.time())
        try:
            await self.kube.request("PUT", self.path, body=body)
        except (ApiError, ApiUnreachable):
            return
        logs.event("leader_released", replica=self.identity)
