"""A gateway that dies without stopping its projects (SIGKILL, OOM kill) does not leave their
processes running: the kernel sends each one SIGTERM (PR_SET_PDEATHSIG)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path

import aiohttp

from tests.ops_support import GatewayProcess, write_projects

GONE_TIMEOUT_S = 10.0


async def wait_gone(pid: int, timeout_s: float) -> None:
    """Until process ``pid`` (not our child) has exited: its pidfd becomes readable."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    loop = asyncio.get_running_loop()
    exited = loop.create_future()
    loop.add_reader(fd, lambda: exited.done() or exited.set_result(None))
    try:
        await asyncio.wait_for(exited, timeout_s)
    finally:
        loop.remove_reader(fd)
        os.close(fd)


def running(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie waiting to be reaped."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


async def test_project_process_ends_when_the_gateway_is_killed(tmp_path: Path) -> None:
    projects = write_projects(tmp_path, {"alpha": {}})
    gw = await GatewayProcess.start(projects)
    pid = None
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http, \
                http.get(gw.url + "/", headers={"Host": "alpha.localhost"}) as resp:
            assert resp.status == 200
        started = await gw.wait_event(lambda e: e.get("event") == "project_started" and e.get("project") == "alpha")
        pid = int(started["pid"])
        assert running(pid)
        assert os.getsid(pid) == pid  # still in a session of its own (scale-down ends its group)
        os.kill(gw.proc.pid, signal.SIGKILL)  # the gateway alone: the project is in another session
        await asyncio.wait_for(gw.proc.wait(), GONE_TIMEOUT_S)
        await wait_gone(pid, GONE_TIMEOUT_S)
        assert not running(pid)
    finally:
        await gw.kill()
        if pid is not None and running(pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
