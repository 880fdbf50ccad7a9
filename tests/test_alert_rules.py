"""The alerting rules ops install (manifests/prometheus/wakegate-rules.yaml, the same groups as the
PrometheusRule of components/monitoring and of the Helm chart), tested with Prometheus's own
``promtool test rules`` against series written here: each alert fires on the situation it names,
and stays quiet on a healthy gateway."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.ops_support import ensure_debian_package

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "manifests" / "prometheus" / "wakegate-rules.yaml"
OPERATOR_RULE = ROOT / "manifests" / "components" / "monitoring" / "prometheusrule.yaml"
CHART_RULES = ROOT / "charts" / "wakegate" / "files" / "prometheusrule-spec.yaml"
PROMTOOL = "/usr/bin/promtool"
NS = 'job="wakegate", namespace="wakegate-system"'


def ensure_promtool() -> str:
    return ensure_debian_package(PROMTOOL, "prometheus")  # Debian's prometheus ships promtool


def rules() -> dict[str, dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return {r["alert"]: r for g in doc["groups"] for r in g["rules"]}


def alert(name: str, **labels: str) -> dict[str, Any]:
    """What promtool must see for ``name``: its labels (the rule's and the series') and annotations."""
    rule = rules()[name]
    return {"exp_labels": {**rule["labels"], **labels}, "exp_annotations": rule["annotations"]}


def case(name: str, series: dict[str, str], fires_at: str | None, quiet_at: str,
         **labels: str) -> dict[str, Any]:
    """A promtool test: ``series`` (selector → values), ``name`` quiet at ``quiet_at`` and, unless
    ``fires_at`` is None, firing at ``fires_at`` with ``labels`` (default: the namespace only)."""
    checks: list[dict[str, Any]] = [{"eval_time": quiet_at, "alertname": name, "exp_alerts": []}]
    if fires_at is not None:
        checks.append({"eval_time": fires_at, "alertname": name,
                       "exp_alerts": [alert(name, **(labels or {"namespace": "wakegate-system"}))]})
    return {"interval": "1m", "input_series": [{"series": s, "values": v} for s, v in series.items()],
            "alert_rule_test": checks}


# Each alert: the situation it names (fires), then a healthy gateway (stays quiet).
CASES = {
    "replica down": case("WakegateReplicaDown", {f'up{{{NS}, instance="10.0.0.5:9090"}}': "1 1 0x10"},
                         "8m", "4m", job="wakegate", namespace="wakegate-system", instance="10.0.0.5:9090"),
    "replica up": case("WakegateReplicaDown", {f'up{{{NS}, instance="10.0.0.5:9090"}}': "1x20"}, None, "15m"),
    "API server unreachable": case("WakegateAPIServerUnreachable", {
        f'wakegate_backend_reachable{{{NS}, instance="a"}}': "1 0x10",
        f'wakegate_backend_reachable{{{NS}, instance="b"}}': "1x11"}, "8m", "3m"),
    "API server reachable": case("WakegateAPIServerUnreachable", {
        f'wakegate_backend_reachable{{{NS}, instance="a"}}': "1x20"}, None, "15m"),
    "no reaper leader": case("WakegateNoReaperLeader", {
        f'wakegate_reaper_leader{{{NS}, instance="a"}}': "1 0x20",
        f'wakegate_reaper_leader{{{NS}, instance="b"}}': "0x21"}, "15m", "5m"),
    "one reaper leader": case("WakegateNoReaperLeader", {
        f'wakegate_reaper_leader{{{NS}, instance="a"}}': "0x30",
        f'wakegate_reaper_leader{{{NS}, instance="b"}}': "1x30"}, None, "25m"),
    "scale errors": case("WakegateScaleErrors", {
        f'wakegate_scale_operations_total{{{NS}, instance="a", direction="up", result="error"}}': "0 0 0 1 2 3",
        }, "5m", "1m", namespace="wakegate-system", direction="up"),
    "scale operations ok": case("WakegateScaleErrors", {
        f'wakegate_scale_operations_total{{{NS}, instance="a", direction="up", result="ok"}}': "0+5x20",
        f'wakegate_scale_operations_total{{{NS}, instance="a", direction="up", result="error"}}': "0x20",
        }, None, "15m"),
    "wakes failing": case("WakegateWakesFailing", {
        f'wakegate_wakeups_total{{{NS}, instance="a", result="failed"}}': "0+10x60",
        f'wakegate_wakeups_total{{{NS}, instance="a", result="ready"}}': "0+1x60"}, "40m", "10m"),
    "wakes mostly ready": case("WakegateWakesFailing", {
        f'wakegate_wakeups_total{{{NS}, instance="a", result="ready"}}': "0+10x60",
        f'wakegate_wakeups_total{{{NS}, instance="a", result="timeout"}}': "0+1x60"}, None, "40m"),
    "wakes slow": case("WakegateWakesSlow", {
        f'wakegate_wakeup_duration_seconds_bucket{{{NS}, instance="a", le="60.0"}}': "0x90",
        f'wakegate_wakeup_duration_seconds_bucket{{{NS}, instance="a", le="120.0"}}': "0+2x90",
        f'wakegate_wakeup_duration_seconds_bucket{{{NS}, instance="a", le="+Inf"}}': "0+2x90"}, "75m", "20m"),
    "wakes quick": case("WakegateWakesSlow", {
        f'wakegate_wakeup_duration_seconds_bucket{{{NS}, instance="a", le="5.0"}}': "0+2x90",
        f'wakegate_wakeup_duration_seconds_bucket{{{NS}, instance="a", le="60.0"}}': "0+2x90",
        f'wakegate_wakeup_duration_seconds_bucket{{{NS}, instance="a", le="+Inf"}}': "0+2x90"}, None, "75m"),
    "requests rejected": case("WakegateRequestsRejected", {
        f'wakegate_held_rejected_total{{{NS}, instance="a", reason="overflow"}}': "0+60x30"}, "20m", "5m",
        namespace="wakegate-system", reason="overflow"),
    "a rare rejection": case("WakegateRequestsRejected", {
        f'wakegate_held_rejected_total{{{NS}, instance="a", reason="overflow"}}': "0+1x30",
        f'wakegate_held_rejected_total{{{NS}, instance="a", reason="rate_limited"}}': "0+60x30"}, None, "25m"),
}


def promtool_test(tmp_path: Path, tests: list[dict[str, Any]]) -> subprocess.CompletedProcess[str]:
    spec = tmp_path / "wakegate.test.yaml"
    spec.write_text(yaml.safe_dump({"rule_files": [str(RULES)], "evaluation_interval": "1m", "tests": tests}))
    return subprocess.run([ensure_promtool(), "test", "rules", str(spec)], capture_output=True, text=True,
                          timeout=120, check=False)


def test_the_rule_file_the_operator_rule_and_the_chart_carry_the_same_groups() -> None:
    plain = yaml.safe_load(RULES.read_text())
    assert yaml.safe_load(OPERATOR_RULE.read_text())["spec"] == plain
    assert yaml.safe_load(CHART_RULES.read_text()) == plain


def test_promtool_accepts_the_rule_file() -> None:
    out = subprocess.run([ensure_promtool(), "check", "rules", str(RULES)], capture_output=True, text=True,
                         timeout=60, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS: 7 rules found" in out.stdout


def test_every_alert_has_a_case_that_fires_and_one_that_stays_quiet() -> None:
    fired = {c["alert_rule_test"][-1]["alertname"] for c in CASES.values() if c["alert_rule_test"][-1]["exp_alerts"]}
    assert fired == set(rules())
    quiet = {c["alert_rule_test"][0]["alertname"] for c in CASES.values() if len(c["alert_rule_test"]) == 1}
    assert quiet == set(rules())


@pytest.mark.parametrize("name", sorted(CASES))
def test_alert(name: str, tmp_path: Path) -> None:
    out = promtool_test(tmp_path, [CASES[name]])
    assert out.returncode == 0, out.stdout + out.stderr


def test_promtool_fails_a_wrong_expectation(tmp_path: Path) -> None:
    # The negative control: the healthy replica's case, expecting the alert anyway, must fail.
    wrong = case("WakegateReplicaDown", {f'up{{{NS}, instance="x"}}': "1x20"}, None, "15m")
    wrong["alert_rule_test"][0]["exp_alerts"] = [alert("WakegateReplicaDown", instance="x", job="wakegate",
                                                       namespace="wakegate-system")]
    out = promtool_test(tmp_path, [wrong])
    assert out.returncode != 0 and "WakegateReplicaDown" in out.stdout + out.stderr
