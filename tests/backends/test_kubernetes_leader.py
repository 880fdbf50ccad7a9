"""Leader-election decisions of the idle reaper — pure logic."""

from __future__ import annotations

from gateway.backends.k8s import leader as le

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
