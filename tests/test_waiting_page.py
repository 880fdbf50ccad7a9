"""The waiting page: when it is shown, what it contains, and (in headless Chromium, end to end
through the real gateway) that it is replaced by the project's own page without a manual reload."""

from __future__ import annotations

import json
import re

import pytest

from gateway import waiting_page
from gateway.waiting_page import STATUS_PATH, page_response_headers, render_page, render_status, wants_page

BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,*/*;q=0.8"


@pytest.mark.parametrize(
    ("method", "accept", "mode", "strategy", "expected"),
    [
        ("GET", BROWSER_ACCEPT, "navigate", "auto", True),
        ("GET", BROWSER_ACCEPT, None, "auto", True),  # old browsers send no Sec-Fetch-Mode
        ("GET", "TEXT/HTML", None, "auto", True),
        ("GET", BROWSER_ACCEPT, "cors", "auto", False),  # fetch() from a page: keep blocking
        ("GET", BROWSER_ACCEPT, "no-cors", "auto", False),
        ("GET", "application/json", "navigate", "auto", False),
        ("GET", "*/*", None, "auto", False),  # curl
        ("GET", None, None, "auto", False),
        ("POST", BROWSER_ACCEPT, "navigate", "auto", False),
        ("HEAD", BROWSER_ACCEPT, "navigate", "auto", False),
        ("GET", BROWSER_ACCEPT, "navigate", "block", False),
        ("GET", "application/json", "cors", "page", True),
        ("GET", None, None, "page", True),
        ("POST", None, None, "page", False),
    ],
)
def test_wants_page(method: str, accept: str | None, mode: str | None, strategy: str, expected: bool) -> None:
    assert wants_page(method, accept, mode, strategy) is expected


def test_page_is_self_contained_and_polls_the_status_path() -> None:
    page = render_page("alpha", "waking", 3.7, 120).decode()
    assert page.startswith("<!doctype html>")
    assert "alpha" in page and "is starting" in page
    assert ">3 s<" in page  # elapsed time, already right without JavaScript
    assert json.dumps(STATUS_PATH) in page
    # No external assets: nothing fetched but the status path.
    assert not re.search(r"\b(src|href)\s*=", page)
    assert "http://" not in page and "https://" not in page
    assert "@import" not in page and "url(" not in page
    # Refreshes itself when JavaScript is off.
    assert '<noscript><meta http-equiv="refresh" content="2"></noscript>' in page
    assert len(page) < 8000


def test_page_escapes_the_project_name() -> None:
    page = render_page('x"><script>alert(1)</script>', "asleep", 0, 5).decode()
    assert "<script>alert(1)" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert page.count("<script>") == 1  # only the page's own


def test_page_config_cannot_close_the_script_block() -> None:
    page = render_page("alpha", "waking", 1e9, 1e9).decode()
    script = page[page.index("<script>"):page.index("</script>")]
    assert "</" not in script.replace("</script>", "")
    config = re.search(r"var cfg = (\{.*?\});", script)
    assert config is not None
    assert json.loads(config.group(1)) == {"status": STATUS_PATH, "poll": 500, "elapsed": 1e9, "hold": 1e9}


def test_page_states() -> None:
    assert b"could not start" in render_page("alpha", "failed", 10, 5)
    assert b'data-state="asleep"' in render_page("alpha", "asleep", -4, 5)
    assert b">0 s<" in render_page("alpha", "asleep", -4, 5)  # clock skew never shows negatives
    assert b">2 min 5 s<" in render_page("alpha", "waking", 125.2, 120)
    assert b'id="slow">' in render_page("alpha", "waking", 125.2, 120)  # longer than the hold timeout
    assert b'id="slow" hidden>' in render_page("alpha", "waking", 5, 120)


def test_headers_and_status_answer() -> None:
    headers = page_response_headers()
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    assert headers["Cache-Control"] == "no-store"
    assert int(headers["Retry-After"]) > 0
    assert int(headers["Refresh"]) > waiting_page.NOSCRIPT_REFRESH_S
    assert json.loads(render_status("alpha", "ready", True)) == {"project": "alpha", "state": "ready", "ready": True}
