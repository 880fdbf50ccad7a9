"""Gateway settings: one frozen dataclass, loaded from CLI flags with ``WAKEGATE_*`` env fallbacks.

Every option is declared once in :data:`OPTIONS`; the flag ``--idle-timeout`` is also read from
``WAKEGATE_IDLE_TIMEOUT``. A flag given on the command line wins over the environment.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from gateway.contract import (
    DEFAULT_DOMAIN,
    DEFAULT_GATEWAY_NAMESPACE,
    STRATEGIES,
    dns_name,
    parse_duration,
    parse_positive,
    strategy,
)

BACKENDS = ("local", "kubernetes")
LOG_FORMATS = ("json", "text")
DEFAULT_IGNORE_USER_AGENTS: tuple[str, ...] = (
    r"^kube-probe/",
    r"ELB-HealthChecker",
    r"GoogleHC/",
    r"Azure Traffic Manager Endpoint Monitor",
    r"UptimeRobot",
    r"Pingdom",
    r"StatusCake",
    r"Uptime-Kuma",
    r"Better (Uptime|Stack) Bot",
)


T = TypeVar("T")


class ConfigError(ValueError):
    """A setting is invalid; the message names the flag or variable and the problem."""


@dataclass(frozen=True, slots=True)
class HostPort:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything ``wakegate serve`` can be told. Units are in the names."""

    backend: str = "local"
    projects_file: Path | None = None
    domain: str = DEFAULT_DOMAIN
    listen: HostPort = HostPort("0.0.0.0", 8080)
    # None: port 9090 on every interface when admin_token_file is set, else on loopback only (the
    # admin API can wake and sleep projects). Read it through admin_address. An explicit
    # non-loopback address without a token is refused by validate().
    admin_listen: HostPort | None = None
    idle_timeout_s: float = 300.0
    hold_timeout_s: float = 120.0
    max_held_per_project: int = 1000
    max_held_total: int = 10000
    reap_interval_s: float = 5.0
    route_header: str | None = None
    unknown_cache_size: int = 10000
    unknown_cache_ttl_s: float = 10.0
    public_url: str = "https://{project}.{domain}/"
    admin_token_file: Path | None = None
    drain_timeout_s: float = 30.0
    log_format: str = "json"
    access_log: bool = False
    # Identity fields (X-Forwarded-*, Forwarded, X-Real-IP) from a peer are kept (and appended to)
    # only when the peer is trusted: any peer with trust_forwarded, else a peer inside one of the
    # trusted_proxies networks (the ingress controller's addresses). Otherwise they are replaced.
    trust_forwarded: bool = False
    trusted_proxies: tuple[str, ...] = ()
    # Wakes that public (unauthenticated) requests may start, per minute: in all, and per client
    # address. Past either, the request is answered 429 with Retry-After (admin activations are not
    # limited).
    wake_rate_per_min: float = 600.0
    wake_rate_per_client_per_min: float = 60.0
    default_strategy: str = "auto"
    ignore_paths: tuple[str, ...] = ()
    ignore_user_agents: tuple[str, ...] = DEFAULT_IGNORE_USER_AGENTS
    upstream_connect_timeout_s: float = 5.0
    # Public connections: an idle keep-alive connection is closed after this long; a request head
    # still incomplete after this long gets a 408. Both are checked once a second.
    client_keepalive_timeout_s: float = 75.0
    client_header_timeout_s: float = 30.0
    # A request body that sends nothing for this long gets a 408 (nginx's client_body_timeout).
    client_body_timeout_s: float = 60.0
    stop_grace_s: float = 10.0
    # Kubernetes backend
    kubeconfig: Path | None = None
    context: str | None = None
    namespace_selector: str | None = None
    gateway_namespace: str = DEFAULT_GATEWAY_NAMESPACE
    # Activity exchange between replicas: the reaper Lease holder pulls each replica's activity
    # from its admin port, finding them in this Service's EndpointSlices (gateway namespace).
    activity_pull_interval_s: float = 5.0
    peer_service: str = "wakegate"
    replica_id: str | None = None  # default: $POD_NAME, else <hostname>-<pid>
    leader_lease_s: float = 15.0

    @property
    def admin_address(self) -> HostPort:
        """Where the admin API listens: ``--admin-listen`` if given, else ``0.0.0.0:9090`` with
        ``--admin-token-file`` (probes and Prometheus reach it from outside the pod) and
        ``127.0.0.1:9090`` without (an unauthenticated admin API is never on every interface)."""
        if self.admin_listen is not None:
            return self.admin_listen
        return HostPort("0.0.0.0" if self.admin_token_file is not None else "127.0.0.1", 9090)

    def url_for(self, project: str) -> str:
        """The public URL of a project, as handed to the platform backend."""
        return self.public_url.format(project=project, domain=self.domain)


