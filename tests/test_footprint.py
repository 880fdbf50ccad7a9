"""What keeps the gateway small with 10,000s of known projects (the RSS itself is measured in
bench/, scenario ``projects``): no Kubernetes client in a local gateway, compact per-project state,
and projects-file entries that share what they have in common."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import aiohttp
import yaml

from gateway.backends.base import ProjectInfo
from gateway.backends.local import LocalBackend, load_projects_file
from gateway.config import Settings
from gateway.lifecycle import Lifecycle, Project
from tests.ops_support import GatewayProcess, write_projects

_IMPORTED = re.compile(r"^import time:\s+\d+ \|\s+\d+ \|\s*(\S+)\s*$")


async def test_local_serve_never_imports_the_kubernetes_client(tmp_path: Path) -> None:
    # kubernetes_asyncio (via the provisioner's `wakegate project` commands) cost ~40 MB of RSS.
    projects = write_projects(tmp_path, {"alpha": {}})
    gw = await GatewayProcess.start(projects, env={"PYTHONPROFILEIMPORTTIME": "1"})
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
            async with http.get(gw.url + "/", headers={"Host": "alpha.localhost"}) as resp:
                assert resp.status == 200  # a wake: the backend's spawn path has run too
            async with http.get(gw.admin_url + "/metrics") as resp:
                assert resp.status == 200
    finally:
        await gw.kill()
    imported = {m.group(1) for m in map(_IMPORTED.match, gw.raw) if m}
    assert {"gateway.service", "gateway.backends.local", "aiohttp"} <= imported  # the listing works
    heavy = sorted(name for name in imported
                   if name.split(".")[0] in ("kubernetes_asyncio", "kubernetes_validate", "provisioner")
                   or name == "gateway.backends.kubernetes")
    assert heavy == []


def test_project_state_has_slots_and_nothing_allocated_until_needed() -> None:
    settings = Settings()
    a, b = Project(ProjectInfo("a"), settings), Project(ProjectInfo("b"), settings)
    assert not hasattr(a, "__dict__")
    # Asleep projects share one empty set of waiters and one (immutable) machine.
    assert a._waiters is b._waiters and not a._waiters
    assert a.machine is b.machine


async def test_held_requests_get_a_set_of_their_own_and_give_it_back(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"projects": {"a": {"command": ["/bin/false"]}, "b": {"command": ["/bin/false"]}}}))
    lc = Lifecycle(LocalBackend(Settings(projects_file=path)), Settings(projects_file=path))
    await lc.start()
    try:
        a, b = lc.projects["a"], lc.projects["b"]
        empty = b._waiters
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        a._add_waiter(fut)
        assert a._waiters == {fut} and b._waiters is empty and not empty
        a._discard_waiter(fut)
        assert a._waiters is empty
    finally:
        await lc.close()


def test_projects_file_entries_share_equal_values(tmp_path: Path) -> None:
    same = {"command": ["/srv/app", "--port", "$PORT"], "env": {"MODE": "x"}, "idle_timeout_s": 60}
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"projects": {
        "one": dict(same), "two": dict(same), "three": {**same, "command": ["/srv/other"]},
    }}))
    table = load_projects_file(path)
    one, two, three = table["one"], table["two"], table["three"]
    assert one.command == ("/srv/app", "--port", "$PORT")
    assert one.command is two.command and three.command == ("/srv/other",)
    assert dict(one.env) == {"MODE": "x"} and one.env is two.env is three.env
    assert one.settings.idle_timeout_s == 60 and one.settings is two.settings is three.settings
    assert one.cwd is two.cwd is three.cwd
    assert [name for name, proj in table.items() if proj.name != name] == []


async def test_the_local_table_is_kept_not_rebuilt(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"projects": {n: {"command": ["/bin/false"]} for n in ("a", "b")}}))
    backend = LocalBackend(Settings(projects_file=path))
    await backend.start()
    try:
        first, second = backend.projects(), backend.projects()
        assert set(first) == {"a", "b"}
        assert first["a"] is second["a"] and first["b"] is second["b"]
    finally:
        await backend.close()
