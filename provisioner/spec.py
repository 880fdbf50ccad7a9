"""What a project is: :class:`ProjectSpec`, validated on construction.

Every check raises :class:`SpecError` with a one-line message naming the problem. Quantities are kept
as the user wrote them (the API server canonicalises them) but parsed exactly (:func:`parse_quantity`)
to compare requests with limits and quotas with what a rolling update needs.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import PurePosixPath

from gateway import contract as C

from .envfile import MAX_FILE_BYTES, SECRET_ADVICE, env_key_problem, secret_reason
from .errors import SpecError

__all__ = [
    "DEFAULT_POD_SECURITY_VERSION",
    "RESERVED_TOLERATION_KEYS",
    "ROLLOUT_PODS",
    "TAINT_EFFECTS",
    "ProjectSpec",
    "Quota",
    "Resources",
    "SpecError",
    "Storage",
    "Toleration",
    "format_quantity",
    "label_key_problem",
    "label_value_problem",
    "parse_duration",
    "parse_node_selector",
    "parse_quantity",
    "parse_toleration",
    "validate_project_name",
]

#: Pod Security Standards version pinned on every project namespace.
DEFAULT_POD_SECURITY_VERSION = "v1.33"
#: A rolling update runs the old and the new pod side by side; quotas must allow that many.
ROLLOUT_PODS = 2
MAX_NAME = 63

_DNS1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_PREFIX = re.compile(r"([a-z][-a-z0-9]*)?")
_QUANTITY = re.compile(
    r"(?P<num>[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))"
    r"(?:(?P<bin>Ki|Mi|Gi|Ti|Pi|Ei)|(?P<dec>[numkMGTPE])|[eE](?P<exp>[+-]?[0-9]+))?"
)
_BINARY = {"Ki": 1, "Mi": 2, "Gi": 3, "Ti": 4, "Pi": 5, "Ei": 6}
_DECIMAL = {"n": -9, "u": -6, "m": -3, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
_IMAGE = re.compile(
    r"(?:(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*"
    r"|\[[0-9a-fA-F:]+\])(?::[0-9]+)?/)?"
    r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*"
    r"(?::[\w][\w.-]{0,127})?"
    r"(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?"
)
_PSA_VERSION = re.compile(r"latest|v1\.(0|[1-9][0-9]*)")
_RESERVED_NAMES = frozenset({"default", "www", "wakegate"})
_RESERVED_NAMESPACE_PREFIXES = ("kube-", "openshift-", "aks-", "azure-", "calico-", "tigera-", "gatekeeper-")
_FORBIDDEN_MOUNTS = ("/proc", "/sys", "/dev", "/tmp")
MAX_SUBDOMAIN = 253
_LABEL_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
#: Effects a ``--toleration`` may name (an empty effect, "every effect", is not accepted).
TAINT_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
#: Taints that keep ordinary pods off control-plane nodes (kubeadm) and AKS system node pools: a
#: project's untrusted pods never tolerate them.
RESERVED_TOLERATION_KEYS = ("CriticalAddonsOnly", "node-role.kubernetes.io/control-plane",
                            "node-role.kubernetes.io/master")
#: Kubernetes reserves this PriorityClass prefix for system-node-critical and system-cluster-critical.
_SYSTEM_PRIORITY_PREFIX = "system-"


# --- quantities and durations ------------------------------------------------------------------------


def parse_quantity(text: str, what: str = "quantity") -> Fraction:
    """Parse a Kubernetes quantity (``100m``, ``0.5``, ``1Gi``, ``512Mi``, ``1e3``) exactly."""
    m = _QUANTITY.fullmatch(text.strip()) if isinstance(text, str) else None
    if not m or text != text.strip():
        raise SpecError(f"{what}: cannot parse {text!r} as a Kubernetes quantity (e.g. 500m, 0.5, 1Gi, 512Mi)")
    value = Fraction(m["num"])
    if m["bin"]:
        value *= 1024 ** _BINARY[m["bin"]]
    elif m["dec"]:
        value *= Fraction(10) ** _DECIMAL[m["dec"]]
    elif m["exp"] is not None:
        exp = int(m["exp"])
        if abs(exp) > 30:
            raise SpecError(f"{what}: exponent in {text!r} is out of range")
        value *= Fraction(10) ** exp
    return value


def format_quantity(value: Fraction) -> str:
    """A canonical-looking quantity for ``value`` (``2Gi``, ``500m``, ``3``); rounds up below 1n."""
    if value.denominator == 1:
        n = value.numerator
        for suffix, power in sorted(_BINARY.items(), key=lambda kv: -kv[1]):
            if n and n % 1024 ** power == 0:
                return f"{n // 1024 ** power}{suffix}"
        for suffix, power in sorted(_DECIMAL.items(), key=lambda kv: -kv[1]):
            if power > 0 and n and n % 10 ** power == 0:
                return f"{n // 10 ** power}{suffix}"
        return str(n)
    for suffix, power in (("m", 3), ("u", 6), ("n", 9)):
        scaled = value * 10 ** power
        if scaled.denominator == 1:
            return f"{scaled.numerator}{suffix}"
    return f"{-(-value.numerator * 10 ** 9 // value.denominator)}n"


def parse_duration(text: str, what: str = "duration") -> float:
    """Seconds from ``300``, ``2.5``, ``300s``, ``5m``, ``1h30m`` or ``250ms``; must be positive
    (:func:`gateway.contract.parse_duration`). ``what`` names the flag in the :class:`SpecError`."""
    try:
        return C.parse_duration(text)
    except ValueError as exc:
        raise SpecError(f"{what}: {exc}") from None


# --- names -------------------------------------------------------------------------------------------


def validate_project_name(name: str, prefix: str = C.DEFAULT_NAMESPACE_PREFIX,
                          gateway_namespace: str = C.DEFAULT_GATEWAY_NAMESPACE) -> None:
    """Check that ``name`` is a usable project name and ``<prefix><name>`` a usable namespace."""
    if not _PREFIX.fullmatch(prefix) or len(prefix) >= MAX_NAME:
        raise SpecError(f"namespace prefix {prefix!r} must be empty or start with a lowercase letter and "
                        "contain only lowercase letters, digits and '-'")
    if not name:
        raise SpecError("project name is empty")
    if len(name) > MAX_NAME:
        raise SpecError(f"project name {name[:70]!r} is too long: {len(name)} characters (max {MAX_NAME})")
    if not _DNS1035.fullmatch(name):
        raise SpecError(f"project name {name!r} is not a DNS-1035 label (lowercase letters, digits and '-', "
                        "starting with a letter and ending with a letter or digit)")
    if name[2:4] == "--":
        raise SpecError(f"project name {name!r} has '--' in the third and fourth characters ('xn--' and the like "
                        "are reserved for internationalised domain names)")
    namespace = C.namespace_for(name, prefix)
    if len(namespace) > MAX_NAME:
        raise SpecError(f"project name {name!r} is too long with the prefix: namespace {namespace!r} would have "
                        f"{len(namespace)} characters (max {MAX_NAME})")
    if name in _RESERVED_NAMES or name.startswith("kube-"):
        raise SpecError(f"project name {name!r} is reserved")
    if namespace == gateway_namespace:
        raise SpecError(f"project name {name!r} is reserved: namespace {namespace!r} is the gateway namespace")
    if namespace in _RESERVED_NAMES or namespace.startswith(_RESERVED_NAMESPACE_PREFIXES):
        raise SpecError(f"project name {name!r} is reserved: namespace {namespace!r} belongs to the cluster")


# --- placement: node labels, taints, priority classes ------------------------------------------------


def label_key_problem(key: str) -> str | None:
    """Why ``key`` is not a Kubernetes label key (``[prefix/]name``: an optional DNS subdomain of at most
    253 characters, then a name of at most 63 letters, digits, '-', '_' and '.'), or ``None``."""
    if not key:
        return "the key is empty"
    prefix, slash, name = key.rpartition("/")
    if slash:
        if not prefix:
            return f"the prefix of key {key[:80]!r} (before '/') is empty"
        if "/" in prefix:
            return f"key {key[:80]!r} has more than one '/'"
        if len(prefix) > MAX_SUBDOMAIN or not _DNS1123_SUBDOMAIN.fullmatch(prefix):
            return (f"the prefix {prefix[:80]!r} of the key is not a DNS subdomain (lowercase letters, digits, "
                    f"'-' and '.', at most {MAX_SUBDOMAIN} characters)")
    if not name:
        return f"the name of key {key[:80]!r} (after '/') is empty"
    if len(name) > MAX_NAME:
        return f"the name {name[:80]!r} of the key is longer than {MAX_NAME} characters"
    if not _LABEL_NAME.fullmatch(name):
        return (f"the name {name!r} of the key must be letters, digits, '-', '_' and '.', starting and ending "
                "with a letter or digit")
    return None


def label_value_problem(value: str) -> str | None:
    """Why ``value`` is not a Kubernetes label value (empty, or at most 63 letters, digits, '-', '_' and
    '.', starting and ending with a letter or digit), or ``None``."""
    if len(value) > MAX_NAME:
        return f"the value {value[:80]!r} is longer than {MAX_NAME} characters"
    if value and not _LABEL_NAME.fullmatch(value):
        return (f"the value {value!r} must be empty or letters, digits, '-', '_' and '.', starting and ending "
                "with a letter or digit")
    return None


@dataclass(frozen=True, slots=True)
class Toleration:
    """A toleration of the app pod (``--toleration KEY[=VALUE]:EFFECT``). ``value=None`` is the ``KEY:EFFECT``
    form: it tolerates the taint whatever its value (operator ``Exists``); otherwise operator ``Equal``."""

    key: str
    effect: str
    value: str | None = None

    @property
    def operator(self) -> str:
        """``Exists`` without a value, else ``Equal``."""
        return "Exists" if self.value is None else "Equal"

    def __str__(self) -> str:
        """As written on the command line: ``KEY=VALUE:EFFECT`` or ``KEY:EFFECT``."""
        return f"{self.key}{'' if self.value is None else '=' + self.value}:{self.effect}"


def parse_node_selector(text: str) -> tuple[str, str]:
    """``KEY=VALUE`` (``--node-selector``) as a pair; the pair is validated by :class:`ProjectSpec`."""
    key, eq, value = text.partition("=")
    if not eq:
        raise SpecError(f"--node-selector {text[:80]!r}: expected KEY=VALUE, a node label "
                        "(e.g. kubernetes.azure.com/scalesetpriority=spot)")
    return key, value


def parse_toleration(text: str) -> Toleration:
    """``KEY=VALUE:EFFECT`` or ``KEY:EFFECT`` (``--toleration``) as a :class:`Toleration`; validated by
    :class:`ProjectSpec`."""
    head, colon, effect = text.rpartition(":")
    if not colon:
        raise SpecError(f"--toleration {text[:80]!r}: expected KEY=VALUE:EFFECT or KEY:EFFECT "
                        "(e.g. kubernetes.azure.com/scalesetpriority=spot:NoSchedule)")
    key, eq, value = head.partition("=")
    return Toleration(key=key, effect=effect, value=value if eq else None)


# --- the spec ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Resources:
    """Requests and limits of the app container (Kubernetes quantity strings)."""

    cpu_request: str = "250m"
    cpu_limit: str = "1"
    memory_request: str = "256Mi"
    memory_limit: str = "1Gi"
    ephemeral_storage_request: str = "64Mi"
    ephemeral_storage_limit: str = "1Gi"
    #: Size of the writable ``/tmp`` (an emptyDir; counts against ephemeral storage).
    tmp_size: str = "256Mi"

    def pairs(self) -> tuple[tuple[str, str, str], ...]:
        """``(resource, request, limit)`` for cpu, memory and ephemeral-storage."""
        return (("cpu", self.cpu_request, self.cpu_limit),
                ("memory", self.memory_request, self.memory_limit),
                ("ephemeral-storage", self.ephemeral_storage_request, self.ephemeral_storage_limit))

    def validate(self) -> None:
        """Every quantity parses and is positive; requests do not exceed limits."""
        for resource, request, limit in self.pairs():
            req = parse_quantity(request, f"--{resource}-request")
            lim = parse_quantity(limit, f"--{resource}-limit")
            if req <= 0 or lim <= 0:
                raise SpecError(f"{resource}: request and limit must be positive")
            if req > lim:
                raise SpecError(f"--{resource}-request {request} is above its limit --{resource}-limit {limit}")
        tmp = parse_quantity(self.tmp_size, "--tmp-size")
        if tmp <= 0:
            raise SpecError("--tmp-size must be positive")
        if tmp > parse_quantity(self.ephemeral_storage_limit):
            raise SpecError(f"--tmp-size {self.tmp_size} is above the ephemeral-storage limit "
                            f"{self.ephemeral_storage_limit}")


@dataclass(frozen=True, slots=True)
class Quota:
    """ResourceQuota sizes. ``None`` means :data:`ROLLOUT_PODS` times the container's value."""

    pods: int = 4
    requests_cpu: str | None = None
    limits_cpu: str | None = None
    requests_memory: str | None = None
    limits_memory: str | None = None
    requests_ephemeral_storage: str | None = None
    limits_ephemeral_storage: str | None = None
    #: Count limit for configmaps, secrets, services, deployments and statefulsets each.
    objects: int = 20
    #: Ingresses the project may create. 0 by default: on a cluster with an ingress controller, a
    #: project's own Ingress could claim another project's hostname and bypass the gateway.
    ingresses: int = 0


