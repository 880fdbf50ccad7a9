"""Pure routing: which project does a request's Host (or route header) name?

``Host: <project>.<domain>`` — case-insensitive, optional port, optional trailing dot, exactly one
label before the domain. A malformed Host is a client error (400); a well-formed Host outside the
domain, or not of that shape, is "not here" (404). Neither ever wakes anything.
"""

from __future__ import annotations

import functools
import re

# RFC 3986 reg-name characters (unreserved / pct-encoded / sub-delims) are wider than DNS; we accept
# the DNS subset plus what a client may legitimately send and reject the rest as malformed.
_HOST_RE = re.compile(r"(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<name>[A-Za-z0-9._-]+))(?::(?P<port>[0-9]{1,5}))?")
# A project name is a DNS-1035 label (what the provisioner accepts): starts with a letter.
_PROJECT_RE = re.compile(r"[a-z]([a-z0-9-]{0,61}[a-z0-9])?")


class RouteError(Exception):
    """The request names no project here. ``status`` is 400 (malformed) or 404 (not ours)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def is_project_name(name: str) -> bool:
    """Whether ``name`` has the shape of a project name (a DNS-1035 label)."""
    return _PROJECT_RE.fullmatch(name) is not None


class Router:
    """Maps Host values to project names for one domain. Results are cached (bounded LRU)."""

    def __init__(self, domain: str, cache_size: int = 4096) -> None:
        self.domain = domain.strip().rstrip(".").lower()
        self._suffix = "." + self.domain
        self.project_for_host = functools.lru_cache(maxsize=cache_size)(self._project_for_host)

    def _project_for_host(self, host: str | None) -> str | RouteError:
        # Returns the error instead of raising so the LRU cache remembers bad hosts too.
        if host is None or not host.strip():
            return RouteError(400, "missing Host header")
        m = _HOST_RE.fullmatch(host.strip())
        if m is None:
            return RouteError(400, f"malformed Host header {host[:100]!r}")
        port = m.group("port")
        if port is not None and int(port) > 65535:
            return RouteError(400, f"malformed Host header {host[:100]!r}: port out of range")
        name = m.group("name")
        if name is None:
            return RouteError(404, "no project is served at an IP address; use <project>." + self.domain)
        name = name.lower()
        if name.endswith("."):
            name = name[:-1]
        if ".." in name or name.startswith(".") or name.endswith(".") or not name:
            return RouteError(400, f"malformed Host header {host[:100]!r}: empty label")
        if not name.endswith(self._suffix):
            return RouteError(404, f"{name} is not under {self.domain}")
        label = name[: -len(self._suffix)]
        if "." in label:
            return RouteError(404, f"{name}: expected exactly one label before {self.domain}")
        if not is_project_name(label):
            return RouteError(404, f"{label!r} is not a valid project name")
        return label

    def route(self, host: str | None, route_header: str | None = None) -> str:
        """The project for a request. ``route_header`` (from ``--route-header``) wins when present.

        Raises :class:`RouteError`.
        """
        if route_header is not None:
            name = route_header.strip().lower()
            if not is_project_name(name):
                raise RouteError(400, f"route header names no valid project: {route_header[:100]!r}")
            return name
        result = self.project_for_host(host)
        if isinstance(result, RouteError):
            raise result
        return result
