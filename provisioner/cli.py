"""``wakegate project render|create|status|list|delete``.

:func:`add_project_commands` adds the sub-commands to the ``project`` group of the ``wakegate``
parser; each sets ``func`` to a callable ``(args) -> exit code``. Bad input is one line on stderr and
exit code 2, with nothing applied; API failures exit 1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from gateway import contract as C

from .apply import (
    ApplyReport,
    DeleteReport,
    Kube,
    apply_project_resource,
    connect,
    crd_installed,
    create_from_spec,
    delete_project,
    delete_project_resource,
    get_project_resource,
    list_projects,
    project_status,
)
from .envfile import load_env_file
from .errors import ProvisionError, SpecError
from .project_resource import to_resource
from .render import CHECKSUM_KEY_BYTES, env_objects, render, to_yaml
from .spec import (
    DEFAULT_POD_SECURITY_VERSION,
    ProjectSpec,
    Quota,
    Resources,
    Storage,
    parse_duration,
    parse_node_selector,
    parse_toleration,
    validate_project_name,
)

T = TypeVar("T")

Handler = Callable[[argparse.Namespace], int]


def _error(message: str) -> None:
    print(f"error: {' '.join(message.split())}", file=sys.stderr)


def _guard(func: Handler) -> Handler:
    """Turn :class:`SpecError` into exit 2 and :class:`ProvisionError` into its exit code, one line each."""
    def run(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except SpecError as exc:
            _error(str(exc))
            return 2
        except ProvisionError as exc:
            _error(str(exc))
            return exc.exit_code
        except KeyboardInterrupt:
            _error("interrupted; re-run the same command to finish")
            return 130
    run.__doc__ = func.__doc__
    return run


# --- argument groups ---------------------------------------------------------------------------------


def _add_naming(p: argparse.ArgumentParser) -> None:
    p.add_argument("--namespace-prefix", default=C.DEFAULT_NAMESPACE_PREFIX,
                   help=f"project namespace = PREFIX + NAME (default {C.DEFAULT_NAMESPACE_PREFIX!r})")
    p.add_argument("--gateway-namespace", default=C.DEFAULT_GATEWAY_NAMESPACE,
                   help=f"namespace of the gateway (default {C.DEFAULT_GATEWAY_NAMESPACE})")
    p.add_argument("--domain", default=C.DEFAULT_DOMAIN, help=f"projects are served at NAME.DOMAIN "
                                                              f"(default {C.DEFAULT_DOMAIN})")
    p.add_argument("--url-scheme", default="https", choices=("https", "http"), help="scheme of the printed URL")


def _add_cluster(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config, in-cluster)")
    p.add_argument("--context", help="kubeconfig context")
    p.add_argument("--timeout", default="120", metavar="DURATION",
                   help="how long to wait for the cluster (default 120s)")


def _add_spec(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", metavar="NAME", help="project name (a DNS-1035 label)")
    p.add_argument("--image", help="container image (required)")
    p.add_argument("--port", default=str(C.DEFAULT_CONTAINER_PORT),
                   help=f"container port (default {C.DEFAULT_CONTAINER_PORT})")
    p.add_argument("--env-file", help="non-secret KEY=value config (ConfigMap); secret-looking keys are refused")
    p.add_argument("--secret-env-file", help="secret KEY=value config (Secret)")
    p.add_argument("--allow-key", action="append", default=[], metavar="KEY",
                   help="a --env-file key that only sounds secret (e.g. SESSION_KEY_PREFIX); repeatable")
    p.add_argument("--env-configmap", metavar="NAME",
                   help="a ConfigMap in the project's namespace whose keys become the environment (instead of "
                        "--env-file)")
    p.add_argument("--env-secret", metavar="NAME",
                   help="a Secret in the project's namespace whose keys become the environment (instead of "
                        "--secret-env-file)")
    p.add_argument("--mode", default="Auto", choices=C.MODES,
                   help="Auto: woken by requests, asleep when idle; Running: kept up; Suspended: never woken "
                        "(default Auto)")
    r = Resources()
    res = p.add_argument_group("container resources")
    for resource, request, limit in r.pairs():
        res.add_argument(f"--{resource}-request", default=request, help=f"default {request}")
        res.add_argument(f"--{resource}-limit", default=limit, help=f"default {limit}")
    res.add_argument("--tmp-size", default=r.tmp_size, help=f"size of the writable /tmp (default {r.tmp_size})")
    q = p.add_argument_group("quota (defaults: enough for a rolling update, i.e. 2 x the container's values)")
    q.add_argument("--quota-pods", default=str(Quota().pods), help=f"default {Quota().pods}")
    q.add_argument("--quota-objects", default=str(Quota().objects),
                   help="max configmaps, secrets, services, deployments, statefulsets each "
                        f"(default {Quota().objects})")
    q.add_argument("--quota-ingresses", default=str(Quota().ingresses),
                   help="Ingresses the project may create (default 0: an Ingress of its own could claim "
                        "another project's hostname and bypass the gateway)")
    for kind in ("requests", "limits"):
        for resource in ("cpu", "memory", "ephemeral-storage"):
            q.add_argument(f"--quota-{kind}-{resource}", default=None, metavar="QUANTITY")
    sec = p.add_argument_group("security")
    sec.add_argument("--run-as-user", default="1000", help="numeric UID (default 1000)")
    sec.add_argument("--run-as-group", default="1000", help="numeric GID (default 1000)")
    sec.add_argument("--fs-group", default=None, help="volume group (default: --run-as-group)")
    sec.add_argument("--allow-internet", action="store_true",
                     help="allow egress to the internet (never to private ranges or cloud metadata)")
    sec.add_argument("--runtime-class", help="RuntimeClass, e.g. kata-vm-isolation (AKS Pod Sandboxing)")
    sec.add_argument("--workload-identity-client-id", help="Azure workload identity client ID for the app")
    sec.add_argument("--pod-security-version", default=DEFAULT_POD_SECURITY_VERSION,
                     help=f"Pod Security Standards version pinned on the namespace "
                          f"(default {DEFAULT_POD_SECURITY_VERSION})")
    gw = p.add_argument_group("gateway")
    gw.add_argument("--readiness-path", help="HTTP readiness probe path (default: TCP probe)")
    gw.add_argument("--idle-timeout", help="sleep after this long without requests (e.g. 900, 15m)")
    gw.add_argument("--hold-timeout", help="how long a request may wait for a wake (e.g. 120s)")
    gw.add_argument("--strategy", help="cold requests: auto, block or page")
    pl = p.add_argument_group("placement (which nodes run the app pod)")
    pl.add_argument("--node-selector", action="append", default=[], metavar="KEY=VALUE",
                    help="run only on nodes with this label (e.g. agentpool=agents); repeatable, all must match")
    pl.add_argument("--toleration", action="append", default=[], metavar="KEY[=VALUE]:EFFECT",
                    help="tolerate a node taint; EFFECT is NoSchedule, PreferNoSchedule or NoExecute; KEY:EFFECT "
                         "tolerates any value (e.g. AKS spot pools: "
                         "kubernetes.azure.com/scalesetpriority=spot:NoSchedule); repeatable")
    pl.add_argument("--priority-class", metavar="NAME",
                    help="PriorityClass of the app pod (must exist in the cluster; system-* classes are refused)")
    st = p.add_argument_group("storage")
    st.add_argument("--storage", metavar="SIZE", help="add a PersistentVolumeClaim of SIZE (e.g. 5Gi)")
    st.add_argument("--storage-path", help="where the volume is mounted (required with --storage)")
    st.add_argument("--storage-class", help="StorageClass of the volume (default: the cluster default)")


def _int(flag: str, text: str) -> int:
    try:
        return int(text, 10)
    except (TypeError, ValueError):
        raise SpecError(f"{flag} {text!r} is not an integer") from None


def spec_from_args(args: argparse.Namespace) -> tuple[ProjectSpec, list[str]]:
    """Build and validate the spec (reading the env files); returns it and warnings to show."""
    if not args.image:
        raise SpecError("--image is required")
    warnings: list[str] = []
    config: tuple[tuple[str, str], ...] = ()
    secret: tuple[tuple[str, str], ...] = ()
    if args.env_file:
        parsed = load_env_file(args.env_file, allowed=args.allow_key)
        config, warnings = parsed.items(), warnings + list(parsed.warnings)
    if args.secret_env_file:
        parsed = load_env_file(args.secret_env_file, secret=True)
        secret, warnings = parsed.items(), warnings + list(parsed.warnings)
    storage = None
    if args.storage or args.storage_path or args.storage_class:
        if not args.storage or not args.storage_path:
            raise SpecError("--storage SIZE and --storage-path PATH go together (--storage-class needs both)")
        storage = Storage(size=args.storage, path=args.storage_path, storage_class=args.storage_class)
    resources = Resources(
        cpu_request=args.cpu_request, cpu_limit=args.cpu_limit,
        memory_request=args.memory_request, memory_limit=args.memory_limit,
        ephemeral_storage_request=args.ephemeral_storage_request,
        ephemeral_storage_limit=args.ephemeral_storage_limit, tmp_size=args.tmp_size)
    quota = Quota(
        pods=_int("--quota-pods", args.quota_pods), objects=_int("--quota-objects", args.quota_objects),
        ingresses=_int("--quota-ingresses", args.quota_ingresses),
        requests_cpu=args.quota_requests_cpu, limits_cpu=args.quota_limits_cpu,
        requests_memory=args.quota_requests_memory, limits_memory=args.quota_limits_memory,
        requests_ephemeral_storage=args.quota_requests_ephemeral_storage,
        limits_ephemeral_storage=args.quota_limits_ephemeral_storage)
    spec = ProjectSpec(
        name=args.name, image=args.image, port=_int("--port", args.port), config=config, secret=secret,
        resources=resources, quota=quota,
        run_as_user=_int("--run-as-user", args.run_as_user), run_as_group=_int("--run-as-group", args.run_as_group),
        fs_group=None if args.fs_group is None else _int("--fs-group", args.fs_group),
        readiness_path=args.readiness_path,
        idle_timeout_s=None if args.idle_timeout is None else parse_duration(args.idle_timeout, "--idle-timeout"),
        hold_timeout_s=None if args.hold_timeout is None else parse_duration(args.hold_timeout, "--hold-timeout"),
        strategy=args.strategy, gateway_namespace=args.gateway_namespace, namespace_prefix=args.namespace_prefix,
        allow_internet=args.allow_internet, allow_keys=tuple(args.allow_key), storage=storage,
        env_config_map=args.env_configmap, env_secret=args.env_secret, mode=args.mode,
        runtime_class=args.runtime_class,
        workload_identity_client_id=args.workload_identity_client_id,
        pod_security_version=args.pod_security_version,
        node_selector=tuple(parse_node_selector(text) for text in args.node_selector),
        tolerations=tuple(parse_toleration(text) for text in args.toleration),
        priority_class=args.priority_class)
    return spec, warnings


def project_url(args: argparse.Namespace, name: str) -> str:
    """``<scheme>://<name>.<domain>/``."""
    try:
        domain = C.dns_name(args.domain)
    except ValueError as exc:
        raise SpecError(f"--domain: {exc}") from None
    return f"{args.url_scheme}://{name}.{domain}/"


