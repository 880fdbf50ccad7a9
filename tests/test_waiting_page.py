"""The waiting page: when it is shown, what it contains, and (in headless Chromium, end to end
through the real gateway) that it is replaced by the project's own page without a manual reload."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from playwright.async_api import Browser, Response, async_playwright

from gateway import waiting_page
from gateway.waiting_page import (
    STATUS_PATH,
    page_response_headers,
    render_failed_page,
    render_page,
    render_status,
    render_suspended_page,
    wants_page,
)
from tests.ops_support import GatewayProcess, ensure_debian_package, write_projects

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


def test_page_shows_the_request_id_escaped_and_nothing_when_there_is_none() -> None:
    page = render_page("alpha", "failed", 3, 120, "req-42").decode()
    assert '<code id="rid">req-42</code>' in page
    assert 'id="rid"' not in render_page("alpha", "failed", 3, 120).decode()
    hostile = render_page("alpha", "waking", 3, 120, '"><script>x</script>').decode()
    assert "<script>x" not in hostile and "&lt;script&gt;x&lt;/script&gt;" in hostile
    assert hostile.count("<script>") == 1


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


def test_failed_page_is_final_and_private() -> None:
    page = render_failed_page('x"><script>alert(1)</script>', "req-7").decode()
    assert "could not start" in page and '<code id="rid">req-7</code>' in page
    assert "<script" not in page and "&lt;script&gt;" in page  # no script of its own: it does not poll
    assert "refresh" not in page.lower()
    assert 'id="rid"' not in render_failed_page("alpha").decode()
    assert waiting_page.FAILED_STATUS == 502


def test_suspended_page_is_final_and_private() -> None:
    page = render_suspended_page('x"><script>alert(1)</script>', "req-8").decode()
    assert "<title>x&quot;&gt;&lt;script&gt;alert(1)&lt;/script&gt; is suspended</title>" in page
    assert 'data-state="suspended"' in page and '<code id="rid">req-8</code>' in page
    assert "<script" not in page and "refresh" not in page.lower()  # nothing polls, nothing reloads
    assert "starting" not in page and "could not start" not in page
    assert 'id="rid"' not in render_suspended_page("alpha").decode()
    # The failed page is the same page for another reason.
    assert render_failed_page("alpha", "r") == waiting_page.render_final_page("alpha", "failed", "r")
    assert {"failed", "suspended"} == waiting_page.FINAL_PAGE_REASONS


def test_the_waiting_page_reloads_once_on_failure_instead_of_polling_on() -> None:
    script = render_page("alpha", "waking", 1, 120).decode()
    failed = script[script.index('if (st.state === "failed")'):]
    assert failed.index("window.location.reload()") < failed.index("return;") < failed.index("setTimeout(poll")


def test_headers_and_status_answer() -> None:
    headers = page_response_headers()
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    assert headers["Cache-Control"] == "no-store"
    assert int(headers["Retry-After"]) > 0
    assert int(headers["Refresh"]) > waiting_page.NOSCRIPT_REFRESH_S
    assert json.loads(render_status("alpha", "ready", True)) == {"project": "alpha", "state": "ready", "ready": True}
    # A failed project's status says it failed, never why.
    assert json.loads(render_status("alpha", "failed", False)) == {"project": "alpha", "state": "failed",
                                                                   "ready": False}


# --- end to end: the real gateway, real project processes, headless Chromium ----------------------------

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
    # *.localhost is loopback in Chromium already; pin it to IPv4, where the gateway listens.
    "--host-resolver-rules=MAP *.localhost 127.0.0.1",
]
BOOT_S = 2.0
STEP_MS = 30_000


def ensure_chromium() -> str:
    return ensure_debian_package(CHROMIUM, "chromium")


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[GatewayProcess]:
    projects = write_projects(tmp_path, {
        "hello": {"env": {"BOOT_S": BOOT_S}},
        "plain": {"env": {"BOOT_S": BOOT_S}, "strategy": "block"},
        "api": {"env": {"BOOT_S": 0.5}},
        "nojs": {"env": {"BOOT_S": BOOT_S}},
        "broken": {"command": ["{python}", "-c", "import sys, time; time.sleep(1); sys.exit(3)"]},
        "paused": {"mode": "Suspended"},
    })
    gw = await GatewayProcess.start(projects)
    try:
        yield gw
    finally:
        await gw.kill()


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    executable = await asyncio.to_thread(ensure_chromium)
    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS, timeout=STEP_MS)
        try:
            yield b
        finally:
            await b.close()


async def test_browser_sees_the_waiting_page_then_the_project(gateway: GatewayProcess, browser: Browser) -> None:
    page = await browser.new_page()
    page.set_default_timeout(STEP_MS)
    status_polls: list[int] = []
    documents: list[int] = []

    def on_response(response: Response) -> None:
        if response.url.endswith(STATUS_PATH):
            status_polls.append(response.status)
        elif response.request.resource_type == "document":
            documents.append(response.status)

    page.on("response", on_response)
    first = await page.goto(f"http://hello.localhost:{gateway.port}/docs?x=1", wait_until="domcontentloaded")
    assert first is not None and first.status == 503
    assert await page.title() == "hello is starting…"
    assert "is starting" in (await page.text_content("h1") or "")

    # No reload from the test: the page's own script notices readiness and loads the project.
    await page.wait_for_selector("#real")
    assert await page.text_content("#real") == "real content of hello"
    assert "path /docs?x=1" in (await page.content())  # the same URL, query included
    assert page.url == f"http://hello.localhost:{gateway.port}/docs?x=1"
    assert status_polls and set(status_polls) == {200}
    assert documents[0] == 503 and documents[-1] == 200
    (wake,) = [e for e in gateway.events("wake") if e.get("project") == "hello"]
    assert wake["previous_state"] == "asleep"
    await page.close()


async def test_without_javascript_the_page_refreshes_itself(gateway: GatewayProcess, browser: Browser) -> None:
    context = await browser.new_context(java_script_enabled=False)
    page = await context.new_page()
    page.set_default_timeout(STEP_MS)
    polls: list[str] = []
    page.on("request", lambda r: polls.append(r.url) if r.url.endswith(STATUS_PATH) else None)
    first = await page.goto(f"http://nojs.localhost:{gateway.port}/", wait_until="domcontentloaded")
    assert first is not None and first.status == 503
    await page.wait_for_selector("#real")
    assert await page.text_content("#real") == "real content of nojs"
    assert polls == []  # it was the refresh, not the script
    await context.close()


async def test_api_clients_and_block_strategy_keep_blocking(gateway: GatewayProcess) -> None:
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        # An API client (no text/html) is held, then gets the project's answer.
        async with http.get(gateway.url + "/v1/x", headers={"Host": "api.localhost", "Accept": "*/*"}) as resp:
            assert resp.status == 200
            assert "real content of api" in await resp.text()
            assert "X-Wakegate-Cold-Start" in resp.headers
        # strategy: block — even a browser navigation is held instead of shown the page.
        headers = {"Host": "plain.localhost", "Accept": BROWSER_ACCEPT, "Sec-Fetch-Mode": "navigate"}
        async with http.get(gateway.url + "/", headers=headers) as resp:
            assert resp.status == 200
            assert "real content of plain" in await resp.text()


async def test_page_and_status_over_http(gateway: GatewayProcess) -> None:
    timeout = aiohttp.ClientTimeout(total=60)
    headers = {"Host": "hello.localhost", "Accept": BROWSER_ACCEPT, "Sec-Fetch-Mode": "navigate"}
    async with aiohttp.ClientSession(timeout=timeout) as http:
        async with http.get(gateway.url + "/", headers=headers) as resp:
            assert resp.status == 503
            assert resp.headers["Cache-Control"] == "no-store"
            assert resp.headers["Content-Type"].startswith("text/html")
            assert int(resp.headers["Retry-After"]) > 0
            assert int(resp.headers["Refresh"]) > 0
            assert "hello is starting" in await resp.text()
        async with http.get(gateway.url + STATUS_PATH, headers={"Host": "hello.localhost"}) as resp:
            assert resp.status == 200
            status = await resp.json()
        assert status["project"] == "hello" and status["state"] in ("waking", "ready")
        assert status["ready"] is (status["state"] == "ready")
        # Held until ready, then the status says so.
        async with http.get(gateway.url + "/", headers={"Host": "hello.localhost"}) as resp:
            assert resp.status == 200
        async with http.get(gateway.url + STATUS_PATH, headers={"Host": "hello.localhost"}) as resp:
            assert await resp.json() == {"project": "hello", "state": "ready", "ready": True}


async def test_a_failed_wake_ends_on_a_final_error_page_that_stops_polling(gateway: GatewayProcess,
                                                                           browser: Browser) -> None:
    page = await browser.new_page()
    page.set_default_timeout(STEP_MS)
    documents: list[int] = []
    polls_after_final: list[str] = []
    final = asyncio.Event()

    def on_response(response: Response) -> None:
        if response.request.resource_type == "document":
            documents.append(response.status)
            if response.status == waiting_page.FAILED_STATUS:
                final.set()
        elif final.is_set() and response.url.endswith(STATUS_PATH):
            polls_after_final.append(response.url)

    page.on("response", on_response)
    first = await page.goto(f"http://broken.localhost:{gateway.port}/", wait_until="domcontentloaded")
    assert first is not None and first.status == 503
    # The page's own script sees the failure and loads the page once more: the final error page.
    await page.wait_for_selector('main[data-state="failed"]')
    assert documents == [503, 502]
    text = await page.text_content("main") or ""
    assert "broken could not start" in text and "Request id:" in text
    assert "exit" not in text and "code 3" not in text  # the reason stays private
    # It is final: no script, so nothing polls (a new status request would have to come from it).
    assert await page.evaluate("document.scripts.length") == 0
    assert polls_after_final == []
    # A later visit (after the failure window) would try again; an API client is held and gets 502 now.
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http, \
            http.get(f"{gateway.url}/", headers={"Host": "broken.localhost"}) as resp:
        assert resp.status == 502


async def test_a_suspended_project_gets_a_final_page_saying_so(gateway: GatewayProcess, browser: Browser) -> None:
    headers = {"Host": "paused.localhost", "Accept": BROWSER_ACCEPT, "Sec-Fetch-Mode": "navigate"}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
        async with http.get(gateway.url + "/docs", headers=headers) as resp:
            assert resp.status == 503
            assert resp.headers["Content-Type"].startswith("text/html")
            assert resp.headers["Cache-Control"] == "no-store"
            assert "Refresh" not in resp.headers and "Retry-After" not in resp.headers
            body = await resp.text()
        assert "paused is suspended" in body and "is starting" not in body
        assert "<script" not in body and "refresh" not in body.lower()
        assert re.search(r'Request id: <code id="rid">[^<]+</code>', body)
        # An API client is answered the same way, in plain text.
        async with http.get(gateway.url + "/", headers={"Host": "paused.localhost"}) as resp:
            assert resp.status == 503
            assert (await resp.text()).startswith("project paused is suspended\n")
    page = await browser.new_page()
    page.set_default_timeout(STEP_MS)
    documents: list[int] = []
    page.on("response", lambda r: documents.append(r.status) if r.request.resource_type == "document" else None)
    first = await page.goto(f"http://paused.localhost:{gateway.port}/", wait_until="load")
    assert first is not None and first.status == 503
    assert await page.title() == "paused is suspended"
    assert await page.evaluate("document.scripts.length") == 0
    assert documents == [503]
    await page.close()
    # Never started; every request was rejected as suspended (the browser's favicon request too).
    assert not [e for e in gateway.events("wake") if e.get("project") == "paused"]
    failed = [(e["status"], e["reason"]) for e in gateway.events("request_failed") if e.get("project") == "paused"]
    assert len(failed) >= 3 and set(failed) == {(503, "suspended")}
