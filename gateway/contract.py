"""The contract between wakegate's parts (pure): the names and values they must agree on.

The provisioner writes projects into a cluster; the gateway's Kubernetes backend finds and drives them;
the local backend reads a projects file; ``wakegate serve`` reads flags. All of them import from here:
label keys and values, annotation keys, object and field-manager names, the cold-request strategies,
and the validators of per-project settings (positive seconds, durations, strategies), which raise
:class:`ValueError` with one wording (``expected …, got …``) that each caller prefixes with where the
value came from (a flag, a projects-file field, an annotation). Keep the names stable.

A project ``NAME`` lives in namespace ``<prefix>NAME`` (default prefix :data:`DEFAULT_NAMESPACE_PREFIX`).
Its Deployment and its Service are both called ``NAME``. The Service has one port named
:data:`PORT_NAME` (port :data:`SERVICE_PORT`) whose ``targetPort`` is the container port of the same name.

Nothing here does I/O or imports anything outside the standard library: a local gateway imports it too.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

# --- labels ----------------------------------------------------------------------------------------

MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "wakegate"
#: Value: the project name. On the Namespace and on every object the provisioner writes, including the
#: pod template.
PROJECT_LABEL = "wakegate.io/project"
#: Distinguishes the project's app pods from pods the project's own automation may run.
COMPONENT_LABEL = "app.kubernetes.io/component"
COMPONENT_APP = "app"
#: Label selector that finds every managed namespace (and every managed object).
MANAGED_SELECTOR = f"{MANAGED_BY_LABEL}={MANAGED_BY}"
#: Set by the API server on every namespace (since 1.21); cannot be forged by tenants.
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
#: Set by Kubernetes on a Service's EndpointSlices: the Service's name.
SERVICE_NAME_LABEL = "kubernetes.io/service-name"

# --- annotations on the Deployment -----------------------------------------------------------------

IDLE_TIMEOUT_ANNOTATION = "wakegate.io/idle-timeout-s"
HOLD_TIMEOUT_ANNOTATION = "wakegate.io/hold-timeout-s"
#: One of :data:`STRATEGIES`.
STRATEGY_ANNOTATION = "wakegate.io/strategy"
#: RFC 3339 timestamp of the last request; written by the gateway, shown by ``wakegate project status``.
LAST_ACTIVITY_ANNOTATION = "wakegate.io/last-activity"
#: On the pod template: HMAC-SHA256 of the ConfigMap and Secret data (keyed with a random key kept in a
#: Secret of the project), so a config change restarts the app without exposing the values to guesses.
CONFIG_CHECKSUM_ANNOTATION = "wakegate.io/config-checksum"
#: How the gateway runs the project: one of :data:`MODES` (absent: ``Auto``). Written by the provisioner and
#: the controller (a ``keepWarm`` window in effect renders ``Running``); the gateway applies it on change.
MODE_ANNOTATION = "wakegate.io/mode"
#: Per-replica activity annotations written by earlier gateway versions (removed once by the reaper).
LEGACY_ACTIVITY_PREFIX = "wakegate.io/activity."

# --- names -----------------------------------------------------------------------------------------

#: Projects are served at ``<project>.<domain>`` (``wakegate serve --domain``, ``wakegate project --domain``).
DEFAULT_DOMAIN = "env.example.com"
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
#: The ``Project`` custom resource (cluster-scoped; a Project ``NAME`` owns namespace ``<prefix>NAME``).
PROJECT_GROUP = "wakegate.io"
PROJECT_VERSION = "v1alpha1"
PROJECT_API_VERSION = f"{PROJECT_GROUP}/{PROJECT_VERSION}"
PROJECT_KIND = "Project"
PROJECT_PLURAL = "projects"
PROJECT_CRD = f"{PROJECT_PLURAL}.{PROJECT_GROUP}"
#: On every Project the controller manages: it deletes the project's namespace before the Project goes.
PROJECT_FINALIZER = "wakegate.io/delete-namespace"
#: The controller's ServiceAccount and Lease (gateway namespace).
CONTROLLER_SERVICEACCOUNT = "wakegate-controller"
CONTROLLER_LEASE = "wakegate-controller"
#: What a project's automation account may do in its namespace: one ClusterRole, installed with the
#: gateway, bound in each project namespace (so the controller needs ``bind`` on it, not the rights).
AUTOMATION_CLUSTERROLE = "wakegate-project-automation"
#: The ``coordination.k8s.io`` Lease (gateway namespace) whose holder runs the idle reaper.
REAPER_LEASE = "wakegate-reaper"
#: ``source.component`` of the Events the gateway records on a Deployment (woken, put to sleep).
EVENT_COMPONENT = "wakegate"

_DNS_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_DNS_NAME = re.compile(rf"{_DNS_LABEL}(?:\.{_DNS_LABEL})*")

# --- field managers --------------------------------------------------------------------------------

#: The provisioner's server-side apply.
PROVISIONER_FIELD_MANAGER = "wakegate-provisioner"
#: Owns ``spec.replicas`` of the Deployment from creation until the gateway first scales it; the main
#: field manager never sets it after creation, so re-applying never changes the replica count.
REPLICAS_FIELD_MANAGER = "wakegate-provisioner-replicas"
#: The gateway's patches (scale, sleep, pruning legacy annotations).
GATEWAY_FIELD_MANAGER = "wakegate-gateway"
#: The controller's writes of a Project's status and finalizer (its objects it applies as
#: :data:`PROVISIONER_FIELD_MANAGER`, so a project the CLI made is adopted without a change).
CONTROLLER_FIELD_MANAGER = "wakegate-controller"


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


def dns_name(text: str) -> str:
    """``text`` as a domain (lower case, without a trailing dot) if it is a DNS name: labels of letters,
    digits and '-' (not at either end), at most 63 characters each and 253 in all; else ``ValueError``."""
    name = text.strip().rstrip(".").lower()
    if not name or len(name) > 253 or not _DNS_NAME.fullmatch(name):
        raise ValueError(f"{text!r} is not a DNS name")
    return name


def managed_project(labels: Mapping[str, str]) -> str | None:
    """The project an object's ``labels`` name, if they also say wakegate manages it; else None."""
    if labels.get(MANAGED_BY_LABEL) != MANAGED_BY:
        return None
    return labels.get(PROJECT_LABEL) or None


