"""Optional backend capabilities are declared on the Backend interface: SIGHUP (Service.reload)
re-reads the table of a backend that supports it and is refused, with a log, by one that does not."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pytest

from gateway.backends.base import Backend
from gateway.backends.kubernetes import KubernetesBackend
from gateway.backends.local import LocalBackend
from gateway.config import HostPort, Settings
from gateway.service import Service
from tests.ops_support import write_projects


def test_which_backends_reload() -> None:
    assert Backend.supports_reload is False
    assert LocalBackend.supports_reload is True
    assert KubernetesBackend.supports_reload is False  # it watches its table: nothing to re-read


def _settings(**kw: object) -> Settings:
    base = Settings(listen=HostPort("127.0.0.1", 0), admin_listen=HostPort("127.0.0.1", 0), drain_timeout_s=1.0)
    return dataclasses.replace(base, **kw)


async def test_reload_rereads_the_projects_file(tmp_path: Path) -> None:
    path = write_projects(tmp_path, {"alpha": {}})
    service = Service(_settings(projects_file=path))
    await service.start()
    try:
        assert sorted(service.lifecycle.projects) == ["alpha"]
        write_projects(tmp_path, {"alpha": {}, "beta": {}})
        await service.reload()
        assert sorted(service.lifecycle.projects) == ["alpha", "beta"]
    finally:
        await service.stop()


async def test_reload_is_refused_by_a_backend_without_it(caplog: pytest.LogCaptureFixture) -> None:
    settings = _settings(backend="kubernetes", kubeconfig=Path("/nonexistent/kubeconfig"))
    service = Service(settings)  # not started: a reload must not touch the backend at all
    with caplog.at_level(logging.WARNING):
        await service.reload()
    refused = [r for r in caplog.records if getattr(r, "event", None) == "reload_unsupported"]
    assert len(refused) == 1 and getattr(refused[0], "backend", None) == "kubernetes"