def _checked_name(args: argparse.Namespace) -> str:
    validate_project_name(args.name, args.namespace_prefix, args.gateway_namespace)
    return str(args.name)


def _with_kube(args: argparse.Namespace, work: Callable[[Kube], Awaitable[T]]) -> T:
    async def main() -> T:
        api = await connect(args.kubeconfig, args.context)
        async with api:
            return await work(Kube(api))
    return asyncio.run(main())


def _warn(lines: list[str]) -> None:
    for line in lines:
        print(f"warning: {line}", file=sys.stderr)


# --- commands ----------------------------------------------------------------------------------------


def cmd_render(args: argparse.Namespace) -> int:
    """Print the project's manifests as multi-document YAML (no cluster needed)."""
    spec, warnings = spec_from_args(args)
    key = None
    if args.checksum_key_file:
        try:
            key = Path(args.checksum_key_file).read_bytes()
        except OSError as exc:
            raise SpecError(f"cannot read --checksum-key-file {args.checksum_key_file}: "
                            f"{exc.strerror or exc}") from None
        if len(key) < CHECKSUM_KEY_BYTES:
            raise SpecError(f"--checksum-key-file {args.checksum_key_file} holds {len(key)} bytes; "
                            f"a key needs at least {CHECKSUM_KEY_BYTES}")
    _warn(warnings)
    if args.as_project:
        if spec.config or spec.secret:
            raise SpecError("--as-project: a Project never holds environment values; create the ConfigMap and "
                            "Secret in its namespace and name them with --env-configmap and --env-secret")
        sys.stdout.write(to_yaml([to_resource(spec)]))
        return 0
    sys.stdout.write(to_yaml(render(spec, key)))
    return 0


