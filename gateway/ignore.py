"""Requests that must never wake a project nor count as activity (probes, uptime bots)."""

from __future__ import annotations

import re
from collections.abc import Iterable


class IgnoreRules:
    """Path prefixes and User-Agent regexes (case-insensitive, searched anywhere in the value)."""

    __slots__ = ("_paths", "_ua")

    def __init__(self, path_prefixes: Iterable[str] = (), user_agent_patterns: Iterable[str] = ()) -> None:
        self._paths = tuple(p for p in path_prefixes if p)
        patterns = [p for p in user_agent_patterns if p]
        self._ua = re.compile("|".join(f"(?:{p})" for p in patterns), re.IGNORECASE) if patterns else None

    def matches(self, path: str, user_agent: str | None) -> bool:
        """Whether a request with this raw path and User-Agent is ignored."""
        if self._paths and path.startswith(self._paths):
            return True
        return bool(self._ua is not None and user_agent and self._ua.search(user_agent))
