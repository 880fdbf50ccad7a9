"""Assembly: backend + lifecycle + public listener + admin API, signals and drain.

:class:`Service` is the whole gateway as one object (tests run it in-process on port 0);
:func:`run` adds signal handling; :func:`serve` adds logging, the extension check and uvloop.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import importlib.machinery
import ipaddress
import logging
import signal
from collections.abc import Callable

import uvloop
from aiohttp import web

from gateway import logs, native
from gateway.admin import create_admin_app, mark_draining, start_admin
from gateway.backends.base import Backend, BackendError
from gateway.config import Settings
from gateway.lifecycle import Lifecycle
from gateway.metrics import Metrics
from gateway.routing import Router
from gateway.server import PublicServer


class StartupError(Exception):
    """The gateway cannot start (missing C extensions, port in use, backend unavailable)."""


#: The compiled modules the data path runs on: llhttp (through httptools) parses every request and
#: response head, and uvloop is the event loop. WebSocket frames pass through as bytes, and aiohttp
#: (the admin API, the activity pulls) may run on its pure-Python parser.
DATA_PATH_EXTENSIONS = ("httptools.parser.parser", "uvloop.loop")


def check_extensions() -> None:
    """Fail loudly unless every module of :data:`DATA_PATH_EXTENSIONS` is importable and compiled."""
    missing = []
    for module in DATA_PATH_EXTENSIONS:
        try:
            spec = importlib.import_module(module).__spec__
        except ImportError:
            missing.append(module)
            continue
        origin = (spec.origin if spec is not None else None) or ""
        if not origin.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES)):
            missing.append(f"{module} (not a compiled extension: {origin})")
    if missing:
        raise StartupError(
            "compiled extensions are missing: " + ", ".join(missing)
            + "; reinstall them from binary wheels (pip install --force-reinstall httptools uvloop)"
        )


def _is_loopback(host: str) -> bool:
    """Whether ``host`` is a literal loopback address (or ``localhost``): only there may the admin
    API listen without a token."""
    try:
        return host.lower() == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def make_backend(settings: Settings) -> Backend:
    """The backend ``settings.backend`` names (the Kubernetes one is imported only when asked for)."""
    if settings.backend == "local":
        from gateway.backends.local import LocalBackend

        return LocalBackend(settings)
    if settings.backend == "kubernetes":
        try:
            module = importlib.import_module("gateway.backends.kubernetes")
        except ImportError as exc:
            raise StartupError(f"--backend kubernetes: not available in this build ({exc})") from None
        backend: Backend = module.KubernetesBackend(settings)
        return backend
    raise StartupError(f"--backend: unknown backend {settings.backend!r}")


class Service:
    """The gateway: start it, read :attr:`port` / :attr:`admin_port`, stop it (drains first)."""

    def __init__(self, settings: Settings, backend: Backend | None = None) -> None:
        self.settings = settings
        self.backend = backend if backend is not None else make_backend(settings)
        self.metrics = Metrics()
        self.lifecycle = Lifecycle(self.backend, settings, observer=self.metrics)
        self.metrics.attach(self.lifecycle)
        self.router = Router(settings.domain)
        self.server = PublicServer(settings, self.lifecycle, self.router, observer=self.metrics)
        self.admin_app = create_admin_app(settings, self.lifecycle, self.metrics, self.backend)
        self._admin_runner: web.AppRunner | None = None
        self.admin_port: int | None = None
        self._started = False
        self._listening = False
        self._stopped = False

    @property
    def port(self) -> int | None:
        """The public listener's bound port."""
        port: int | None = self.server.port
        return port

    async def start(self) -> None:
        """Load the project table, then bind the public and admin listeners. Raises
        :class:`~gateway.config.ConfigError` (bad projects file) or :class:`StartupError`."""
        self._started = True
        try:
            await self.lifecycle.start()  # first: a bad projects file fails before anything is bound
        except BackendError as exc:  # e.g. no Kubernetes credentials: one line, not a traceback
            raise StartupError(f"--backend {self.settings.backend}: {exc}") from None
        try:
            try:
                self._listening = True
                await self.server.start()
            except OSError as exc:
                listen = self.settings.listen
                raise StartupError(f"--listen: cannot listen on {listen}: {exc.strerror or exc}") from None
            admin = self.settings.admin_address
            authenticated = self.settings.admin_token_file is not None
            if not authenticated and not _is_loopback(admin.host):
                # config.validate refuses this for flags; this also covers Settings built in code.
                raise StartupError(f"--admin-listen: {admin} is not a loopback address and "
                                   "--admin-token-file is not set; refusing to serve the admin API unauthenticated")
            try:
                self._admin_runner, self.admin_port = await start_admin(self.admin_app, admin)
            except OSError as exc:
                raise StartupError(f"--admin-listen: cannot listen on {admin}: {exc.strerror or exc}") from None
        except BaseException:
            await self.stop()
            raise
        logs.event("listening", listen=f"{self.settings.listen.host}:{self.port}",
                   admin_listen=f"{admin.host}:{self.admin_port}",
                   admin_auth="token" if authenticated else "none (loopback only)",
                   port=self.port, admin_port=self.admin_port, backend=self.settings.backend,
                   domain=self.settings.domain, projects=len(self.lifecycle.projects))

    async def stop(self) -> bool:
        """Stop accepting, report not-ready, drain in-flight requests (``--drain-timeout``), then
        close the admin API and the backend (the local backend stops its processes).
        Returns whether the drain finished in time."""
        if self._stopped or not self._started:
            return True
        self._stopped = True
        logs.event("draining", in_flight=self.server.in_flight, timeout_s=self.settings.drain_timeout_s)
        drained = True
        try:
            if self._listening:
                await self.server.stop_accepting()
            mark_draining(self.admin_app)  # /readyz answers 503 from here on
            self.lifecycle.draining = True  # no new wakes; requests that would hold get 503
            if self._listening:
                drained = await self.server.drain(self.settings.drain_timeout_s)
            if not drained:
                logs.event("drain_timeout", logging.WARNING, in_flight=self.server.in_flight)
        finally:
            if self._listening:
                self.server.close()
            if self._admin_runner is not None:
                await self._admin_runner.cleanup()
            await self.lifecycle.close()
        logs.event("stopped", drained=drained)
        return drained

    async def reload(self) -> None:
        """Re-read the backend's project table, when the backend supports it (SIGHUP)."""
        if not self.backend.supports_reload:
            logs.event("reload_unsupported", logging.WARNING, backend=self.settings.backend)
            return
        await self.backend.reload()


