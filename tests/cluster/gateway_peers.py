"""Gateway replicas run as host processes, listed as the endpoints of a gateway Service.

In a cluster the endpoint controller lists the gateway's pods in the EndpointSlices of its Service,
and the reaper Lease holder finds the other replicas there (``--peer-service``). The test cluster's
replicas are processes on the host, so a test lists them itself, as that controller would: one
EndpointSlice per replica (replicas on one host differ by port, and a slice has one port list), at
the host's address on the pod bridge (the API server refuses loopback addresses in EndpointSlices),
with the replica's id as the endpoint's ``targetRef`` name. Removing a replica's slice is what the
endpoint controller does when its pod is gone.
"""

from __future__ import annotations

from typing import Any

from gateway import contract as L
from tests.cluster.controlplane import ApiStatusError, Cluster

PEER_SERVICE = "wakegate-peers"
_SLICES = f"/apis/discovery.k8s.io/v1/namespaces/{L.DEFAULT_GATEWAY_NAMESPACE}/endpointslices"


def peer_slice(cluster: Cluster, replica: str, admin_port: int, service: str = PEER_SERVICE,
               ready: bool = True) -> dict[str, Any]:
    """The EndpointSlice listing one replica's admin port."""
    return {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": f"{service}-{replica}", "namespace": L.DEFAULT_GATEWAY_NAMESPACE,
                     "labels": {"kubernetes.io/service-name": service,
                                "endpointslice.kubernetes.io/managed-by": "wakegate-tests"}},
        "addressType": "IPv4",
        "ports": [{"name": "admin", "port": admin_port, "protocol": "TCP"}],
        "endpoints": [{"addresses": [cluster.gateway_ip], "conditions": {"ready": ready},
                       "targetRef": {"kind": "Pod", "name": replica, "namespace": L.DEFAULT_GATEWAY_NAMESPACE}}],
    }


def publish(cluster: Cluster, replica: str, admin_port: int, service: str = PEER_SERVICE) -> None:
    """List (or re-list) a replica as an endpoint of the gateway Service."""
    withdraw(cluster, replica, service)
    cluster.request("POST", _SLICES, body=peer_slice(cluster, replica, admin_port, service))


def withdraw(cluster: Cluster, replica: str, service: str = PEER_SERVICE) -> None:
    """Remove a replica's endpoint (its pod is gone)."""
    try:
        cluster.request("DELETE", f"{_SLICES}/{service}-{replica}")
    except ApiStatusError as exc:
        if exc.status != 404:
            raise