def cmd_create(args: argparse.Namespace) -> int:
    """Write a Project when the cluster has the CRD (the controller applies it); else apply exactly
    what ``render`` prints. Idempotent; prints the URL."""
    spec, warnings = spec_from_args(args)
    url = project_url(args, spec.name)
    timeout_s = parse_duration(args.timeout, "--timeout")
    _warn(warnings)

    async def work(kube: Kube) -> ApplyReport | dict[str, Any]:
        if await crd_installed(kube):
            return await apply_project_resource(kube, to_resource(spec), env_objects(spec), dry_run=args.dry_run,
                                                wait_timeout_s=timeout_s)
        return await create_from_spec(kube, spec, dry_run=args.dry_run, wait_timeout_s=timeout_s)

    outcome = _with_kube(args, work)
    if isinstance(outcome, dict):
        status = outcome.get("status") or {}
        state = "dry run (nothing applied): the Project is valid" if args.dry_run else (
            f"Project applied; phase {status.get('phase')}")
        print(f"project {spec.name}: {state} (the controller manages namespace {spec.namespace})", file=sys.stderr)
        if not args.dry_run:
            print(status.get("url") or url)
        return 0
    report = outcome
    _warn(report.warnings)
    parts = [f"{len(report.created)} created", f"{len(report.configured)} configured",
             f"{len(report.unchanged)} unchanged"]
    if report.pruned:
        parts.append(f"{len(report.pruned)} pruned ({', '.join(report.pruned)})")
    prefix = "dry run (nothing applied): would be " if args.dry_run else ""
    print(f"project {spec.name} in namespace {spec.namespace}: {prefix}{', '.join(parts)}", file=sys.stderr)
    for verb, names in (("created", report.created), ("configured", report.configured)):
        for name in names:
            print(f"  {verb}: {name}", file=sys.stderr)
    if not args.dry_run:
        print(url)
    return 0