# --- per-project settings --------------------------------------------------------------------------

#: What a cold browser request gets: ``auto`` (the waiting page for navigations, else held), ``block``
#: (always held) or ``page`` (see :mod:`gateway.waiting_page`).
STRATEGIES = ("auto", "block", "page")
#: ``Auto``: woken by requests, put to sleep when idle; ``Running``: kept up, never put to sleep;
#: ``Suspended``: never woken (requests get 503 ``suspended``).
MODES = ("Auto", "Running", "Suspended")

_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|h|m|s)")
_DURATION_UNITS_S = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def _checked(value: float, shown: object, unit: str) -> float:
    if not 0 < value < math.inf:  # also refuses NaN
        raise ValueError(f"expected a positive number {unit}, got {shown!r}")
    return value


def positive(value: object, unit: str = "of seconds") -> float:
    """``value`` as a float if it is a number (not a bool) above zero and finite; else
    ``ValueError("expected a positive number of seconds, got …")`` (``unit``: "of seconds", "per minute")."""
    try:
        number = float(value) if isinstance(value, int | float) and not isinstance(value, bool) else math.nan
    except OverflowError:
        number = math.inf
    return _checked(number, value, unit)


def positive_seconds(value: object) -> float:
    """A number of seconds given as a number (a projects-file field, a spec field): see :func:`positive`."""
    return positive(value)


def parse_positive(text: str, unit: str = "of seconds") -> float:
    """A positive number written as decimal text (``300``, ``2.5``, ``1e3``): flags, annotations."""
    try:
        number = float(text)
    except (TypeError, ValueError):
        number = math.nan
    return _checked(number, text, unit)


def parse_seconds(text: str) -> float:
    """A number of seconds written as decimal text (a flag, an annotation): see :func:`parse_positive`."""
    return parse_positive(text)


def parse_duration(text: str) -> float:
    """Seconds from ``300``, ``2.5``, ``300s``, ``5m``, ``1h30m`` or ``250ms``; must be positive."""
    s = text.strip()
    try:
        seconds = float(s)
    except ValueError:
        parts = _DURATION_PART.findall(s)
        if not s or "".join(n + u for n, u in parts) != s:
            raise ValueError(f"expected a duration (e.g. 300, 90s, 15m, 1h), got {text!r}") from None
        seconds = sum(float(n) * _DURATION_UNITS_S[u] for n, u in parts)
    return _checked(seconds, text, "of seconds")


def format_seconds(seconds: float) -> str:
    """How a number of seconds is written into an annotation (``300``, ``2.5``); read by :func:`parse_seconds`."""
    return str(int(seconds)) if float(seconds).is_integer() else repr(float(seconds))


def strategy(value: object) -> str:
    """``value`` if it is one of :data:`STRATEGIES`; else ``ValueError("expected one of …, got …")``."""
    if not isinstance(value, str) or value not in STRATEGIES:
        raise ValueError(f"expected one of {', '.join(STRATEGIES)}, got {value!r}")
    return value


def mode(value: object) -> str:
    """``value`` if it is one of :data:`MODES`; else ``ValueError("expected one of …, got …")``."""
    if not isinstance(value, str) or value not in MODES:
        raise ValueError(f"expected one of {', '.join(MODES)}, got {value!r}")
    return value
