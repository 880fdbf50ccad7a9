"""pytest plugin: the ``cluster`` and ``network_policies`` markers and their clusters.

Loaded from ``tests/conftest.py`` (``pytest_plugins = ["tests.cluster.fixtures"]``). ``cluster``
starts a private control plane plus one node agent for the session (see
:class:`tests.cluster.controlplane.Cluster`) and tears it down at the end. Tests marked
``network_policies`` get ``policy_cluster``, a second one whose NetworkPolicies are enforced
(kube-router, :mod:`tests.cluster.netpol`); such a test fails — never skips — when that engine is
not running. When a test that used a cluster fails, the tails of its logs are attached to the report.
Set ``WAKEGATE_CLUSTER_KEEP=1`` to keep the state directory (logs, etcd data) after the session.
"""

from __future__ import annotations

from collections.abc import Generator

import pytest

from tests.cluster.controlplane import Cluster


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "cluster: needs the real Kubernetes test control plane (root)")
    config.addinivalue_line(
        "markers", "network_policies: needs NetworkPolicies enforced (the policy_cluster; fails without its engine)"
    )


@pytest.fixture(scope="session")
def cluster() -> Generator[Cluster, None, None]:
    """A fresh control plane + one node agent for this test session."""
    instance = Cluster.start()
    try:
        yield instance
    finally:
        instance.stop()


@pytest.fixture(scope="session")
def policy_cluster() -> Generator[Cluster, None, None]:
    """A control plane + node agent + NetworkPolicy engine for this session (started on first use)."""
    instance = Cluster.start(network_policies=True)
    try:
        yield instance
    finally:
        instance.stop()


@pytest.fixture(autouse=True)
def _network_policies_enforced(request: pytest.FixtureRequest) -> None:
    """Tests marked ``network_policies`` run only while the engine runs: otherwise they fail."""
    if request.node.get_closest_marker("network_policies") is None:
        return
    instance: Cluster = request.getfixturevalue("policy_cluster")
    if not instance.policy_engine_running():
        engine = instance.components.get("network-policy")
        pytest.fail(
            "NetworkPolicies are not enforced: the engine (kube-router) of the policy cluster is not running"
            + (f"\n{engine.tail(30)}" if engine else " (it was never started)"),
            pytrace=False,
        )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed:
        for name in ("cluster", "policy_cluster"):
            instance = getattr(item, "funcargs", {}).get(name)
            if isinstance(instance, Cluster):
                report.sections.append((f"{name} logs", instance.logs_tail(30)))
    return report