def _format_status(st: dict[str, Any]) -> str:
    r, e, s = st["replicas"], st["endpoints"], st["settings"]
    lines = [
        f"project        {st['project']}",
        *([f"phase          {st['resource']['phase']}"] if st.get("resource") else []),
        f"namespace      {st['namespace']} ({st['phase']})",
        f"url            {st['url']}",
        f"image          {st['image']}",
        f"replicas       wanted {r['wanted']}, ready {r['ready']}, available {r['available']}",
        f"endpoints      {e['ready']} ready, {e['notReady']} not ready",
        f"last activity  {st['lastActivity'] or 'unknown'}",
        f"idle timeout   {s['idleTimeoutS'] + 's' if s['idleTimeoutS'] else 'gateway default'}",
        f"hold timeout   {s['holdTimeoutS'] + 's' if s['holdTimeoutS'] else 'gateway default'}",
        f"strategy       {s['strategy'] or 'gateway default'}",
    ]
    if not st["deployment"]:
        lines.append("deployment     missing (re-run `wakegate project create`)")
    for cond in (st.get("resource") or {}).get("conditions") or []:
        if cond.get("type") == "Failed" and cond.get("status") == "True":
            lines.append(f"failed         {cond.get('reason')}: {cond.get('message')}")
    if st["quota"]:
        lines.append("quota          " + ", ".join(f"{k} {v['used']}/{v['hard']}" for k, v in st["quota"].items()))
    for vol in st["volumes"]:
        lines.append(f"volume         {vol['name']} {vol['size']} ({vol['phase']})")
    for pod in st["pods"]:
        state = "ready" if pod["ready"] else "not ready"
        extra = f" {', '.join(pod['reasons'])}" if pod["reasons"] else ""
        term = " terminating" if pod["terminating"] else ""
        lines.append(f"pod            {pod['name']} {pod['phase']} {state}{extra}{term} restarts={pod['restarts']}")
    return "\n".join(lines)