async def run(settings: Settings, *, ready_callback: Callable[[Service], None] | None = None) -> None:
    """Run the gateway until SIGTERM or SIGINT, then drain and stop. SIGHUP reloads projects."""
    loop = asyncio.get_running_loop()
    service = Service(settings)
    stop = asyncio.Event()
    tasks: set[asyncio.Task[None]] = set()

    def on_stop(signame: str) -> None:
        logs.event("signal", signal=signame)
        stop.set()

    def on_hup() -> None:
        task = loop.create_task(service.reload())
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_stop, sig.name)
    loop.add_signal_handler(signal.SIGHUP, on_hup)
    try:
        await service.start()
        if ready_callback is not None:
            ready_callback(service)
        await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        await service.stop()
        for task in tasks:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*tasks, return_exceptions=True)


def serve(settings: Settings, *, ready_callback: Callable[[Service], None] | None = None) -> None:
    """Configure logs, check the C extensions and run the gateway on uvloop until signalled."""
    logs.configure(settings.log_format)
    check_extensions()
    try:
        native.check()
    except native.NativeError as exc:
        raise StartupError(str(exc)) from exc
    compiled = native.compiled()
    logs.event("data_path", compiled=len(compiled), modules=len(native.NATIVE_MODULES),
               mode="compiled (mypyc)" if len(compiled) == len(native.NATIVE_MODULES) else
               "plain Python" if not compiled else "partly compiled")
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(run(settings, ready_callback=ready_callback))
