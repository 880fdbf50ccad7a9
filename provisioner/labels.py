"""The contract between the provisioner and the gateway's Kubernetes backend.

Everything the gateway needs to find and drive a project lives here: label keys and values,
object names, annotation keys and field-manager names. Keep the names stable; the gateway imports
them.

A project ``NAME`` lives in namespace ``<prefix>NAME`` (default prefix :data:`DEFAULT_NAMESPACE_PREFIX`).
Its Deployment and its Service are both called ``NAME``. The Service has one port named
:data:`PORT_NAME` (port :data:`SERVICE_PORT`) whose ``targetPort`` is the container port of the same name.
"""

from __future__ import annotations

# --- labels ----------------------------------------------------------------------------------------

MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "wakegate"
#: Value: the project name. On the Namespace and on every object the provisioner writes, including the
#: pod template.
PROJECT_LABEL = "wakegate.io/project"
#: Distinguishes the project's app pods from pods the project's own automation may run.
COMPONENT_LABEL = "app.kubernetes.io/component"
COMPONENT_APP = "app"
#: Set by the API server on every namespace (since 1.21); cannot be forged by tenants.
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
#: Label selector that finds every managed namespace (and every managed object).
MANAGED_SELECTOR = f"{MANAGED_BY_LABEL}={MANAGED_BY}"

# --- annotations on the Deployment -----------------------------------------------------------------

IDLE_TIMEOUT_ANNOTATION = "wakegate.io/idle-timeout-s"
HOLD_TIMEOUT_ANNOTATION = "wakegate.io/hold-timeout-s"
#: ``auto`` | ``block`` | ``page``
STRATEGY_ANNOTATION = "wakegate.io/strategy"
STRATEGIES = ("auto", "block", "page")
#: RFC 3339 timestamp of the last request; written by the gateway, shown by ``wakegate project status``.
LAST_ACTIVITY_ANNOTATION = "wakegate.io/last-activity"
#: On the pod template: HMAC-SHA256 of the ConfigMap and Secret data (keyed with a random key kept in a
#: Secret of the project), so a config change restarts the app without exposing the values to guesses.
CONFIG_CHECKSUM_ANNOTATION = "wakegate.io/config-checksum"

# --- names -----------------------------------------------------------------------------------------

DEFAULT_NAMESPACE_PREFIX = "wg-"
DEFAULT_GATEWAY_NAMESPACE = "wakegate-system"
#: The gateway's ServiceAccount, in the gateway namespace.
GATEWAY_SERVICEACCOUNT = "wakegate"
#: Pods of the gateway carry these labels; the ingress NetworkPolicy admits only them.
GATEWAY_POD_LABELS: dict[str, str] = {"app.kubernetes.io/name": "wakegate"}
#: Role and RoleBinding in every project namespace that give the gateway what it needs.
GATEWAY_ROLE = "wakegate-gateway"
PORT_NAME = "http"
SERVICE_PORT = 80
DEFAULT_CONTAINER_PORT = 3001
CONTAINER_NAME = "app"

# --- server-side apply -----------------------------------------------------------------------------

FIELD_MANAGER = "wakegate-provisioner"
#: Owns ``spec.replicas`` of the Deployment from creation until the gateway first scales it; the main
#: field manager never sets it after creation, so re-applying never changes the replica count.
REPLICAS_FIELD_MANAGER = "wakegate-provisioner-replicas"


def namespace_for(project: str, prefix: str = DEFAULT_NAMESPACE_PREFIX) -> str:
    """The namespace of ``project``."""
    return f"{prefix}{project}"


def selector_labels(project: str) -> dict[str, str]:
    """The Deployment's (immutable) selector, the Service's selector and labels on every app pod."""
    return {PROJECT_LABEL: project, COMPONENT_LABEL: COMPONENT_APP}


def app_label_selector(project: str) -> str:
    """:func:`selector_labels` as a ``labelSelector`` query string."""
    return ",".join(f"{k}={v}" for k, v in sorted(selector_labels(project).items()))


def common_labels(project: str) -> dict[str, str]:
    """Labels on every object the provisioner writes."""
    return {MANAGED_BY_LABEL: MANAGED_BY, PROJECT_LABEL: project}
