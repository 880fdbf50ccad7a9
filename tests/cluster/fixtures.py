"""pytest plugin: the ``cluster`` marker and the session-scoped ``cluster`` fixture.

Loaded from ``tests/conftest.py`` (``pytest_plugins = ["tests.cluster.fixtures"]``). The fixture
starts a private control plane plus one node agent for the session (see
:class:`tests.cluster.controlplane.Cluster`) and tears it down at the end. When a test that used
it fails, the tails of the control-plane logs are attached to the report.
Set ``WAKEGATE_CLUSTER_KEEP=1`` to keep the state directory (logs, etcd data) after the session.
"""

from __future__ import annotations

from collections.abc import Generator

import pytest

from tests.cluster.controlplane import Cluster


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "cluster: needs the real Kubernetes test control plane (root)")


@pytest.fixture(scope="session")
def cluster() -> Generator[Cluster, None, None]:
    """A fresh control plane + one node agent for this test session."""
    instance = Cluster.start()
    try:
        yield instance
    finally:
        instance.stop()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed:
        instance = getattr(item, "funcargs", {}).get("cluster")
        if isinstance(instance, Cluster):
            report.sections.append(("cluster logs", instance.logs_tail(30)))
    return report
