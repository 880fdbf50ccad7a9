"""The contract between wakegate's parts (gateway.contract): its validators, and that the gateway's
flags, the projects file, Deployment annotations and the provisioner all use them (one wording)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from gateway import contract as C
from gateway.backends.k8s import objects
from gateway.backends.local_projects import ProjectsFileError, parse_projects
from gateway.config import ConfigError, load_settings
from provisioner.spec import ProjectSpec, SpecError

SECONDS = "expected a positive number of seconds"


@pytest.mark.parametrize(("value", "seconds"), [(1, 1.0), (2.5, 2.5), (1e-9, 1e-9), (10**6, 1e6)])
def test_positive_seconds_accepts_positive_finite_numbers(value: float, seconds: float) -> None:
    assert C.positive_seconds(value) == seconds
    assert type(C.positive_seconds(value)) is float


@pytest.mark.parametrize("value", [0, -1, -0.5, 0.0, math.inf, -math.inf, math.nan, True, False, "5", None, [1],
                                   10**400])
def test_positive_seconds_refuses_the_rest_naming_the_value(value: Any) -> None:
    with pytest.raises(ValueError) as info:
        C.positive_seconds(value)
    assert str(info.value) == f"{SECONDS}, got {value!r}"


@pytest.mark.parametrize(("text", "seconds"), [("300", 300.0), ("2.5", 2.5), (" 7 ", 7.0), ("1e3", 1000.0)])
def test_parse_seconds_reads_decimal_text(text: str, seconds: float) -> None:
    assert C.parse_seconds(text) == seconds


@pytest.mark.parametrize("text", ["0", "-1", "nan", "inf", "-inf", "", "soon", "75s", "5m"])
def test_parse_seconds_refuses_the_rest_naming_the_text(text: str) -> None:
    with pytest.raises(ValueError) as info:
        C.parse_seconds(text)
    assert str(info.value) == f"{SECONDS}, got {text!r}"


def test_parse_positive_names_its_unit() -> None:
    assert C.parse_positive("60", "per minute") == 60.0
    with pytest.raises(ValueError, match=r"^expected a positive number per minute, got '0'$"):
        C.parse_positive("0", "per minute")


@pytest.mark.parametrize(("text", "seconds"), [
    ("300", 300.0), ("2.5", 2.5), ("90s", 90.0), ("15m", 900.0), ("1h", 3600.0), ("1h30m", 5400.0),
    ("250ms", 0.25), ("1m30s", 90.0), (" 5m ", 300.0),
])
def test_parse_duration(text: str, seconds: float) -> None:
    assert C.parse_duration(text) == seconds


@pytest.mark.parametrize(("text", "problem"), [
    ("", "expected a duration (e.g. 300, 90s, 15m, 1h)"), ("5 m", "expected a duration (e.g. 300, 90s, 15m, 1h)"),
    ("1d", "expected a duration (e.g. 300, 90s, 15m, 1h)"), ("m", "expected a duration (e.g. 300, 90s, 15m, 1h)"),
    ("0s", SECONDS), ("0", SECONDS), ("-5", SECONDS), ("nan", SECONDS), ("inf", SECONDS),
])
def test_parse_duration_refuses(text: str, problem: str) -> None:
    with pytest.raises(ValueError) as info:
        C.parse_duration(text)
    assert str(info.value) == f"{problem}, got {text!r}"


@pytest.mark.parametrize(("seconds", "text"), [(300, "300"), (300.0, "300"), (2.5, "2.5"), (0.001, "0.001")])
def test_format_seconds_is_read_back_by_parse_seconds(seconds: float, text: str) -> None:
    assert C.format_seconds(seconds) == text
    assert C.parse_seconds(text) == seconds


def test_strategies() -> None:
    assert C.STRATEGIES == ("auto", "block", "page")
    for name in C.STRATEGIES:
        assert C.strategy(name) == name
    for bad in ("always", "", "AUTO", None, 1):
        with pytest.raises(ValueError) as info:
            C.strategy(bad)
        assert str(info.value) == f"expected one of auto, block, page, got {bad!r}"


def test_managed_project_needs_both_labels() -> None:
    assert C.managed_project(C.common_labels("demo")) == "demo"
    assert C.managed_project({C.PROJECT_LABEL: "demo"}) is None
    assert C.managed_project({C.MANAGED_BY_LABEL: "someone-else", C.PROJECT_LABEL: "demo"}) is None
    assert C.managed_project({C.MANAGED_BY_LABEL: C.MANAGED_BY, C.PROJECT_LABEL: ""}) is None
    assert C.managed_project({}) is None


# --- every reader of a per-project setting says the same --------------------------------------------


def _problems(value: Any, text: str) -> list[str]:
    """What each place that accepts an idle timeout says about ``value`` (``text``: as written)."""
    out = []
    with pytest.raises(ConfigError) as flag:
        load_settings({"projects_file": "/tmp/p.yaml", "idle_timeout_s": text}, environ={})
    out.append(str(flag.value).removeprefix("--idle-timeout: "))
    with pytest.raises(ProjectsFileError) as field:
        parse_projects({"projects": {"web": {"command": ["x"], "idle_timeout_s": value}}}, Path("/p.yaml"))
    out.append(str(field.value).removeprefix("/p.yaml: project 'web': idle_timeout_s: "))
    _, [annotation] = objects.project_settings({C.IDLE_TIMEOUT_ANNOTATION: text})
    out.append(annotation.removeprefix(f"annotation {C.IDLE_TIMEOUT_ANNOTATION}: ").removesuffix("; using the default"))
    with pytest.raises(SpecError) as spec:
        ProjectSpec(name="demo", image="wakegate.test/echo:1", idle_timeout_s=value)
    out.append(str(spec.value).removeprefix("--idle-timeout: "))
    return out


@pytest.mark.parametrize(("value", "text"), [(0, "0"), (-1, "-1"), (math.inf, "inf")])
def test_a_bad_timeout_gets_one_wording_everywhere(value: float, text: str) -> None:
    problems = _problems(value, text)
    assert [p.split(", got ")[0] for p in problems] == [SECONDS] * 4, problems


def test_a_bad_strategy_gets_one_wording_everywhere() -> None:
    expected = "expected one of auto, block, page, got 'sometimes'"
    with pytest.raises(ConfigError) as flag:
        load_settings({"projects_file": "/tmp/p.yaml", "default_strategy": "sometimes"}, environ={})
    assert str(flag.value) == f"--strategy: {expected}"
    with pytest.raises(ProjectsFileError) as field:
        parse_projects({"projects": {"web": {"command": ["x"], "strategy": "sometimes"}}}, Path("/p.yaml"))
    assert str(field.value) == f"/p.yaml: project 'web': strategy: {expected}"
    _, problems = objects.project_settings({C.STRATEGY_ANNOTATION: "sometimes"})
    assert problems == [f"annotation {C.STRATEGY_ANNOTATION}: {expected}; using the default"]
    with pytest.raises(SpecError) as spec:
        ProjectSpec(name="demo", image="wakegate.test/echo:1", strategy="sometimes")
    assert str(spec.value) == f"--strategy: {expected}"


@pytest.mark.parametrize(("text", "name"), [
    ("localhost", "localhost"), ("env.example.com", "env.example.com"), ("EXAMPLE.com", "example.com"),
    ("example.com.", "example.com"), (" example.com ", "example.com"), ("a" * 63 + ".io", "a" * 63 + ".io"),
    ("xn--bcher-kva.example", "xn--bcher-kva.example"), ("1.2.3.4", "1.2.3.4"),
])
def test_dns_name(text: str, name: str) -> None:
    assert C.dns_name(text) == name


@pytest.mark.parametrize("text", [
    "", ".", "exa mple.com", "-x.com", "x_y.com", "ü.com", "ex..com", "a.-b.com", "a-.com", ".example.com",
    "a" * 64 + ".io", ".".join(["a" * 63] * 4) + ".io",
])
def test_not_a_dns_name(text: str) -> None:
    with pytest.raises(ValueError) as info:
        C.dns_name(text)
    assert str(info.value) == f"{text!r} is not a DNS name"


def test_gateway_and_provisioner_refuse_a_domain_alike(capsys: pytest.CaptureFixture[str]) -> None:
    from provisioner.cli import main

    with pytest.raises(ConfigError) as flag:
        load_settings({"projects_file": "/tmp/p.yaml", "domain": "not a domain"}, environ={})
    assert str(flag.value) == "--domain: 'not a domain' is not a DNS name"
    assert main(["create", "demo", "--image", "wakegate.test/echo:1", "--domain", "not a domain",
                 "--kubeconfig", "/nonexistent/kubeconfig"]) == 2
    assert capsys.readouterr().err == "error: --domain: 'not a domain' is not a DNS name\n"
