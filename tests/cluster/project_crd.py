"""Install and remove the Project CRD on the test control plane (tests that need it install it, and
remove it when done: with it, ``wakegate project create`` writes Projects instead of applying)."""

from __future__ import annotations

import json
import time

from gateway import contract as C
from provisioner.crd import project_crd
from tests.cluster.controlplane import ApiStatusError, Cluster

CRD_PATH = f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{C.PROJECT_CRD}"
PROJECTS_PATH = f"/apis/{C.PROJECT_API_VERSION}/{C.PROJECT_PLURAL}"


def install(cluster: Cluster) -> None:
    """Apply the CRD and wait (bounded) until the API server serves it."""
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "--field-manager=wakegate-test", "-f", "-",
                    input=json.dumps(project_crd()))
    cluster.kubectl("wait", "--for=condition=Established", f"crd/{C.PROJECT_CRD}", "--timeout=60s")


def remove(cluster: Cluster) -> None:
    """Delete every Project (releasing finalizers no controller will act on now) and the CRD, and
    wait (bounded) until the API server no longer serves it."""
    deadline = time.monotonic() + 60
    while True:
        try:
            items = cluster.request("GET", PROJECTS_PATH).get("items") or []
            break
        except ApiStatusError as exc:
            if exc.status == 404:
                return
            if exc.status != 429 or time.monotonic() > deadline:  # 429: a new CRD's storage is starting
                raise
            time.sleep(0.5)
    for item in items:
        if item["metadata"].get("finalizers"):
            cluster.request("PATCH", f"{PROJECTS_PATH}/{item['metadata']['name']}",
                            {"metadata": {"finalizers": None}}, content_type="application/merge-patch+json")
    cluster.kubectl("delete", "crd", C.PROJECT_CRD, "--wait=true", "--timeout=120s", "--ignore-not-found")
