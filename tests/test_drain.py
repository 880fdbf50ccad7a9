"""SIGTERM drains: the real ``wakegate serve`` finishes a slow response that started before the
signal, refuses new connections, reports not-ready, stops its projects and exits 0."""

from __future__ import annotations

import asyncio
import re
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import psutil
import pytest

from tests.ops_support import GatewayProcess, write_projects

DRAIN_TIMEOUT_S = 20.0
SLOW_S = 2.0
PARTS = 4


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[GatewayProcess]:
    projects = write_projects(tmp_path, {"slowpoke": {"env": {"SLOW_S": SLOW_S, "SLOW_PARTS": PARTS}}})
    gw = await GatewayProcess.start(projects, "--drain-timeout", str(DRAIN_TIMEOUT_S))
    try:
        yield gw
    finally:
        await gw.kill()


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def test_sigterm_lets_a_slow_response_finish(gateway: GatewayProcess) -> None:
    host = {"Host": "slowpoke.localhost"}
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout) as http, aiohttp.ClientSession(timeout=timeout) as admin:
        # Wake the project (a held request), and learn its process id.
        async with http.get(gateway.url + "/", headers=host) as resp:
            assert resp.status == 200, gateway.text()[-3000:]
            assert "real content of slowpoke" in await resp.text()
        async with admin.get(gateway.admin_url + "/api/v1/projects/slowpoke") as resp:
            info = await resp.json()
        match = re.search(r"\bpid (\d+)", info["location"])
        assert match, info
        project_pid = int(match.group(1))
        async with admin.get(gateway.admin_url + "/readyz") as resp:
            assert resp.status == 200

        # A slow response is under way when SIGTERM arrives.
        async def slow() -> tuple[int, bytes]:
            async with http.get(gateway.url + "/slow", headers=host) as resp:
                return resp.status, await resp.read()

        slow_task = asyncio.create_task(slow())
        await gateway.wait_event(lambda e: e.get("event") == "project_output" and e.get("line") == "slow-started")
        gateway.proc.send_signal(signal.SIGTERM)
        await gateway.wait_event(lambda e: e.get("event") == "draining")

        # During the drain: not ready, and new connections are refused.
        async with admin.get(gateway.admin_url + "/readyz") as resp:
            assert resp.status == 503
            assert "draining" in (await resp.json())["reason"]
        with pytest.raises(aiohttp.ClientConnectorError):
            async with aiohttp.ClientSession(timeout=timeout) as fresh:
                await fresh.get(gateway.url + "/", headers=host)
        assert not slow_task.done()

        # The response that started before the signal completes in full.
        status, body = await asyncio.wait_for(slow_task, DRAIN_TIMEOUT_S)
        assert status == 200
        assert body == b"x" * (1000 * PARTS)

    code = await gateway.wait_exit(DRAIN_TIMEOUT_S + 10)
    assert code == 0, gateway.text()[-3000:]
    (stopped,) = gateway.events("stopped")
    assert stopped["drained"] is True
    assert _gone(project_pid)  # local mode: the project processes are stopped too
