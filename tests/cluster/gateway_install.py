"""Install the gateway into a test cluster the way ops do: ``kubectl apply -k`` of ``manifests/``.

The kustomization written here has the shape of ``manifests/kustomization.yaml`` — ``base/``, the
settings (merged into ``wakegate-settings``) and components — plus one ``images`` entry that points
the gateway's image at the test image table's ``wakegate.test/wakegate:1``, which the node agent runs
as the Dockerfile would. The base objects are applied unchanged: two gateway replicas with their
ServiceAccount token, Lease, admin token Secret (created as the README says) and readiness probe,
the Project controller, RBAC, NetworkPolicies, the admission policy.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gateway import contract as C
from tests.cluster.controlplane import Cluster
from tests.cluster.helm import install_kustomization, kustomize

TEST_IMAGE = "wakegate.test/wakegate"
TEST_TAG = "1"
GATEWAY_NAMESPACE = C.DEFAULT_GATEWAY_NAMESPACE
ADMIN_TOKEN_SECRET = "wakegate-admin-token"
#: The Deployments manifests/ installs.
DEPLOYMENTS = ("wakegate", "wakegate-controller")
ROLLOUT_TIMEOUT_S = 180.0


@dataclass(frozen=True)
class Install:
    """What was installed: settings, the admin token, the rendered objects."""

    domain: str
    admin_token: str
    objects: list[dict[str, Any]] = field(repr=False)

    def gateway_pods(self, cluster: Cluster) -> list[dict[str, Any]]:
        """The gateway's ready pods (not terminating), by name."""
        pods = cluster.request(
            "GET", f"/api/v1/namespaces/{GATEWAY_NAMESPACE}/pods?labelSelector=app.kubernetes.io/component%3Dgateway"
        )["items"]

        def ready(pod: dict[str, Any]) -> bool:
            conditions = {c["type"]: c["status"] for c in pod.get("status", {}).get("conditions", [])}
            return conditions.get("Ready") == "True" and not pod["metadata"].get("deletionTimestamp")

        return sorted(filter(ready, pods), key=lambda p: p["metadata"]["name"])


def kustomization(overlay: Path, settings: dict[str, str], components: list[str]) -> Path:
    """Write the install kustomization (:func:`helm.install_kustomization`) plus the test image."""
    overlay.mkdir(parents=True, exist_ok=True)
    doc = install_kustomization(settings, ["settings", *components], overlay)
    doc["images"] = [{"name": "ghcr.io/example/wakegate", "newName": TEST_IMAGE, "newTag": TEST_TAG}]
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return overlay


def install(cluster: Cluster, overlay_dir: Path, settings: dict[str, str],
            components: list[str] | None = None) -> Install:
    """Apply manifests/ with ``settings``, create the admin token Secret, wait for both rollouts."""
    overlay = kustomization(overlay_dir, settings, components or [])
    objects = kustomize(overlay)
    cluster.kubectl("apply", "--server-side", "--field-manager=wakegate-install", "-k", str(overlay), timeout=120)
    token = secrets.token_hex(32)
    cluster.kubectl("-n", GATEWAY_NAMESPACE, "create", "secret", "generic", ADMIN_TOKEN_SECRET,
                    f"--from-literal=token={token}")
    for name in DEPLOYMENTS:
        wait_rollout(cluster, name)
    return Install(domain=settings["domain"], admin_token=token, objects=objects)


def wait_rollout(cluster: Cluster, name: str, timeout_s: float = ROLLOUT_TIMEOUT_S) -> None:
    """Wait until every replica of a Deployment in the gateway namespace is updated and ready."""
    deadline = time.monotonic() + timeout_s
    proc = cluster.kubectl("-n", GATEWAY_NAMESPACE, "rollout", "status", f"deployment/{name}",
                           f"--timeout={int(timeout_s)}s", check=False, timeout=timeout_s + 30)
    if proc.returncode != 0 or time.monotonic() > deadline:
        pods = cluster.request("GET", f"/api/v1/namespaces/{GATEWAY_NAMESPACE}/pods")["items"]
        states = {p["metadata"]["name"]: p.get("status", {}).get("containerStatuses") for p in pods}
        logs = "\n".join(cluster.pod_log(GATEWAY_NAMESPACE, p["metadata"]["name"])[-3000:] for p in pods)
        raise AssertionError(f"deployment {name} did not roll out: {proc.stderr.strip()}\n"
                             f"{json.dumps(states, indent=1)[:4000]}\n{logs}")
