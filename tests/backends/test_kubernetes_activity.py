"""Shared activity records (annotations) and leader-election decisions — pure logic."""

from __future__ import annotations

import re

import pytest

from gateway.backends.k8s import activity as a
from gateway.backends.k8s import leader as le
from provisioner import labels as L

NAME_PART = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?")


# --- replica keys ----------------------------------------------------------------------------------


def test_replica_key_keeps_clean_ids() -> None:
    assert a.replica_key("wakegate-7d9f-abcde") == "wakegate.io/activity.wakegate-7d9f-abcde"


@pytest.mark.parametrize("rid", ["Host_Name-12", "-lead", "x" * 80, "a/b:c", "", "...", "pod.name."])
def test_replica_key_is_always_a_valid_annotation_name(rid: str) -> None:
    key = a.replica_key(rid)
    prefix, name = key.split("/", 1)
    assert prefix == "wakegate.io"
    assert NAME_PART.fullmatch(name), name
    assert key == a.replica_key(rid)  # stable


def test_replica_keys_of_similar_ids_differ() -> None:
    assert a.replica_key("Host_A") != a.replica_key("host-a")
    assert a.replica_key("x" * 80) != a.replica_key("x" * 81)


# --- records -------------------------------------------------------------------------------------


def test_encode_decode_round_trip() -> None:
    rec = a.ActivityRecord(1700000000.5, 3, 1700000001.25)
    assert a.encode(rec) == "1700000000.500;3;1700000001.250"
    assert a.decode(a.encode(rec)) == rec


@pytest.mark.parametrize("value", ["", "1;2", "a;1;2", "1;x;2", "1;-1;2", "nan;0;1", "1;0;inf", "1;2;3;4"])
def test_decode_rejects_garbage(value: str) -> None:
    assert a.decode(value) is None


def ann(**records: tuple[float, int, float]) -> dict[str, str]:
    return {a.ACTIVITY_PREFIX + k: a.encode(a.ActivityRecord(*v)) for k, v in records.items()}


def test_shared_activity_ignores_own_record_and_stale_claims() -> None:
    annotations = {
        **ann(me=(990.0, 5, 999.0), other=(950.0, 2, 995.0), dead=(900.0, 7, 980.0), idle=(970.0, 0, 970.0)),
        a.ACTIVITY_PREFIX + "broken": "junk",
        "unrelated": "1;1;1",
    }
    last, in_flight = a.shared_activity(annotations, a.ACTIVITY_PREFIX + "me", now_s=1000.0, write_interval_s=5.0)
    assert last == 970.0  # latest of the others, stale ones included (it is a real past activity)
    assert in_flight == 2  # "dead" last wrote 20 s ago > 3 intervals: its claim is ignored


def test_shared_activity_with_no_other_replicas() -> None:
    assert a.shared_activity({}, "k", 0.0, 5.0) == (None, 0)
    assert a.shared_activity(ann(me=(1.0, 1, 1.0)), a.ACTIVITY_PREFIX + "me", 2.0, 5.0) == (None, 0)


def test_claim_freshness_boundary() -> None:
    annotations = ann(other=(100.0, 1, 100.0))
    assert a.shared_activity(annotations, "x", 115.0, 5.0)[1] == 1
    assert a.shared_activity(annotations, "x", 115.1, 5.0)[1] == 0


def test_prunable_records() -> None:
    annotations = {**ann(old=(10.0, 0, 20.0), fresh=(10.0, 0, 990.0), recent=(995.0, 0, 20.0)),
                   a.ACTIVITY_PREFIX + "broken": "junk", L.LAST_ACTIVITY_ANNOTATION: "x"}
    assert a.prunable(annotations, now_s=1000.0, keep_s=100.0) == [a.ACTIVITY_PREFIX + "broken",
                                                                    a.ACTIVITY_PREFIX + "old"]


