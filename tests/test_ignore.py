"""Requests that never wake a project: the rules themselves, then end to end through the gateway."""

from __future__ import annotations

import pytest

from gateway import ignore
from gateway.config import DEFAULT_IGNORE_USER_AGENTS
from gateway.ignore import IgnoreRules

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
