"""Session-wide: the cluster fixtures, and a refusal to test stale compiled modules."""

import pytest

from gateway import native

pytest_plugins = ["tests.cluster.fixtures"]


def pytest_sessionstart(session: pytest.Session) -> None:
    # A module compiled before its source was edited would be imported instead of the source.
    try:
        native.check()
    except native.NativeError as exc:
        pytest.exit(str(exc), returncode=4)
