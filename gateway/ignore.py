"""Requests that must never wake a project nor count as activity (probes, uptime bots)."""

from __future__ import annotations

import re
from collections.abc import Iterable

# User-Agent verdicts remembered: the alternation of a dozen case-insensitive patterns costs ~10 µs
# on a browser's long User-Agent, and the same few values arrive again and again.
UA_CACHE_SIZE = 1024


class IgnoreRules:
    """Path prefixes and User-Agent regexes (case-insensitive, searched anywhere in the value)."""

    __slots__ = ("_paths", "_ua", "_ua_cache")

    def __init__(self, path_prefixes: Iterable[str] = (), user_agent_patterns: Iterable[str] = ()) -> None:
        self._paths = tuple(p for p in path_prefixes if p)
        patterns = [p for p in user_agent_patterns if p]
        self._ua = re.compile("|".join(f"(?:{p})" for p in patterns), re.IGNORECASE) if patterns else None
        self._ua_cache: dict[str, bool] = {}

    @property
    def empty(self) -> bool:
        """Whether no rule is configured (the data path can skip the check)."""
        return not self._paths and self._ua is None

    def matches(self, path: str, user_agent: str | None) -> bool:
        """Whether a request with this raw path and User-Agent is ignored."""
        if self._paths and path.startswith(self._paths):
            return True
        if self._ua is None or not user_agent:
            return False
        hit = self._ua_cache.get(user_agent)
        if hit is None:
            hit = self._ua.search(user_agent) is not None
            cache = self._ua_cache
            if len(cache) >= UA_CACHE_SIZE:
                cache.clear()  # random User-Agents must not grow memory; the common ones come back
            cache[user_agent] = hit
        return hit