@dataclass(frozen=True, slots=True)
class Storage:
    """A PersistentVolumeClaim mounted at ``path``; survives sleep (scale to zero)."""

    size: str
    path: str
    storage_class: str | None = None


@dataclass(frozen=True, slots=True)
class ProjectSpec:
    """Everything that defines a project's objects. Validated on construction."""

    name: str
    image: str
    port: int = C.DEFAULT_CONTAINER_PORT
    #: Non-secret environment (ConfigMap) and secret environment (Secret), in file order.
    config: tuple[tuple[str, str], ...] = ()
    secret: tuple[tuple[str, str], ...] = ()
    #: Config keys whose secret-sounding names the operator vouches for (``--allow-key``).
    allow_keys: tuple[str, ...] = ()
    #: A ConfigMap and a Secret of the project's namespace whose keys become the app's environment
    #: (a ``Project``'s ``spec.env``): referenced, never copied. One source per kind: a reference or
    #: inline ``config``/``secret``.
    env_config_map: str | None = None
    env_secret: str | None = None
    #: How the gateway runs the project: one of :data:`gateway.contract.MODES`.
    mode: str = "Auto"
    resources: Resources = field(default_factory=Resources)
    quota: Quota = field(default_factory=Quota)
    run_as_user: int = 1000
    run_as_group: int = 1000
    #: ``None``: same as ``run_as_group``.
    fs_group: int | None = None
    #: HTTP readiness probe path; ``None`` probes the TCP port.
    readiness_path: str | None = None
    idle_timeout_s: float | None = None
    hold_timeout_s: float | None = None
    strategy: str | None = None
    gateway_namespace: str = C.DEFAULT_GATEWAY_NAMESPACE
    namespace_prefix: str = C.DEFAULT_NAMESPACE_PREFIX
    #: Egress to the internet (never to private ranges, link-local or Azure's host addresses).
    allow_internet: bool = False
    storage: Storage | None = None
    runtime_class: str | None = None
    workload_identity_client_id: str | None = None
    pod_security_version: str = DEFAULT_POD_SECURITY_VERSION
    #: Node labels the app pod requires (``--node-selector``), ``(key, value)`` pairs, one per key.
    node_selector: tuple[tuple[str, str], ...] = ()
    #: Taints the app pod tolerates (``--toleration``).
    tolerations: tuple[Toleration, ...] = ()
    #: PriorityClass of the app pod (``--priority-class``); never a ``system-`` one.
    priority_class: str | None = None

    def __post_init__(self) -> None:
        self.validate()

    @property
    def namespace(self) -> str:
        """``<namespace_prefix><name>``."""
        return C.namespace_for(self.name, self.namespace_prefix)

    @property
    def effective_fs_group(self) -> int:
        """``fs_group``, defaulting to ``run_as_group``."""
        return self.run_as_group if self.fs_group is None else self.fs_group

    def quota_hard(self) -> dict[str, str]:
        """The ResourceQuota's ``spec.hard``: explicit sizes, or derived from the container's resources."""
        q, r = self.quota, self.resources
        derived = {
            "requests.cpu": (q.requests_cpu, r.cpu_request),
            "limits.cpu": (q.limits_cpu, r.cpu_limit),
            "requests.memory": (q.requests_memory, r.memory_request),
            "limits.memory": (q.limits_memory, r.memory_limit),
            "requests.ephemeral-storage": (q.requests_ephemeral_storage, r.ephemeral_storage_request),
            "limits.ephemeral-storage": (q.limits_ephemeral_storage, r.ephemeral_storage_limit),
        }
        hard = {key: given if given is not None else format_quantity(ROLLOUT_PODS * parse_quantity(per_pod))
                for key, (given, per_pod) in derived.items()}
        hard["pods"] = str(q.pods)
        hard["services.loadbalancers"] = "0"
        hard["services.nodeports"] = "0"
        hard["persistentvolumeclaims"] = "1" if self.storage else "0"
        hard["requests.storage"] = self.storage.size if self.storage else "0"
        for counted in ("configmaps", "secrets", "services", "count/deployments.apps", "count/statefulsets.apps"):
            hard[counted] = str(q.objects)
        hard["count/ingresses.networking.k8s.io"] = str(q.ingresses)
        return hard

    # --- validation ----------------------------------------------------------------------------------

    def validate(self) -> None:
        """Raise :class:`SpecError` for the first problem found."""
        if not _DNS1123_LABEL.fullmatch(self.gateway_namespace) or len(self.gateway_namespace) > MAX_NAME:
            raise SpecError(f"--gateway-namespace {self.gateway_namespace!r} is not a valid namespace name")
        validate_project_name(self.name, self.namespace_prefix, self.gateway_namespace)
        if not self.image or len(self.image) > 512 or not _IMAGE.fullmatch(self.image):
            raise SpecError(f"--image {self.image[:80]!r} is not a valid image reference")
        _check_int("--port", self.port, 1, 65535)
        _check_int("--run-as-user", self.run_as_user, 1, 2**31 - 1, "(the restricted Pod Security profile "
                   "forbids root)")
        _check_int("--run-as-group", self.run_as_group, 0, 2**31 - 1)
        if self.fs_group is not None:
            _check_int("--fs-group", self.fs_group, 0, 2**31 - 1)
        if self.readiness_path is not None and not re.fullmatch(r"/[!-~]{0,2047}", self.readiness_path):
            raise SpecError(f"--readiness-path {self.readiness_path[:80]!r} must start with '/' and contain no "
                            "spaces or control characters")
        for flag, value, check in (("--idle-timeout", self.idle_timeout_s, C.positive_seconds),
                                   ("--hold-timeout", self.hold_timeout_s, C.positive_seconds),
                                   ("--strategy", self.strategy, C.strategy)):
            if value is not None:
                try:
                    check(value)
                except ValueError as exc:
                    raise SpecError(f"{flag}: {exc}") from None
        if not _PSA_VERSION.fullmatch(self.pod_security_version):
            raise SpecError(f"--pod-security-version {self.pod_security_version!r} must be 'latest' or like 'v1.33'")
        self.resources.validate()
        self._validate_quota()
        self._validate_env()
        self._validate_env_refs()
        try:
            C.mode(self.mode)
        except ValueError as exc:
            raise SpecError(f"--mode: {exc}") from None
        if self.storage is not None:
            self._validate_storage(self.storage)
        if self.runtime_class is not None and not _DNS1123_SUBDOMAIN.fullmatch(self.runtime_class):
            raise SpecError(f"--runtime-class {self.runtime_class!r} is not a valid RuntimeClass name")
        if self.workload_identity_client_id is not None:
            try:
                uuid.UUID(self.workload_identity_client_id)
            except ValueError:
                raise SpecError(f"--workload-identity-client-id {self.workload_identity_client_id[:80]!r} "
                                "is not a client ID (a UUID)") from None
        self._validate_placement()

    def _validate_quota(self) -> None:
        q = self.quota
        _check_int("--quota-pods", q.pods, ROLLOUT_PODS, 10_000, f"(a rolling update needs {ROLLOUT_PODS})")
        _check_int("--quota-objects", q.objects, 2, 100_000,
                   "(a project has two Secrets, and two ConfigMaps counting kube-root-ca.crt)")
        # Explicit sizes must fit a rolling update: ROLLOUT_PODS times the container's value.
        hard = self.quota_hard()
        for resource, request, limit in self.resources.pairs():
            for kind, per_pod in (("requests", request), ("limits", limit)):
                key = f"{kind}.{resource}"
                flag = f"--quota-{kind}-{resource}"
                size = parse_quantity(hard[key], flag)
                needed = ROLLOUT_PODS * parse_quantity(per_pod)
                if size < needed:
                    raise SpecError(f"{flag} {hard[key]} is too small: a rolling update needs {ROLLOUT_PODS} x "
                                    f"{per_pod} = {format_quantity(needed)}")

    def _validate_env(self) -> None:
        total = 0
        for what, pairs in (("config", self.config), ("secret", self.secret)):
            seen: set[str] = set()
            for key, value in pairs:
                problem = env_key_problem(key)
                if problem:
                    raise SpecError(f"{what} environment: {problem}")
                if key in seen:
                    raise SpecError(f"{what} environment: duplicate key {key}")
                seen.add(key)
                if "\x00" in value:
                    raise SpecError(f"{what} environment: {key}: value contains a NUL byte")
                if what == "config":
                    reason = secret_reason(key, value, self.allow_keys)
                    if reason:
                        raise SpecError(f"config environment: {key} looks like a secret ({reason}); {SECRET_ADVICE}")
                total += len(key.encode()) + len(value.encode())
        both = sorted({k for k, _ in self.config} & {k for k, _ in self.secret})
        if both:
            raise SpecError(f"key {both[0]} is set in both --env-file and --secret-env-file; keep it in one")
        if total > MAX_FILE_BYTES:
            raise SpecError(f"environment is {total} bytes, over the 1 MiB a ConfigMap or Secret can hold")

    def _validate_env_refs(self) -> None:
        for flag, ref, inline in (("--env-configmap", self.env_config_map, self.config),
                                  ("--env-secret", self.env_secret, self.secret)):
            if ref is None:
                continue
            if not isinstance(ref, str) or len(ref) > MAX_SUBDOMAIN or not _DNS1123_SUBDOMAIN.fullmatch(ref):
                raise SpecError(f"{flag} {str(ref)[:80]!r} is not a valid object name (a DNS subdomain)")
            if inline:
                kind = "ConfigMap" if flag == "--env-configmap" else "Secret"
                raise SpecError(f"{flag} {ref} and inline values both give the {kind} environment; use one")

    def _validate_storage(self, storage: Storage) -> None:
        size = parse_quantity(storage.size, "--storage")
        if size <= 0:
            raise SpecError("--storage must be positive")
        path = storage.path
        if not path.startswith("/") or any(p in ("..", ".") for p in path.split("/")) or ":" in path:
            raise SpecError(f"--storage-path {path!r} must be an absolute path without '.', '..' or ':'")
        norm = str(PurePosixPath(path))
        if norm == "/" or any(norm == m or norm.startswith(m + "/") or m.startswith(norm + "/")
                              for m in _FORBIDDEN_MOUNTS):
            raise SpecError(f"--storage-path {path!r} would hide a system directory or /tmp")
        if storage.storage_class is not None and not _DNS1123_SUBDOMAIN.fullmatch(storage.storage_class):
            raise SpecError(f"--storage-class {storage.storage_class!r} is not a valid StorageClass name")

    def _validate_placement(self) -> None:
        self._validate_node_selector()
        self._validate_tolerations()
        if self.priority_class is not None:
            self._validate_priority_class(self.priority_class)

    def _validate_node_selector(self) -> None:
        selected: dict[str, str] = {}
        for pair in self.node_selector:
            if not (isinstance(pair, tuple) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
                raise SpecError(f"--node-selector {pair!r:.80}: expected a (key, value) pair of strings")
            key, value = pair
            shown = f"--node-selector {f'{key}={value}'[:80]!r}"
            problem = label_key_problem(key) or label_value_problem(value)
            if problem:
                raise SpecError(f"{shown}: {problem}")
            if key in selected:
                if selected[key] == value:
                    raise SpecError(f"{shown} is given twice")
                raise SpecError(f"{shown} conflicts with --node-selector {key}={selected[key]} "
                                "(a node label has one value)")
            selected[key] = value

    def _validate_tolerations(self) -> None:
        earlier: list[Toleration] = []
        for tol in self.tolerations:
            if not isinstance(tol, Toleration):
                raise SpecError(f"--toleration {tol!r:.80}: expected a Toleration")
            shown = f"--toleration {str(tol)[:80]!r}"
            if not tol.key:
                raise SpecError(f"{shown}: KEY is empty (a toleration without a key would tolerate every taint)")
            if tol.effect not in TAINT_EFFECTS:
                raise SpecError(f"{shown}: the effect {tol.effect[:40]!r} is not one of {', '.join(TAINT_EFFECTS)}")
            problem = label_key_problem(tol.key) or (None if tol.value is None else label_value_problem(tol.value))
            if problem:
                raise SpecError(f"{shown}: {problem}")
            if tol.key in RESERVED_TOLERATION_KEYS:
                raise SpecError(f"{shown}: the taint {tol.key} keeps ordinary pods off control-plane and system "
                                "nodes; a project's pods must not tolerate it")
            for other in earlier:
                if other == tol:
                    raise SpecError(f"{shown} is given twice")
                if (other.key, other.effect) == (tol.key, tol.effect) and None in (other.value, tol.value):
                    raise SpecError(f"{shown} overlaps --toleration {other} ({tol.key}:{tol.effect} already "
                                    "tolerates every value; give one or the other)")
            earlier.append(tol)

    def _validate_priority_class(self, name: str) -> None:
        if not isinstance(name, str) or len(name) > MAX_SUBDOMAIN or not _DNS1123_SUBDOMAIN.fullmatch(name):
            shown = repr(name[:80]) if isinstance(name, str) else repr(name)[:80]
            raise SpecError(f"--priority-class {shown} is not a valid PriorityClass name (a DNS subdomain: "
                            f"lowercase letters, digits, '-' and '.', at most {MAX_SUBDOMAIN} characters)")
        if name.startswith(_SYSTEM_PRIORITY_PREFIX):
            raise SpecError(f"--priority-class {name!r}: the system- classes (system-node-critical, "
                            "system-cluster-critical) are for the cluster's critical pods; a project's untrusted "
                            "pods must not take them")


def _check_int(flag: str, value: int, low: int, high: int, why: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise SpecError(f"{flag} {value!r} is outside {low}-{high}{' ' + why if why else ''}")
