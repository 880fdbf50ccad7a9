"""The page a browser sees while its project wakes, and when to show it.

API clients keep the blocking behaviour; only browser navigations get the page (strategy ``auto``),
or every GET (``page``), or never (``block``).
"""

from __future__ import annotations

# Reserved path on every project host: the waiting page polls it for the project's state.
STATUS_PATH = "/__wakegate/status"


def wants_page(method: str, accept: str | None, sec_fetch_mode: str | None, strategy: str) -> bool:
    """Whether a request to a sleeping project gets the waiting page instead of being held."""
    if strategy == "block" or method != "GET":
        return False
    if strategy == "page":
        return True
    if sec_fetch_mode is not None and sec_fetch_mode.strip().lower() != "navigate":
        return False
    return accept is not None and "text/html" in accept.lower()
