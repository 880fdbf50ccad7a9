"""Requests that never wake a project: the rules themselves, then end to end through the gateway."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway import ignore
from gateway.config import DEFAULT_IGNORE_USER_AGENTS
from gateway.ignore import IgnoreRules
from tests.ops_support import GatewayProcess, write_projects

BROWSER = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36"


@pytest.mark.parametrize(
    ("path", "user_agent", "expected"),
    [
        ("/healthz", BROWSER, True),
        ("/healthz?full=1", None, True),
        ("/.well-known/probe/x", None, True),
        ("/health", None, False),
        ("/api/healthz", None, False),  # prefixes match from the start only
        ("/", "kube-probe/1.30", True),
        ("/", "KUBE-PROBE/1.30", True),  # case-insensitive
        ("/", "not-kube-probe/1.30", False),  # anchored pattern
        ("/", "ELB-HealthChecker/2.0", True),
        ("/", "Mozilla/5.0+(compatible; UptimeRobot/2.0; http://www.uptimerobot.com/)", True),
        ("/", "Pingdom.com_bot_version_1.4", True),
        ("/", "Better Stack Bot", True),
        ("/", "GoogleHC/1.0", True),
        ("/", BROWSER, False),
        ("/", "curl/8.5.0", False),
        ("/", "", False),
        ("/", None, False),
    ],
)
def test_default_rules(path: str, user_agent: str | None, expected: bool) -> None:
    rules = IgnoreRules(["/healthz", "/.well-known/probe/"], DEFAULT_IGNORE_USER_AGENTS)
    assert rules.matches(path, user_agent) is expected
    assert rules.matches(path, user_agent) is expected  # the cached verdict agrees


def test_no_rules_match_nothing() -> None:
    rules = IgnoreRules()
    assert rules.empty
    assert not rules.matches("/healthz", "kube-probe/1.30")
    assert not IgnoreRules(["", ""], [""]).matches("/", "x")
    assert not IgnoreRules(["/x"]).empty
    assert not IgnoreRules(user_agent_patterns=["bot"]).empty


def test_custom_patterns_are_regexes() -> None:
    rules = IgnoreRules(user_agent_patterns=[r"^my-monitor/\d+$", "synthetic"])
    assert rules.matches("/", "my-monitor/12")
    assert not rules.matches("/", "my-monitor/12b")
    assert rules.matches("/", "Some Synthetic Check")


def test_user_agent_cache_is_bounded() -> None:
    rules = IgnoreRules(user_agent_patterns=["bot"])
    for i in range(ignore.UA_CACHE_SIZE * 3):
        assert rules.matches("/", f"agent-{i}") is False
    assert rules.matches("/", "some-bot") is True
    assert len(rules._ua_cache) <= ignore.UA_CACHE_SIZE


# --- end to end: the real gateway ----------------------------------------------------------------------


async def test_ignored_requests_never_wake_nor_count_as_activity(tmp_path: Path) -> None:
    projects = write_projects(tmp_path, {"alpha": {}})
    gw = await GatewayProcess.start(projects, "--ignore-paths", "/healthz,/.well-known/probe")
    probes = [
        ("/healthz", {}),
        ("/.well-known/probe/deep?x=1", {}),
        ("/", {"User-Agent": "kube-probe/1.30"}),
        ("/", {"User-Agent": "Mozilla/5.0+(compatible; UptimeRobot/2.0; http://www.uptimerobot.com/)",
               "Accept": "text/html", "Sec-Fetch-Mode": "navigate"}),  # no waiting page either
    ]
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:

            async def get(path: str, headers: dict[str, str]) -> tuple[int, str, dict[str, str]]:
                async with http.get(gw.url + path, headers={"Host": "alpha.localhost", **headers}) as resp:
                    return resp.status, await resp.text(), dict(resp.headers)

            async def project() -> dict[str, Any]:
                async with http.get(gw.admin_url + "/api/v1/projects/alpha") as resp:
                    body: dict[str, Any] = await resp.json()
                    return body

            # Asleep: 503 + Retry-After, and nothing wakes.
            for path, headers in probes:
                status, text, resp_headers = await get(path, headers)
                assert status == 503, (path, headers)
                assert int(resp_headers["Retry-After"]) > 0
                assert "asleep" in text and "does not wake it" in text
            state = await project()
            assert state["state"] == "asleep" and state["last_activity"] is None
            assert gw.events("wake") == []

            # A real request wakes it; then probes are proxied without counting as activity.
            status, text, _ = await get("/", {})
            assert status == 200 and "real content of alpha" in text
            before = (await project())["last_activity"]
            assert before is not None
            await asyncio.sleep(0.01)  # the clock must move for a touch to show
            for path, headers in probes:
                status, text, _ = await get(path, headers)
                assert status == 200, (path, headers)
                assert "real content of alpha" in text
            after = await project()
            assert after["last_activity"] == before
            assert after["state"] == "ready"
            assert len(gw.events("wake")) == 1
    finally:
        await gw.kill()
