"""The ``wakegate`` command: ``serve``, ``demo``, ``controller`` and ``project ...``.

Sub-commands set ``func`` (``args -> int``) with :meth:`argparse.ArgumentParser.set_defaults`;
:func:`main` calls it. Every gateway flag is declared in :data:`gateway.config.OPTIONS`.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import sys
from collections.abc import Callable, Sequence
from typing import Any

from gateway import __version__, config
from gateway.config import ConfigError, HostPort, Settings

DEMO_IDLE_TIMEOUT_S = 30.0

# Modules that add actions to ``wakegate project``: (module, what it provides). They are imported
# only for ``wakegate project ...`` (and help): provisioner.cli pulls in kubernetes_asyncio, which
# would add ~40 MB to the RSS of every ``wakegate serve``.
PROJECT_COMMAND_MODULES = (
    ("provisioner.cli", "render, create, status, list, delete"),
    ("gateway.admin_client", "activate, deactivate"),
)


class CommandError(Exception):
    """A sub-command failed; the message is printed as ``wakegate: <message>``."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


# The demo's URLs: plain HTTP on its own port (replaced by the real port when --listen moves it).
DEMO_PUBLIC_URL = "http://{project}.{domain}:8080/"


def demo_settings() -> Settings:
    """What ``wakegate demo`` starts from before flags and ``WAKEGATE_*`` variables apply."""
    from gateway.demo import PROJECTS_FILE

    return dataclasses.replace(
        Settings(),
        backend="local",
        projects_file=PROJECTS_FILE,
        domain="localhost",
        listen=HostPort("127.0.0.1", 8080),
        admin_listen=HostPort("127.0.0.1", 9090),
        idle_timeout_s=DEMO_IDLE_TIMEOUT_S,
        log_format="text",
        public_url=DEMO_PUBLIC_URL,
    )


# Sub-commands that never need the ``project`` actions.
_GATEWAY_COMMANDS = ("serve", "demo")


def build_parser(*, project_actions: bool = True) -> argparse.ArgumentParser:
    """The ``wakegate`` argument parser; with ``project_actions=False`` the ``project`` group gets
    no actions (its modules are not imported), for running ``serve`` or ``demo``."""
    parser = argparse.ArgumentParser(
        prog="wakegate",
        description="Scale-to-zero HTTP gateway: wakes a project on its first request, sleeps it when idle.",
    )
    parser.add_argument("--version", action="version", version=f"wakegate {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve", help="run the gateway",
        description="Run the gateway. Every flag can also be set with the WAKEGATE_* variable shown; "
        "a flag wins over the variable.",
    )
    config.add_arguments(serve)
    serve.set_defaults(func=cmd_serve)

    demo = commands.add_parser(
        "demo", help="run the gateway with the bundled demo projects (what `make run` starts)",
        description="Run the gateway on 127.0.0.1:8080 (admin 127.0.0.1:9090) with the demo projects hello, "
        "chat and slow under the domain localhost; projects sleep after 30 s idle. Flags override these.",
    )
    config.add_arguments(demo)
    demo.set_defaults(func=cmd_demo)

    controller = commands.add_parser(
        "controller", help="run the Project controller (projects.wakegate.io)",
        description="Reconcile every Project custom resource into its namespace and objects, and report its "
        "phase and URL in its status. One replica is active (a Lease); every flag can also be set with the "
        "WAKEGATE_* variable shown.",
    )
    if project_actions:
        try:
            from provisioner import controller as controller_module

            config.add_option_arguments(controller, controller_module.OPTIONS, controller_module.ControllerSettings())
        except ImportError as exc:  # pragma: no cover - a gateway-only installation
            controller.set_defaults(unavailable=str(exc))
    controller.set_defaults(func=cmd_controller)

    project = commands.add_parser("project", help="create, inspect, wake and sleep projects")
    actions = project.add_subparsers(dest="project_command", metavar="ACTION")
    unavailable: list[str] = []
    for module_name, provides in PROJECT_COMMAND_MODULES if project_actions else ():
        try:
            module = importlib.import_module(module_name)
            add: Callable[[Any], None] = module.add_project_commands
        except (ImportError, AttributeError) as exc:
            unavailable.append(f"{provides} ({module_name}: {exc})")
            continue
        add(actions)
    project.set_defaults(func=_project_missing_action(project, unavailable))
    return parser


