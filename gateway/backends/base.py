"""The backend interface: the only thing the gateway core knows about where projects run.

A backend owns the table of known projects and their per-project settings, scales a project up or
down, and *pushes* what it observes (ready endpoints, failed wakes, table changes) to one listener —
the lifecycle. It never decides when to wake or sleep; the lifecycle does.

The shape fits both the local backend (child processes) and Kubernetes (Deployments whose
EndpointSlices carry the ready pod addresses) without change.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from gateway.activity import ALONE, SharedActivity


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One ready address of a project (a local process, or a pod IP and port)."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class ProjectSettings:
    """Per-project overrides; ``None`` means "use the gateway-wide default"."""

    idle_timeout_s: float | None = None
    hold_timeout_s: float | None = None
    strategy: str | None = None  # "auto" | "block" | "page" (waiting page), see gateway.waiting_page
    # How the project runs now: "Auto" | "Running" | "Suspended" (gateway.contract.MODES; None: Auto),
    # see gateway.project_state.Mode. The lifecycle applies a change of it once, when it is reported.
    mode: str | None = None


@dataclass(frozen=True, slots=True)
class ProjectInfo:
    """A project as the backend knows it."""

    name: str
    settings: ProjectSettings = field(default_factory=ProjectSettings)
    # Where it lives, for people: "pid 1234" / "namespace wg-foo, deployment foo".
    location: str = ""


class BackendError(Exception):
    """The backend could not do what was asked (API server down, spawn failed, …).

    The message is shown to people (admin API, 503 bodies), so it must say what is wrong.
    """


class BackendUnavailable(BackendError):
    """The backend cannot be reached right now (e.g. the Kubernetes API server is down); the same
    request may succeed later, so the data path answers 503 rather than 502."""


class BackendListener(Protocol):
    """What a backend reports to (implemented by :class:`gateway.lifecycle.Lifecycle`)."""

    def endpoints_changed(self, name: str, endpoints: Sequence[Endpoint]) -> None:
        """The project's set of *ready* endpoints is now exactly ``endpoints`` (possibly empty)."""

    def wake_failed(self, name: str, reason: str) -> None:
        """The project cannot become ready (process exited, CrashLoopBackOff, quota, …)."""

    def projects_changed(self) -> None:
        """Projects were added, removed or had their settings changed; re-read :meth:`Backend.projects`."""


class Backend(abc.ABC):
    """Where projects run. All methods are called from the gateway's event loop."""

    listener: BackendListener | None = None

    def set_listener(self, listener: BackendListener) -> None:
        """Register the one listener that receives every observation."""
        self.listener = listener

    @abc.abstractmethod
    async def start(self) -> None:
        """Load the initial project table and start watching. Reports current endpoints."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop watching and release resources. The local backend also stops its processes."""

    @abc.abstractmethod
    def projects(self) -> Mapping[str, ProjectInfo]:
        """The current project table (from memory; never does I/O)."""

    async def discover(self, name: str) -> ProjectInfo | None:
        """Look up a name missing from the caller's copy of :meth:`projects`. It is called for
        every unknown host name the public listener sees, so it must answer from memory (what the
        backend already watches or loaded), never with a request per name to a shared service
        such as the Kubernetes API server. A project created a moment ago may be answered ``None``
        until the backend observes it; it then calls ``projects_changed``. The default trusts the
        table; the caller caches negative answers."""
        return self.projects().get(name)

    @abc.abstractmethod
    async def scale_up(self, name: str) -> None:
        """Ensure the project is scaled to one replica. Idempotent. Raises :class:`BackendError`.

        Returning does not mean ready: readiness arrives through ``endpoints_changed``.
        """

    @abc.abstractmethod
    async def scale_down(self, name: str, last_activity_wall_s: float | None = None) -> bool:
        """Scale the project to zero (``last_activity_wall_s``: this replica's last activity for it,
        which a backend may record). Returns False when the backend refused because another
        gateway replica woke it or used it meanwhile (a wake that races a sleep wins).
        Raises :class:`BackendError`.
        """

    @property
    def ready(self) -> bool:
        """Whether the backend is reachable and has loaded its initial table (for ``/readyz``)."""
        return True

    @property
    def reachable(self) -> bool:
        """Whether the backend's control plane answered its last request (metric
        ``wakegate_backend_reachable``); a backend without one is always reachable."""
        return True

    # --- Optional capabilities -------------------------------------------------------------------

    #: Whether :meth:`reload` re-reads the project table (the local backend's projects file). A
    #: backend that watches its table (Kubernetes) has nothing to re-read.
    supports_reload: bool = False

    async def reload(self) -> None:
        """Re-read the project table (``SIGHUP``) where :attr:`supports_reload`; else do nothing."""

    # --- Coordination between gateway replicas (single-replica defaults) -----------------------

    def may_reap(self) -> bool:
        """Whether this gateway replica runs the idle reaper (the Lease holder in Kubernetes)."""
        return True

    def shared_activity(self, name: str) -> SharedActivity:
        """The project's activity on the other gateway replicas (a single gateway: none)."""
        return ALONE