# --- parsing helpers -----------------------------------------------------------------------------


def parse_host_port(text: str) -> HostPort:
    """``HOST:PORT``, ``[v6]:PORT`` or ``:PORT`` (all interfaces)."""
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d+)|([^:\[\]]*):(\d+)", text.strip())
    if not m:
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    host = m.group(1) or m.group(3) or "0.0.0.0"
    port = int(m.group(2) or m.group(4))
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} is outside 0-65535")
    return HostPort(host, port)


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise ValueError(f"expected a positive whole number, got {text!r}")
    return value


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {text!r}")
        return text

    return parse


def _csv(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _regex_list(text: str) -> tuple[str, ...]:
    parts = _csv(text)
    for part in parts:
        try:
            re.compile(part)
        except re.error as exc:
            raise ValueError(f"invalid pattern {part!r}: {exc}") from exc
    return parts


def _header_name(text: str) -> str:
    if not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", text):
        raise ValueError(f"{text!r} is not a valid header name")
    return text.lower()


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def _networks(text: str) -> tuple[str, ...]:
    parts = _csv(text)
    for part in parts:
        try:
            ipaddress.ip_network(part, strict=False)
        except ValueError as exc:
            raise ValueError(f"{part!r} is not an address or CIDR network: {exc}") from None
    return parts


def _positive_rate(text: str) -> float:
    return parse_positive(text, "per minute")


def _public_url(text: str) -> str:
    if "{project}" not in text:
        raise ValueError("the template must contain {project}")
    return text


@dataclass(frozen=True)
class Option:
    """One setting: its flag, how to parse it, and its help text."""

    field: str
    flag: str
    parse: Callable[[str], Any]
    help: str
    metavar: str | None = None
    choices: tuple[str, ...] | None = None  # shown in --help

    @property
    def env(self) -> str:
        return "WAKEGATE_" + self.flag.lstrip("-").upper().replace("-", "_")


OPTIONS: tuple[Option, ...] = (
    Option("backend", "--backend", _choice(*BACKENDS), "where projects run", choices=BACKENDS),
    Option("projects_file", "--projects", Path, "YAML projects file (local backend)", "FILE"),
    Option("domain", "--domain", str, "projects are served at <project>.<domain>"),
    Option("listen", "--listen", parse_host_port, "public listener", "HOST:PORT"),
    Option("admin_listen", "--admin-listen", parse_host_port,
           "admin API and /metrics (default 0.0.0.0:9090 with --admin-token-file, else 127.0.0.1:9090)",
           "HOST:PORT"),
    Option("idle_timeout_s", "--idle-timeout", parse_duration, "time without activity before sleep", "DURATION"),
    Option("hold_timeout_s", "--hold-timeout", parse_duration, "how long a request may wait for a wake", "DURATION"),
    Option("max_held_per_project", "--max-held-per-project", _positive_int, "held requests per project", "N"),
    Option("max_held_total", "--max-held-total", _positive_int, "held requests in all", "N"),
    Option("reap_interval_s", "--reap-interval", parse_duration, "time between idle checks", "DURATION"),
    Option("route_header", "--route-header", _header_name, "header that may name the project", "NAME"),
    Option("unknown_cache_size", "--unknown-cache-size", _positive_int, "remembered unknown names", "N"),
    Option("unknown_cache_ttl_s", "--unknown-cache-ttl", parse_duration, "how long to remember them", "DURATION"),
    Option("public_url", "--public-url", _public_url, "URL template, {project} and {domain}", "TEMPLATE"),
    Option("admin_token_file", "--admin-token-file", Path,
           "bearer token required by /api/ (without it the admin API listens on loopback only)", "FILE"),
    Option("drain_timeout_s", "--drain-timeout", parse_duration, "time to finish requests on SIGTERM", "DURATION"),
    Option("log_format", "--log-format", _choice(*LOG_FORMATS), "log line format", choices=LOG_FORMATS),
    Option("access_log", "--access-log", _bool, "log every request (off by default)", "BOOL"),
    Option("trust_forwarded", "--trust-forwarded", _bool,
           "trust identity fields (X-Forwarded-*, Forwarded, X-Real-IP) from every peer", "BOOL"),
    Option("trusted_proxies", "--trusted-proxies", _networks,
           "peers whose identity fields are trusted: addresses or CIDRs, comma-separated", "LIST"),
    Option("wake_rate_per_min", "--wake-rate", _positive_rate,
           "wakes per minute public requests may start in all (then 429)", "N"),
    Option("wake_rate_per_client_per_min", "--wake-rate-per-client", _positive_rate,
           "wakes per minute one client address may start (then 429)", "N"),
    Option("default_strategy", "--strategy", strategy, "cold browser requests: the waiting page or hold",
           choices=STRATEGIES),
    Option("ignore_paths", "--ignore-paths", _csv, "path prefixes that never wake (comma-separated)", "LIST"),
    Option("ignore_user_agents", "--ignore-user-agents", _regex_list, "User-Agent regexes that never wake",
           "LIST"),
    Option("upstream_connect_timeout_s", "--upstream-connect-timeout", parse_duration,
           "time to connect to a project", "DURATION"),
    Option("client_keepalive_timeout_s", "--client-keepalive-timeout", parse_duration,
           "how long an idle client keep-alive connection stays open", "DURATION"),
    Option("client_header_timeout_s", "--client-header-timeout", parse_duration,
           "time a client may take to send a request head (then 408)", "DURATION"),
    Option("client_body_timeout_s", "--client-body-timeout", parse_duration,
           "time a request body may send nothing (then 408)", "DURATION"),
    Option("stop_grace_s", "--stop-grace", parse_duration, "SIGTERM→SIGKILL grace (local backend)", "DURATION"),
    Option("kubeconfig", "--kubeconfig", Path, "kubeconfig (default: in-cluster config)", "FILE"),
    Option("context", "--context", str, "kubeconfig context"),
    Option("namespace_selector", "--namespace-selector", str, "label selector for project namespaces"),
    Option("gateway_namespace", "--gateway-namespace", str, "namespace of the gateway (Leases)"),
    Option("activity_pull_interval_s", "--activity-pull-interval", parse_duration,
           "time between the reaper's pulls of the other replicas' activity", "DURATION"),
    Option("peer_service", "--peer-service", str,
           "the gateway's Service, whose EndpointSlices list the replicas (port 'admin')", "NAME"),
    Option("replica_id", "--replica-id", str, "this gateway replica's name (default $POD_NAME or host-pid)"),
    Option("leader_lease_s", "--leader-lease", parse_duration, "how long the idle-reaper Lease lasts", "DURATION"),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add every option as a flag (see :func:`add_option_arguments`)."""
    add_option_arguments(parser, OPTIONS, Settings())


def add_option_arguments(parser: argparse.ArgumentParser, options: Sequence[Option], defaults: object) -> None:
    """Add each of ``options`` as a flag; defaults are resolved later so env and flags merge cleanly
    (the help shows each default taken from ``defaults``, the choices, and the variable)."""
    for opt in options:
        notes = [f"one of {', '.join(opt.choices)}"] if opt.choices else []
        shown = _shown_default(getattr(defaults, opt.field), opt.field)
        if shown:
            notes.append(f"default {shown}")
        notes.append(f"env {opt.env}")
        metavar = opt.metavar or ("|".join(opt.choices) if opt.choices else None)
        parser.add_argument(opt.flag, dest=opt.field, default=None, metavar=metavar,
                            help=f"{opt.help} ({'; '.join(notes)})".replace("%", "%%"))


def _shown_default(value: object, field: str) -> str:
    if value is None or value == ():
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    if isinstance(value, float) and field.endswith("_s"):
        return f"{value:g}s"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def load_settings(args: argparse.Namespace | Mapping[str, Any], environ: Mapping[str, str] | None = None,
                  base: Settings | None = None) -> Settings:
    """Build :class:`Settings` from parsed flags (strings), then the environment, then ``base``."""
    settings = load_options(OPTIONS, args, base or Settings(), environ)
    validate(settings)
    return settings


def load_options(options: Sequence[Option], args: argparse.Namespace | Mapping[str, Any], base: T,
                 environ: Mapping[str, str] | None = None) -> T:
    """``base`` (a frozen dataclass) with each of ``options`` given as a flag (a string), else by its
    ``WAKEGATE_*`` variable; a value that does not parse is a :class:`ConfigError` naming its source."""
    environ = os.environ if environ is None else environ
    values = vars(args) if isinstance(args, argparse.Namespace) else dict(args)
    changes: dict[str, Any] = {}
    for opt in options:
        raw, source = values.get(opt.field), opt.flag
        if raw is None and opt.env in environ:
            raw, source = environ[opt.env], opt.env
        if raw is None:
            continue
        if not isinstance(raw, str):
            changes[opt.field] = raw
            continue
        try:
            changes[opt.field] = opt.parse(raw)
        except ValueError as exc:
            raise ConfigError(f"{source}: {exc}") from None
    return dataclasses.replace(base, **changes)  # type: ignore[type-var]


def validate(settings: Settings) -> None:
    """Cross-field checks that single-option parsing cannot make."""
    if settings.backend == "local" and settings.projects_file is None:
        raise ConfigError("--projects: the local backend needs a projects file")
    if settings.max_held_per_project > settings.max_held_total:
        raise ConfigError("--max-held-per-project: larger than --max-held-total")
    try:
        dns_name(settings.domain)
    except ValueError as exc:
        raise ConfigError(f"--domain: {exc}") from None
    admin = settings.admin_listen
    if admin is not None and settings.admin_token_file is None:
        # Only a literal loopback address (or "localhost") keeps an unauthenticated admin API
        # private; any other address or host name might be reachable from elsewhere.
        try:
            loopback = admin.host.lower() == "localhost" or ipaddress.ip_address(admin.host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise ConfigError(
                f"--admin-listen: {admin} is not a loopback address and --admin-token-file is not set; "
                "the admin API (which can wake and sleep projects) would be open to anyone who can reach it: "
                "set --admin-token-file, or listen on 127.0.0.1")


def read_token(path: Path) -> bytes:
    """The admin bearer token from ``path`` (surrounding whitespace stripped). Raises ConfigError."""
    try:
        token = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"--admin-token-file: cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"--admin-token-file: {path} is not UTF-8 text") from None
    if not token:
        raise ConfigError(f"--admin-token-file: {path} is empty; put the bearer token in it")
    if any(c.isspace() for c in token):
        raise ConfigError(f"--admin-token-file: {path} holds more than one word; put only the token in it")
    return token.encode()


def option_names() -> Sequence[str]:
    """All flags, for documentation and tests."""
    return [opt.flag for opt in OPTIONS]