def test_activity_patch_never_moves_last_activity_backwards() -> None:
    rec = a.ActivityRecord(1700000000.0, 1, 1700000001.0)
    patch = a.activity_patch("wakegate.io/activity.me", rec, None)
    assert patch == {"metadata": {"annotations": {
        "wakegate.io/activity.me": "1700000000.000;1;1700000001.000",
        L.LAST_ACTIVITY_ANNOTATION: "2023-11-14T22:13:20.000000Z"}}}
    later = a.activity_patch("wakegate.io/activity.me", rec, "2023-11-14T22:13:25Z")
    assert later == {"metadata": {"annotations": {"wakegate.io/activity.me": "1700000000.000;1;1700000001.000"}}}
    garbage = a.activity_patch("wakegate.io/activity.me", rec, "not a time")
    assert L.LAST_ACTIVITY_ANNOTATION in garbage["metadata"]["annotations"]  # type: ignore[index]


def test_prune_patch() -> None:
    assert a.prune_patch(["k1", "k2"]) == {"metadata": {"annotations": {"k1": None, "k2": None}}}


# --- leader election -----------------------------------------------------------------------------


def rec(holder: str | None, rv: str = "1", duration: float = 15.0, transitions: int = 0) -> le.LeaseRecord:
    return le.LeaseRecord(holder=holder, duration_s=duration, resource_version=rv, transitions=transitions,
                          acquire_time="2024-01-01T00:00:00.000000Z")


def test_decide_create_renew_takeover_follow() -> None:
    assert le.decide(None, "me", 0.0, 0.0, 15.0) is le.Action.CREATE
    assert le.decide(rec("me"), "me", 0.0, 100.0, 15.0) is le.Action.RENEW
    assert le.decide(rec(None), "me", 99.0, 100.0, 15.0) is le.Action.TAKE_OVER  # released
    assert le.decide(rec("other"), "me", 90.0, 100.0, 15.0) is le.Action.FOLLOW
    assert le.decide(rec("other"), "me", 85.0, 100.0, 15.0) is le.Action.TAKE_OVER  # unchanged for 15 s
    assert le.decide(rec("other", duration=0.0), "me", 90.0, 100.0, 5.0) is le.Action.TAKE_OVER  # default used


def test_parse_lease() -> None:
    lease = {"metadata": {"resourceVersion": "77"},
             "spec": {"holderIdentity": "a", "leaseDurationSeconds": 10, "leaseTransitions": 4,
                      "acquireTime": "t"}}
    r = le.parse_lease(lease)
    assert r == le.LeaseRecord("a", 10.0, "77", 4, "t")
    assert r.version == ("a", "77")
    empty = le.parse_lease({"spec": {"holderIdentity": ""}})
    assert empty.holder is None and empty.duration_s == 0.0 and empty.transitions == 0


def test_lease_body_create_renew_and_takeover() -> None:
    created = le.lease_body("l", "ns", "me", 15.0, 1700000000.0, None)
    assert created["metadata"] == {"name": "l", "namespace": "ns"}
    assert created["spec"] == {"holderIdentity": "me", "leaseDurationSeconds": 15,
                               "renewTime": "2023-11-14T22:13:20.000000Z",
                               "acquireTime": "2023-11-14T22:13:20.000000Z", "leaseTransitions": 0}
    renewed = le.lease_body("l", "ns", "me", 15.0, 1700000010.0, rec("me", rv="5", transitions=2))
    assert renewed["metadata"]["resourceVersion"] == "5"
    assert renewed["spec"]["acquireTime"] == "2024-01-01T00:00:00.000000Z"
    assert renewed["spec"]["leaseTransitions"] == 2
    taken = le.lease_body("l", "ns", "me", 15.0, 1700000010.0, rec("other", rv="6", transitions=2))
    assert taken["spec"]["acquireTime"] == "2023-11-14T22:13:30.000000Z"
    assert taken["spec"]["leaseTransitions"] == 3
    assert le.lease_body("l", "ns", "me", 0.2, 0.0, None)["spec"]["leaseDurationSeconds"] == 1


def test_release_body_frees_the_lease() -> None:
    body = le.release_body("l", "ns", rec("me", rv="9", transitions=1), 1700000000.0)
    assert body["metadata"]["resourceVersion"] == "9"
    assert body["spec"]["holderIdentity"] is None
    assert body["spec"]["leaseDurationSeconds"] == 1
    assert le.decide(le.parse_lease({**body, "metadata": {"resourceVersion": "10"}}), "other", 0.0, 0.0, 15.0) \
        is le.Action.TAKE_OVER
