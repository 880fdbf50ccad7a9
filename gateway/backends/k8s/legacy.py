"""Removing what earlier gateway versions wrote: the per-replica activity annotations
(:data:`~gateway.contract.LEGACY_ACTIVITY_PREFIX`) on project Deployments.

The reaper Lease holder removes them once per Deployment, with one merge patch, when it takes the
Lease and whenever a Deployment that still carries them changes; a failed patch is tried again on the
Deployment's next change.
"""

from __future__ import annotations

import logging

from gateway import contract as C
from gateway import logs
from gateway.backends.k8s import objects as obj
from gateway.backends.k8s.api import MERGE_PATCH, ApiError, ApiUnreachable, Key, Kube, deployment_path
from gateway.tasks import Tasks


class LegacyAnnotations:
    """Prunes the legacy activity annotations of Deployments, each once (in the background)."""

    def __init__(self, kube: Kube, tasks: Tasks) -> None:
        self.kube = kube
        self._tasks = tasks
        self._pruned: set[Key] = set()  # Deployments whose annotations were removed (or are being)

    def prune(self, ref: obj.ProjectRef, deployment: obj.Obj | None) -> None:
        """Remove ``deployment``'s legacy annotations unless that was done already."""
        key = (ref.namespace, ref.name)
        legacy = obj.legacy_activity_keys(deployment)
        if legacy and key not in self._pruned:
            self._pruned.add(key)
            self._tasks.spawn(self._remove(ref, legacy), "wakegate-prune-legacy")

    async def _remove(self, ref: obj.ProjectRef, keys: list[str]) -> None:
        try:
            await self.kube.request("PATCH", deployment_path(ref.namespace, ref.name),
                                    body=obj.remove_annotations_patch(keys), content_type=MERGE_PATCH,
                                    query={"fieldManager": C.GATEWAY_FIELD_MANAGER})
        except (ApiError, ApiUnreachable) as exc:
            self._pruned.discard((ref.namespace, ref.name))  # tried again on the next change
            logs.event("prune_failed", logging.WARNING, project=ref.name, error=str(exc))
        else:
            logs.event("legacy_activity_pruned", project=ref.name, annotations=len(keys))
