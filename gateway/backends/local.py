"""The embedded default backend: every project is a child process from a YAML projects file
(its format and parser: :mod:`gateway.backends.local_projects`).

A project is started with ``PORT=<free loopback port>`` in its environment and must listen on
``127.0.0.1:$PORT``. It runs in its own session, so scale-down ends the whole process group: SIGTERM,
then SIGKILL for whatever is left after ``--stop-grace`` seconds. A process that exits before it is
ready is a failed wake whose reason carries the last lines of its stderr. If the gateway dies
without stopping it (SIGKILL, OOM kill), the kernel sends the process SIGTERM (``PR_SET_PDEATHSIG``).

Memory: the table handed to the lifecycle is kept (not rebuilt on every process start or exit).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import errno
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable, Mapping
from types import MappingProxyType

from gateway import logs
from gateway.backends.base import Backend, BackendError, Endpoint, ProjectInfo
from gateway.backends.local_projects import LocalProject, ProjectsFileError, load_projects_file
from gateway.config import ConfigError, Settings
from gateway.tasks import Tasks

__all__ = ["LocalBackend", "LocalProject", "ProjectsFileError", "connect_probe", "free_port", "load_projects_file",
           "parent_death_signal", "probe"]

LOOPBACK = "127.0.0.1"
# Inherited from the gateway's environment; everything else a project needs goes in its ``env``.
PASSTHROUGH_ENV = (
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TZ", "TMPDIR",
    "PYTHONPATH", "VIRTUAL_ENV", "SSL_CERT_FILE", "SSL_CERT_DIR", "SYSTEMROOT",
)
STDERR_TAIL_LINES = 20
STDERR_TAIL_BYTES = 4096
MAX_LOG_LINE = 4096
# Readiness probing. Until the port accepts connections, a non-blocking loopback connect (a refused
# one costs ~20 µs) is tried every _CONNECT_PROBE_INTERVAL_S for _CONNECT_PROBE_FAST_S, then with a
# backoff up to _PROBE_MAX_DELAY_S. The interval also grows with the number of projects probing at
# once (_CONNECT_PROBE_SHARE_S each), which bounds the CPU spent on probes to a few per cent.
_CONNECT_PROBE_INTERVAL_S = 0.001
_CONNECT_PROBE_FAST_S = 5.0
_CONNECT_PROBE_SHARE_S = 0.0005
# HTTP probes (ready_path), once the port accepts connections: a backoff from the first delay.
_PROBE_FIRST_DELAY_S = 0.005
_PROBE_MAX_DELAY_S = 0.1
_PROBE_TIMEOUT_S = 2.0


# --- running processes ---------------------------------------------------------------------------


class _Child:
    """One running project process and the tasks watching it."""

    def __init__(self, project: LocalProject, proc: asyncio.subprocess.Process, port: int) -> None:
        self.project = project
        self.proc = proc
        self.port = port
        self.ready = False
        self.stopping = False
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
        self.readers: list[asyncio.Task[None]] = []
        self.supervisor: asyncio.Task[None] | None = None
        self.reprobe: asyncio.Task[None] | None = None

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint(LOOPBACK, self.port)

    def tail(self) -> str:
        text = "\n".join(self.stderr_tail)
        return text[-STDERR_TAIL_BYTES:] if len(text) > STDERR_TAIL_BYTES else text


class LocalBackend(Backend):
    """Projects as child processes on this machine (``--backend local``)."""

    def __init__(self, settings: Settings) -> None:
        if settings.projects_file is None:
            raise ConfigError("--projects: the local backend needs a projects file")
        self.settings = settings
        self.path = settings.projects_file
        self._table: dict[str, LocalProject] = {}
        self._infos: dict[str, ProjectInfo] = {}  # what projects() shows, kept up to date
        self._children: dict[str, _Child] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._probing = 0  # projects whose port is being probed
        self._preexec = parent_death_signal(signal.SIGTERM)
        self._loaded = False
        self._closed = False
        # Every process's output readers, supervisor and re-probe; they outlive the request that
        # started them, so each runs in a fresh context (its logs must not carry that request's id).
        self._tasks = Tasks()
        #: Processes spawned since start (tests and the admin API read it).
        self.spawn_count: collections.Counter[str] = collections.Counter()

    # --- Backend ---------------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the projects file (raises :class:`ProjectsFileError`)."""
        self._set_table(load_projects_file(self.path))
        self._loaded = True
        logs.event("projects_loaded", file=str(self.path), projects=len(self._table))
        if self.listener is not None:
            self.listener.projects_changed()

    @property
    def ready(self) -> bool:
        return self._loaded and not self._closed

    def projects(self) -> Mapping[str, ProjectInfo]:
        """A read-only view of the table (not a copy: read it before the next await)."""
        return MappingProxyType(self._infos)

    def _set_table(self, table: dict[str, LocalProject]) -> None:
        self._table = table
        self._infos = {name: self._info(proj) for name, proj in table.items()}

    def _info(self, proj: LocalProject) -> ProjectInfo:
        child = self._children.get(proj.name)
        location = f"pid {child.proc.pid}" if child is not None else ""
        return ProjectInfo(name=proj.name, settings=proj.settings, location=location)

    def project(self, name: str) -> LocalProject | None:
        """The projects-file entry of ``name``."""
        return self._table.get(name)

    def pid(self, name: str) -> int | None:
        """The process id of the running project, if any."""
        child = self._children.get(name)
        return child.proc.pid if child is not None else None

    async def scale_up(self, name: str) -> None:
        """Start the project's process unless it runs. Readiness is reported to the listener."""
        if self._closed:
            raise BackendError("the local backend is shut down")
        proj = self._table.get(name)
        if proj is None:
            raise BackendError(f"project {name} is not in {self.path}")
        async with self._lock(name):
            child = self._children.get(name)
            if child is not None and not child.stopping:
                if child.ready and (child.reprobe is None or child.reprobe.done()):
                    # Running and once ready, but the caller has no endpoint (e.g. the data path
                    # dropped it after a failed connect): report it again once it answers.
                    child.reprobe = self._tasks.spawn(self._reprobe(child), context=contextvars.Context())
                return
            await self._spawn(proj)

    async def scale_down(self, name: str, last_activity_wall_s: float | None = None) -> bool:
        """Stop the project's whole process group: SIGTERM, then SIGKILL after the grace period."""
        async with self._lock(name):
            child = self._children.get(name)
            if child is not None:
                await self._stop(child)
        if self.listener is not None:
            self.listener.endpoints_changed(name, [])
        return True

    async def close(self) -> None:
        """Stop every project process."""
        self._closed = True
        await asyncio.gather(*(self.scale_down(name) for name in list(self._children)), return_exceptions=True)
        await self._tasks.close()  # e.g. readers of pipes a process's escaped descendants still hold

    supports_reload = True

    async def reload(self) -> None:
        """Re-read the projects file (SIGHUP). An invalid file is logged and the old table kept;
        removed projects are stopped; changed commands apply from the next start."""
        try:
            table = load_projects_file(self.path)
        except ProjectsFileError as exc:
            logs.event("projects_reload_failed", logging.ERROR, file=str(self.path), error=str(exc))
            return
        removed = [name for name in self._table if name not in table]
        self._set_table(table)
        logs.event("projects_reloaded", file=str(self.path), projects=len(table), removed=len(removed))
        for name in removed:
            child = self._children.get(name)
            if child is not None:
                async with self._lock(name):
                    await self._stop(child)
        if self.listener is not None:
            self.listener.projects_changed()

    # --- processes -------------------------------------------------------------------------------

    def _lock(self, name: str) -> asyncio.Lock:
        lock = self._locks.get(name)
        if lock is None:
            lock = self._locks[name] = asyncio.Lock()
        return lock

    def _environment(self, proj: LocalProject, port: int) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k in PASSTHROUGH_ENV or k.startswith("LC_")}
        env.update(proj.env)
        env["PORT"] = str(port)
        return env

    async def _spawn(self, proj: LocalProject) -> None:
        port = free_port()
        try:
            proc = await asyncio.create_subprocess_exec(
                *proj.command,
                cwd=proj.cwd,
                env=self._environment(proj, port),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,  # own process group, so scale-down reaches grandchildren
                preexec_fn=self._preexec,
            )
        except OSError as exc:
            raise BackendError(
                f"project {proj.name}: cannot start {proj.command[0]!r} in {proj.cwd}: {exc.strerror or exc}"
            ) from None
        child = _Child(proj, proc, port)
        self._children[proj.name] = child
        self.spawn_count[proj.name] += 1
        logs.event("project_started", project=proj.name, pid=proc.pid, port=port)
        assert proc.stdout is not None and proc.stderr is not None
        child.readers = [
            self._tasks.spawn(self._read_output(child, stream, stream_name), context=contextvars.Context())
            for stream, stream_name in ((proc.stdout, "stdout"), (proc.stderr, "stderr"))
        ]
        child.supervisor = self._tasks.spawn(self._supervise(child), name=f"wakegate-local-{proj.name}",
                                             context=contextvars.Context())
        self._notify_table(proj.name)

    async def _read_output(self, child: _Child, stream: asyncio.StreamReader, name: str) -> None:
        """Forward the app's output lines to our log; keep a tail of stderr for failed wakes."""
        buf = b""
        while True:
            chunk = await stream.read(65536)
            if not chunk:
                break
            buf += chunk
            *lines, buf = buf.split(b"\n")
            if len(buf) > MAX_LOG_LINE:
                lines.append(buf)
                buf = b""
            for raw in lines:
                self._output_line(child, name, raw)
        if buf:
            self._output_line(child, name, buf)

    def _output_line(self, child: _Child, stream: str, raw: bytes) -> None:
        line = raw[:MAX_LOG_LINE].decode("utf-8", "replace").rstrip("\r")
        if stream == "stderr":
            child.stderr_tail.append(line)
        logs.event("project_output", project=child.project.name, stream=stream, line=line)

    async def _supervise(self, child: _Child) -> None:
        """Wait for readiness (racing the process's exit), then for the exit itself."""
        name = child.project.name
        exited = asyncio.ensure_future(child.proc.wait())
        probe = asyncio.ensure_future(self._probe_until_ready(child))
        try:
            await asyncio.wait({exited, probe}, return_when=asyncio.FIRST_COMPLETED)
            if probe.done() and not exited.done() and not child.stopping:
                child.ready = True
                logs.event("project_ready", project=name, pid=child.proc.pid, port=child.port)
                if self.listener is not None:
                    self.listener.endpoints_changed(name, [child.endpoint])
            code = await exited
        finally:
            probe.cancel()
            exited.cancel()
        # Let the readers drain what the process wrote last (a grandchild may hold the pipes open).
        await asyncio.wait(child.readers, timeout=1.0)
        if self._children.get(name) is child:
            del self._children[name]  # before reporting, so the next scale_up spawns afresh
            self._notify_table(name)
        if child.stopping:
            return
        if child.ready:
            logs.event("project_exited", logging.WARNING, project=name, pid=child.proc.pid, exit_code=code)
            if self.listener is not None:
                self.listener.endpoints_changed(name, [])
        else:
            reason = f"process exited with code {code} before it was ready"
            tail = child.tail()
            reason += f"; last stderr lines:\n{tail}" if tail else "; it wrote nothing to stderr"
            logs.event("project_exited", logging.WARNING, project=name, pid=child.proc.pid, exit_code=code,
                       ready=False)
            if self.listener is not None:
                self.listener.wake_failed(name, reason)

    async def _probe_until_ready(self, child: _Child) -> None:
        """Probe until the app answers; the supervisor races this against the process's exit.

        There is no event for "a child started listening", so the port is tried with cheap
        non-blocking connects, every millisecond at first (a fresh process is noticed within about
        one), then with a backoff; ``ready_path`` is asked once the port accepts connections."""
        loop = asyncio.get_running_loop()
        fast_until = loop.time() + _CONNECT_PROBE_FAST_S
        delay = _CONNECT_PROBE_INTERVAL_S
        self._probing += 1
        try:
            while True:
                accepted = connect_probe(child.port)
                if accepted is None:  # the connect did not complete at once (a full backlog?): wait for it
                    accepted = await probe(child.port, None)
                if accepted:
                    break
                if loop.time() >= fast_until:
                    delay = min(delay * 1.5, _PROBE_MAX_DELAY_S)
                await asyncio.sleep(max(delay, self._probing * _CONNECT_PROBE_SHARE_S))
        finally:
            self._probing -= 1
        ready_path = child.project.ready_path
        if ready_path is None:
            return
        delay = _PROBE_FIRST_DELAY_S
        while not await probe(child.port, ready_path):
            await asyncio.sleep(delay)
            delay = min(delay * 2, _PROBE_MAX_DELAY_S)

    async def _reprobe(self, child: _Child) -> None:
        await self._probe_until_ready(child)
        if self._children.get(child.project.name) is child and not child.stopping and self.listener is not None:
            self.listener.endpoints_changed(child.project.name, [child.endpoint])

    async def _stop(self, child: _Child) -> None:
        name, proc = child.project.name, child.proc
        child.stopping = True
        if child.reprobe is not None:
            child.reprobe.cancel()
        if proc.returncode is None:
            _killpg(proc.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(asyncio.shield(proc.wait()), self.settings.stop_grace_s)
            except TimeoutError:
                logs.event("project_kill", logging.WARNING, project=name, pid=proc.pid,
                           grace_s=self.settings.stop_grace_s)
        # SIGKILL whatever is left of the group (the leader after the grace period, or stragglers).
        # The group id cannot be reused while any member lives, so this reaches only our processes.
        _killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        if child.supervisor is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await child.supervisor
        if self._children.get(name) is child:
            del self._children[name]
            self._notify_table(name)
        logs.event("project_stopped", project=name, pid=proc.pid, exit_code=proc.returncode)

    def _notify_table(self, name: str) -> None:
        # The project's ``location`` ("pid N") changed.
        proj = self._table.get(name)
        if proj is not None:
            self._infos[name] = self._info(proj)
        if self.listener is not None:
            self.listener.projects_changed()


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def parent_death_signal(sig: signal.Signals) -> Callable[[], None] | None:
    """A ``preexec_fn`` making the kernel send ``sig`` to the child when the gateway dies, however
    it dies (``PR_SET_PDEATHSIG``); None where that does not exist (not Linux).

    The signal follows the *thread* that forked: event loops spawn from their own thread, which
    lives as long as the gateway. It survives ``exec`` but not ``fork``, so it reaches the project's
    main process, which passes it on to its own children as a stop would."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    prctl, set_handler = libc.prctl, libc.signal
    prctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong)
    prctl.restype = ctypes.c_int
    set_handler.argtypes = (ctypes.c_int, ctypes.c_void_p)
    set_handler.restype = ctypes.c_void_p
    signum, parent = int(sig), os.getpid()

    def set_parent_death_signal() -> None:  # runs in the child, between fork and exec
        # Until exec the child still has the gateway's handler for the signal (the event loop's),
        # which would swallow it: the default action ends the child instead.
        set_handler(signum, 0)  # SIG_DFL
        if prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        if os.getppid() != parent:  # the gateway died before the signal was armed
            os._exit(1)

    return set_parent_death_signal


def _killpg(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def free_port() -> int:
    """A currently free TCP port on the loopback interface."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        port: int = s.getsockname()[1]
        return port


def connect_probe(port: int) -> bool | None:
    """Whether the loopback ``port`` accepts connections, without waiting: True (connected),
    False (refused), None (the connect is still in progress, e.g. a full backlog).

    A loopback connect is handled by the kernel within the ``connect`` call, so its outcome is
    known as soon as it returns."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setblocking(False)
        err = s.connect_ex((LOOPBACK, port))
        if err not in (0, errno.EINPROGRESS):
            return False
        err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            return False
        try:
            s.getpeername()
        except OSError:
            return None  # not connected yet
        return True


async def probe(port: int, ready_path: str | None) -> bool:
    """One readiness check: a TCP connect, or ``GET ready_path`` answering 2xx/3xx."""
    try:
        async with asyncio.timeout(_PROBE_TIMEOUT_S):
            reader, writer = await asyncio.open_connection(LOOPBACK, port)
            try:
                if ready_path is None:
                    return True
                writer.write(
                    f"GET {ready_path} HTTP/1.1\r\nHost: {LOOPBACK}:{port}\r\nUser-Agent: wakegate-probe\r\n"
                    "Connection: close\r\n\r\n".encode("latin-1")
                )
                status_line = await reader.readline()
                parts = status_line.split()
                return len(parts) >= 2 and parts[0].startswith(b"HTTP/") and parts[1][:1] in (b"2", b"3")
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
    except (OSError, TimeoutError, ValueError):
        return False
