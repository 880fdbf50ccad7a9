"""The activity exchange between gateway replicas — pure rules (gateway.backends.k8s.peers)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.activity import SharedActivity
from gateway.backends.k8s import peers as pr

NOW = 1_700_000_000.0


def endpoint(ip: str, pod: str | None = None, **conditions: bool) -> dict[str, Any]:
    ep: dict[str, Any] = {"addresses": [ip], "conditions": conditions}
    if pod is not None:
        ep["targetRef"] = {"kind": "Pod", "name": pod, "namespace": "wakegate-system"}
    return ep


def slice_(*endpoints: dict[str, Any], port: int = 9090, name: str = "admin") -> dict[str, Any]:
    return {"ports": [{"name": "http", "port": 8080}, {"name": name, "port": port}], "endpoints": list(endpoints)}


# --- peers from EndpointSlices ---------------------------------------------------------------------


def test_peers_are_the_other_ready_or_terminating_endpoints_at_the_admin_port() -> None:
    s = slice_(
        endpoint("10.0.0.1", "gw-a", ready=True),
        endpoint("10.0.0.2", "gw-b", ready=True),
        endpoint("10.0.0.3", "gw-c", ready=False, terminating=True),  # draining: may hold connections
        endpoint("10.0.0.4", "gw-d", ready=False),  # starting or failing its probe: no traffic
        endpoint("10.0.0.5", "gw-e"),  # conditions unset: ready (discovery.k8s.io/v1)
    )
    assert pr.peers_from_slices([s], "admin", "gw-a") == (
        pr.Peer("gw-b", "10.0.0.2", 9090), pr.Peer("gw-c", "10.0.0.3", 9090), pr.Peer("gw-e", "10.0.0.5", 9090))


def test_own_endpoint_is_recognised_by_address_when_names_differ() -> None:
    s = slice_(endpoint("10.0.0.1", "pod-1", ready=True), endpoint("10.0.0.2", "pod-2", ready=True))
    assert [p.name for p in pr.peers_from_slices([s], "admin", "host-123", own_ip="10.0.0.1")] == ["pod-2"]


def test_endpoints_without_a_target_ref_are_named_by_address_and_merged_across_slices() -> None:
    a = slice_(endpoint("10.0.0.2", ready=True))
    b = slice_(endpoint("10.0.0.2", ready=True), endpoint("fd00::7", ready=True))
    assert pr.peers_from_slices([a, b], "admin", "me") == (pr.Peer("10.0.0.2", "10.0.0.2", 9090),
                                                           pr.Peer("fd00::7", "fd00::7", 9090))
    assert pr.Peer("x", "fd00::7", 9090).url == "http://[fd00::7]:9090"


def test_slices_without_the_named_port_or_addresses_give_no_peers() -> None:
    assert pr.peers_from_slices([slice_(endpoint("10.0.0.2", "b"), name="other")], "admin", "me") == ()
    assert pr.peers_from_slices([{"ports": [{"name": "admin", "port": 9090}],
                                  "endpoints": [{"addresses": [], "conditions": {}}]}], "admin", "me") == ()
    assert pr.peers_from_slices([{}], "admin", "me") == ()


# --- the wire format -------------------------------------------------------------------------------


def test_encode_keeps_open_or_recent_projects_and_round_trips() -> None:
    projects = {
        "busy": pr.Activity(NOW - 3600, 2),
        "recent": pr.Activity(NOW - 10, 0),
        "old": pr.Activity(NOW - 3600, 0),
        "never": pr.Activity(None, 0),
    }
    payload = pr.encode_activity("gw-b", NOW, projects, since_s=NOW - 300)
    assert set(payload["projects"]) == {"busy", "recent"}
    snap = pr.decode_activity(json.loads(json.dumps(payload)), asked_s=NOW)
    assert snap == pr.Snapshot(NOW, {"busy": pr.Activity(NOW - 3600, 2), "recent": pr.Activity(NOW - 10, 0)})


@pytest.mark.parametrize("payload", [
    None, [], {"projects": []}, {"projects": {"a": [1.0]}}, {"projects": {"a": ["x", 0]}},
    {"projects": {"a": [1.0, -1]}}, {"projects": {"a": [1.0, 1.5]}}, {"projects": {"a": [1.0, True]}},
    {"projects": {"a": [float("nan"), 0]}}, {"projects": {"a": [float("inf"), 0]}},
])
def test_a_malformed_answer_is_refused(payload: Any) -> None:
    with pytest.raises(ValueError):
        pr.decode_activity(payload, NOW)


# --- the verdict ----------------------------------------------------------------------------------

B, C = pr.Peer("gw-b", "10.0.0.2", 9090), pr.Peer("gw-c", "10.0.0.3", 9090)


def snap(asked_s: float, **projects: tuple[float | None, int]) -> pr.Snapshot:
    return pr.Snapshot(asked_s, {k: pr.Activity(*v) for k, v in projects.items()})


def test_no_peers_means_nothing_elsewhere() -> None:
    assert pr.verdict((), {}, "p", now_s=NOW, max_age_s=15) == SharedActivity()


def test_latest_activity_and_open_requests_are_combined_across_peers() -> None:
    snaps = {"gw-b": snap(NOW - 1, p=(NOW - 50, 1)), "gw-c": snap(NOW - 2, p=(NOW - 20, 2), q=(NOW, 0))}
    assert pr.verdict((B, C), snaps, "p", now_s=NOW, max_age_s=15) == SharedActivity(NOW - 20, 3)
    assert pr.verdict((B, C), snaps, "other", now_s=NOW, max_age_s=15) == SharedActivity()


def test_a_peer_without_a_fresh_answer_is_unknown() -> None:
    snaps = {"gw-b": snap(NOW - 16, p=(NOW - 50, 0))}
    v = pr.verdict((B, C), snaps, "p", now_s=NOW, max_age_s=15)
    assert v.unknown == ("gw-b", "gw-c")  # stale, and never answered
    assert pr.verdict((B,), snaps, "p", now_s=NOW - 1, max_age_s=15).unknown == ()  # exactly at the age: fresh


def test_snapshots_of_peers_no_longer_listed_do_not_count() -> None:
    snaps = {"gw-b": snap(NOW, p=(NOW, 5)), "gone": snap(NOW, p=(NOW, 9))}
    assert pr.verdict((B,), snaps, "p", now_s=NOW, max_age_s=15) == SharedActivity(NOW, 5)


# --- the last word before a sleep ------------------------------------------------------------------


@pytest.mark.parametrize(("seen", "confirmed", "upheld"), [
    (SharedActivity(), SharedActivity(), True),  # nothing anywhere, then or now
    (SharedActivity(NOW - 60), SharedActivity(NOW - 60), True),  # the activity the decision saw
    (SharedActivity(NOW - 60), SharedActivity(NOW - 90), True),  # older than what it saw
    (SharedActivity(NOW - 60), SharedActivity(NOW - 30), False),  # newer: a request since the last pull
    (SharedActivity(), SharedActivity(NOW - 30), False),  # activity the decision did not see at all
    (SharedActivity(NOW - 60), SharedActivity(NOW - 60, open=1), False),  # a request open there now
    (SharedActivity(NOW - 60), SharedActivity(NOW - 60, unknown=("gw-b",)), False),  # a peer did not answer
])
def test_confirms_idle_only_when_every_peer_upholds_the_decision(seen: SharedActivity, confirmed: SharedActivity,
                                                                 upheld: bool) -> None:
    assert pr.confirms_idle(seen, confirmed) is upheld
