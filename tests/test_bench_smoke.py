"""Each benchmark scenario runs once in its tiny smoke configuration, so the suite cannot rot.

Benchmarks are not tests: nothing here looks at how fast anything was, only that every scenario
ran against real nginx, wrk, the load generator (``python -m bench.loadgen``) and ``wakegate serve``,
and wrote well-formed results (numbers present, finite, positive where a quantity cannot be negative).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.scenarios import SCENARIOS

ROOT = Path(__file__).resolve().parent.parent
# Differences (system - direct, with - without scraping) may come out below zero on a noisy machine,
# and so may "EndpointSlice ready → first byte": the bench's watch and the gateway's are two observers
# of one apiserver event, and the gateway's can receive it first.
SIGNED_METRICS = ("added", "EndpointSlice ready")
# Memory may not grow at all; a tiny smoke run may use less CPU than one clock tick (10 ms) of a
# process, which /proc reports as 0. API requests and watch events counted over a few seconds of
# steady state may be none at all (zero writes is the replicas scenario's target).
NON_NEGATIVE_METRICS = ("growth", "CPU used", "API writes", "API reads", "writes per active project",
                        "watch events")


# Start their own control plane: run with the other tests that need one (``-m cluster``).
KUBERNETES = "cold_start_k8s"
REPLICAS = "replicas"
LOCAL = [name for name in SCENARIOS if name not in (KUBERNETES, REPLICAS)]


def run_smoke(out: Path, names: list[str]) -> tuple[dict[str, Any], Path, str]:
    done = subprocess.run([sys.executable, "-m", "bench.run", "--smoke", "--only", ",".join(names), "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=540, check=False)
    log = done.stdout[-6000:] + done.stderr[-6000:]
    assert (out / "latest.json").exists(), f"no latest.json; output:\n{log}"
    return json.loads((out / "latest.json").read_text()), out, log


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path, str]:
    return run_smoke(tmp_path_factory.mktemp("bench"), LOCAL)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("name", LOCAL)
def test_scenario_produced_results(smoke: tuple[dict[str, Any], Path, str], name: str) -> None:
    check_scenario(smoke, name)


@pytest.mark.cluster
@pytest.mark.timeout(600)
def test_kubernetes_cold_start_scenario(tmp_path: Path) -> None:
    check_scenario(run_smoke(tmp_path, [KUBERNETES]), KUBERNETES)


@pytest.mark.cluster
@pytest.mark.timeout(600)
def test_replicas_scenario(tmp_path: Path) -> None:
    """API load vs replica count on the control plane, and the activity exchange in memory: every row
    well-formed, and the gateway's steady-state writes per active project reported for each replica
    count of the smoke configuration (a number and a verdict; how many is not asserted here)."""
    from bench.scenarios import SMOKE

    smoke = run_smoke(tmp_path, [REPLICAS])
    check_scenario(smoke, REPLICAS)
    doc, _, log = smoke
    rows = doc["scenarios"][REPLICAS]["rows"]
    for r in SMOKE.replica_counts:
        system = f"wakegate, {r} replica{'s' if r > 1 else ''}"
        mine = {row["metric"]: row for row in rows if row["system"] == system}
        for metric in ("gateway writes per active project per minute per replica",
                       "gateway writes per active project per minute per replica, excluding the Lease"):
            row = mine.get(metric)
            assert row is not None, f"{system}: no row {metric!r}; rows: {sorted(mine)}\n{log}"
            assert len(row["values"]) == 1 and isinstance(row["values"][0], float), row
            assert row["target"] is not None and isinstance(row["target"]["met"], bool), row
        for metric in ("API writes/s: kube-controller-manager", "API watch events sent/s (all watchers)"):
            assert metric in mine, f"{system}: no row {metric!r}"
        breakdown = doc["scenarios"][REPLICAS]["raw"]["by_replicas"][str(r)]
        assert isinstance(breakdown["flow_schemas"], dict) and breakdown["requests"]["sent"] > 0, breakdown
    scale = [row for row in rows if row["system"] == f"wakegate, {SMOKE.activity_projects:,} projects"]
    assert {row["unit"] for row in scale} == {"bytes", "ms"}, scale
    assert any(row["metric"].startswith("peer pull → decision") for row in scale), scale


def check_scenario(smoke: tuple[dict[str, Any], Path, str], name: str) -> None:
    doc, _, log = smoke
    scenario = doc["scenarios"].get(name)
    assert scenario is not None, f"{name} missing from latest.json"
    assert scenario["error"] is None, f"{name} failed: {scenario['error']}\n{log}"
    rows = scenario["rows"]
    assert rows, f"{name} produced no rows"
    for row in rows:
        label = f"{name}/{row['system']}/{row['metric']}"
        assert row["values"], label
        for key in ("median", "min", "max"):
            assert isinstance(row[key], int | float) and math.isfinite(row[key]), f"{label}: {key}={row[key]!r}"
        assert row["min"] <= row["median"] <= row["max"], label
        if any(s in row["metric"] for s in NON_NEGATIVE_METRICS):
            assert row["min"] >= 0, f"{label}: {row['values']}"
        elif not any(s in row["metric"] for s in SIGNED_METRICS):
            assert row["min"] > 0, f"{label}: {row['values']}"
        if row["target"] is not None:
            assert row["target"]["text"] and isinstance(row["target"]["met"], bool), label


@pytest.mark.timeout(600)
def test_every_system_measured(smoke: tuple[dict[str, Any], Path, str]) -> None:
    doc, _, log = smoke
    systems = {row["system"] for s in ("throughput", "latency", "streaming") for row in doc["scenarios"][s]["rows"]}
    assert systems == {"direct", "nginx", "wakegate"}, log
    for name in ("throughput", "streaming"):
        ratios = [r["vs_nginx"] for r in doc["scenarios"][name]["rows"] if r["system"] == "wakegate"
                  and r["metric"].endswith(("requests/s", "throughput"))]
        assert ratios and all(x > 0 for x in ratios), f"{name}: wakegate not compared with nginx"


@pytest.mark.timeout(600)
def test_report_files(smoke: tuple[dict[str, Any], Path, str]) -> None:
    doc, out, _ = smoke
    assert doc["machine"]["cpu"] and doc["machine"]["nginx"] and doc["config"]["smoke"] is True
    table = (out / "latest.md").read_text()
    assert "| Scenario | System |" in table and "wakegate" in table
    for chart in ("throughput.png", "latency.png"):
        assert (out / chart).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", chart
