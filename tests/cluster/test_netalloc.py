"""Unit tests for the pod-network slot allocation (pure logic, no root needed)."""

from __future__ import annotations

import ipaddress
import json

import pytest

from tests.cluster import netalloc
from tests.cluster.netalloc import NetworkConflict, Route, free_slot, parse_routes
from tests.cluster.node_agent import expand, node_cidrs


def routes(*entries: dict[str, str]) -> list[Route]:
    return parse_routes(json.dumps(list(entries)))


HOST = (
    {"dst": "default", "gateway": "192.0.2.1", "dev": "eth0"},
    {"dst": "192.0.2.0/24", "dev": "eth0", "protocol": "kernel"},
    {"type": "local", "dst": "127.0.0.0/8", "dev": "lo", "table": "local"},
)


def test_first_slot_on_a_clean_host() -> None:
    assert free_slot(routes(*HOST), taken=set()) == 0


def test_skips_taken_slots_and_slots_routed_by_other_clusters() -> None:
    ours = (
        {"dst": "198.18.0.0/24", "dev": "wgbr0", "protocol": "kernel"},
        {"type": "unreachable", "dst": "198.19.1.0/24", "protocol": netalloc.ROUTE_PROTO},
        {"type": "local", "dst": "198.18.0.1", "dev": "wgbr0", "table": "local"},
    )
    assert free_slot(routes(*HOST, *ours), taken={2}) == 3


def test_foreign_route_inside_the_range_refuses_everything() -> None:
    foreign = {"dst": "198.18.7.0/24", "dev": "eth0", "protocol": "static"}
    with pytest.raises(NetworkConflict, match=r"198\.18\.7\.0/24"):
        free_slot(routes(*HOST, foreign), taken=set())


def test_foreign_route_covering_the_range_refuses_everything() -> None:
    with pytest.raises(NetworkConflict):
        free_slot(routes(*HOST, {"dst": "198.0.0.0/8", "dev": "tun0"}), taken=set())


def test_unreachable_route_without_our_tag_is_foreign() -> None:
    with pytest.raises(NetworkConflict):
        free_slot(routes({"type": "unreachable", "dst": "198.19.4.0/24", "protocol": "boot"}), taken=set())


def test_all_slots_taken() -> None:
    assert free_slot(routes(*HOST), taken=set(range(netalloc.SLOTS))) is None


def test_slot_ranges() -> None:
    assert str(netalloc.pod_subnet(5)) == "198.18.5.0/24"
    assert str(netalloc.service_subnet(5)) == "198.19.5.0/24"
    assert netalloc.bridge_name(5) == "wgbr5"
    assert netalloc.node_netns(5) == "wgn5"
    assert str(netalloc.node_address(5)) == "198.18.5.254"
    assert str(netalloc.private_address(5)) == "10.255.5.1"
    assert netalloc.private_address(5).is_private and netalloc.node_address(5) in netalloc.pod_subnet(5)


def test_node_cidrs_split_the_slot() -> None:
    subnet = ipaddress.IPv4Network("198.18.3.0/24")
    assert node_cidrs(subnet, 1) == [subnet]
    assert [str(c) for c in node_cidrs(subnet, 3)] == ["198.18.3.0/26", "198.18.3.64/26", "198.18.3.128/26"]


def test_env_var_expansion() -> None:
    env = {"A": "x", "B": "y"}
    assert expand("$(A)-$(B)-$(C)-$$(A)", env) == "x-y-$(C)-$(A)"