def cmd_status(args: argparse.Namespace) -> int:
    """Replicas wanted/ready, endpoint readiness, URL, last activity, quota usage."""
    name = _checked_name(args)
    url = project_url(args, name)
    namespace = C.namespace_for(name, args.namespace_prefix)
    async def work(kube: Kube) -> dict[str, Any]:
        resource = await get_project_resource(kube, name) if await crd_installed(kube) else None
        if resource is not None and not (resource.get("status") or {}).get("namespace"):
            status = resource.get("status") or {}
            raise ProvisionError(f"project {name}: {status.get('phase') or 'not yet acted on'}: "
                                 + "; ".join(f"{c.get('reason')}: {c.get('message')}"
                                             for c in status.get("conditions") or [] if c.get("status") == "False"
                                             and c.get("type") == "Provisioned"))
        st = await project_status(kube, name, namespace, url=url)
        if resource is not None:
            st["resource"] = {"phase": (resource.get("status") or {}).get("phase"),
                              "conditions": (resource.get("status") or {}).get("conditions") or []}
            st["url"] = (resource.get("status") or {}).get("url") or url
        return st

    st = _with_kube(args, work)
    print(json.dumps(st, indent=2) if args.output == "json" else _format_status(st))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    """Every managed project, one line each (or JSON)."""
    async def work(kube: Kube) -> list[dict[str, Any]]:
        found = await list_projects(kube)
        if await crd_installed(kube):
            resources = {r["metadata"]["name"]: r for r in await kube.list(C.PROJECT_KIND)}
            for p in found:
                status = (resources.pop(p["project"], None) or {}).get("status") or {}
                p["phase"] = status.get("phase") or p["phase"]
            found += [{"project": n, "namespace": (r.get("status") or {}).get("namespace") or "-",
                       "phase": (r.get("status") or {}).get("phase") or "Pending", "wanted": 0, "ready": 0,
                       "lastActivity": None} for n, r in resources.items()]
        return sorted(found, key=lambda p: str(p["project"]))

    projects = _with_kube(args, work)
    for p in projects:
        p["url"] = project_url(args, p["project"])
    if args.output == "json":
        print(json.dumps(projects, indent=2))
        return 0
    rows = [("PROJECT", "NAMESPACE", "PHASE", "WANTED", "READY", "LAST-ACTIVITY", "URL")]
    rows += [(p["project"], p["namespace"], p["phase"], str(p["wanted"]), str(p["ready"]),
              p["lastActivity"] or "-", p["url"]) for p in projects]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    """Delete the project's namespace and everything in it (volumes too, unless ``--keep-data``)."""
    name = _checked_name(args)
    namespace = C.namespace_for(name, args.namespace_prefix)
    timeout_s = parse_duration(args.timeout, "--timeout")
    async def work(kube: Kube) -> DeleteReport | None:
        if await crd_installed(kube) and await delete_project_resource(
                kube, name, keep_data=args.keep_data, wait=args.wait, timeout_s=timeout_s):
            return None
        return await delete_project(kube, name, namespace, wait=args.wait, keep_data=args.keep_data,
                                    timeout_s=timeout_s)

    report = _with_kube(args, work)
    if report is None:
        state = "deleted" if args.wait else "deletion started (the controller deletes the namespace first)"
        print(f"project {name}: Project {state}", file=sys.stderr)
        return 0
    if not report.existed:
        print(f"project {name}: namespace {namespace} does not exist (already deleted)", file=sys.stderr)
        return 0
    for volume in report.kept_volumes:
        print(f"kept PersistentVolume {volume} (reclaim policy Retain, label {C.PROJECT_LABEL}={name})",
              file=sys.stderr)
    state = "deleted" if report.gone else "deletion started"
    print(f"project {name}: namespace {namespace} {state}", file=sys.stderr)
    return 0


def add_project_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``render``, ``create``, ``status``, ``list`` and ``delete`` to the ``wakegate project`` group."""
    def add(name: str, handler: Handler, help_text: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = subparsers.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(func=_guard(handler))
        return p

    p = add("render", cmd_render, "print the project's manifests as multi-document YAML (no cluster needed; "
                                  "the same input prints the same YAML)")
    _add_spec(p)
    _add_naming(p)
    p.add_argument("--checksum-key-file", metavar="FILE",
                   help="a key of 32+ bytes (e.g. `head -c 32 /dev/urandom`): the pod template gets a config "
                        "checksum keyed with it, so pods restart when the env files change; without it there "
                        "is none (`create` keeps its own key in the cluster)")
    p.add_argument("--as-project", action="store_true",
                   help="print the Project (projects.wakegate.io) for these flags instead, for kubectl or GitOps")

    p = add("create", cmd_create, "create or update the project (server-side apply of what `render` prints)")
    _add_spec(p)
    _add_naming(p)
    _add_cluster(p)
    p.add_argument("--dry-run", action="store_true", help="server-side dry run of everything; applies nothing")

    p = add("status", cmd_status, "replicas, endpoints, URL, last activity and quota usage of a project")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--output", "-o", choices=("text", "json"), default="text")
    _add_naming(p)
    _add_cluster(p)

    p = add("list", cmd_list, "every project wakegate manages, one line each")
    p.add_argument("--output", "-o", choices=("text", "json"), default="text")
    _add_naming(p)
    _add_cluster(p)

    p = add("delete", cmd_delete, "delete the project's namespace and everything in it")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--wait", action="store_true", help="wait until the namespace is gone")
    p.add_argument("--keep-data", action="store_true",
                   help="keep the data volume (PersistentVolume reclaim policy Retain)")
    _add_naming(p)
    _add_cluster(p)


def build_parser(prog: str = "wakegate project") -> argparse.ArgumentParser:
    """A stand-alone parser with the project commands (``python -m provisioner``)."""
    parser = argparse.ArgumentParser(prog=prog, description="Manage wakegate projects on Kubernetes.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_project_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m provisioner``."""
    args = build_parser().parse_args(argv)
    handler: Handler = args.func
    return handler(args)