def _project_missing_action(project: argparse.ArgumentParser, unavailable: list[str]) -> Callable[[Any], int]:
    def missing(args: argparse.Namespace) -> int:
        if unavailable:
            raise CommandError("project commands not available in this installation: " + "; ".join(unavailable))
        project.print_usage(sys.stderr)
        raise CommandError("project: choose an action", exit_code=2)

    return missing


def cmd_serve(args: argparse.Namespace) -> int:
    """``wakegate serve``: run until SIGTERM/SIGINT, then drain."""
    settings = config.load_settings(_option_values(args))
    _preflight(settings)
    _run(settings)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """``wakegate demo``: the gateway with the demo projects, plus what to try."""
    settings = config.load_settings(_option_values(args), base=demo_settings())
    if settings.public_url == DEMO_PUBLIC_URL:  # the admin API reports the URL the demo serves
        settings = dataclasses.replace(
            settings, public_url=f"http://{{project}}.{{domain}}:{settings.listen.port}/")
    _preflight(settings)
    _run(settings, ready_callback=_print_demo_help)
    return 0


def cmd_controller(args: argparse.Namespace) -> int:
    """``wakegate controller``: run until SIGTERM/SIGINT."""
    if getattr(args, "unavailable", None):
        raise CommandError(f"the controller is not available in this installation: {args.unavailable}")
    import asyncio

    from gateway import logs
    from provisioner import controller as ctl

    settings = config.load_options(ctl.OPTIONS, args, ctl.ControllerSettings())
    ctl.validate(settings)
    logs.configure(settings.log_format)
    asyncio.run(ctl.run(settings))
    return 0


def _option_values(args: argparse.Namespace) -> dict[str, Any]:
    return {opt.field: getattr(args, opt.field, None) for opt in config.OPTIONS}


def _preflight(settings: Settings) -> None:
    """Validate the projects file before anything starts, so its errors exit 2 at once."""
    if settings.backend == "local" and settings.projects_file is not None:
        from gateway.backends.local_projects import load_projects_file

        load_projects_file(settings.projects_file)


def _run(settings: Settings, ready_callback: Callable[[Any], None] | None = None) -> None:
    from gateway import service

    try:
        service.serve(settings, ready_callback=ready_callback)
    except service.StartupError as exc:
        raise CommandError(str(exc)) from None


def _print_demo_help(svc: Any) -> None:
    s: Settings = svc.settings
    host = "127.0.0.1" if s.listen.host in ("0.0.0.0", "::", "") else s.listen.host
    admin_host = "127.0.0.1" if s.admin_address.host in ("0.0.0.0", "::", "") else s.admin_address.host
    base = f"{s.domain}:{svc.port}"
    admin = f"http://{admin_host}:{svc.admin_port}"
    names = ", ".join(sorted(svc.lifecycle.projects)) or "none"
    tries = [
        (f"curl http://hello.{base}/", "plain HTTP (the first request waits for the wake)"),
        (f"curl -N http://chat.{base}/events", "server-sent events, one a second"),
        (f"http://chat.{base}/", "open in a browser: a page using SSE and a WebSocket echo"),
        (f"curl http://slow.{base}/", "boots in about 3 s; the request is held meanwhile"),
        (f"curl {admin}/api/v1/projects", "project states"),
        (f"curl {admin}/metrics", "Prometheus metrics"),
    ]
    width = max(len(cmd) for cmd, _ in tries) + 2
    lines = "\n".join(f"  {cmd:<{width}}{what}" for cmd, what in tries)
    print(
        f"""
wakegate demo is running: projects {names} under {s.domain}; gateway on {host}:{svc.port}, admin on {admin}.
Every project starts asleep: the first request wakes it, and it sleeps again after {s.idle_timeout_s:g}s
without traffic.

Try:
{lines}
If your curl does not resolve *.localhost: curl -H 'Host: hello.{s.domain}' http://{host}:{svc.port}/
Ctrl-C stops the gateway and its projects.
""",
        flush=True,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``wakegate`` console script. Returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(project_actions=not argv or argv[0] not in _GATEWAY_COMMANDS)
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int | None] = args.func
    try:
        return int(func(args) or 0)
    except ConfigError as exc:
        print(f"wakegate: {exc}", file=sys.stderr)
        return 2
    except CommandError as exc:
        print(f"wakegate: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
