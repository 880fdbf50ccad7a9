"""The local backend: real child processes, real sockets, a recording listener (no mocks)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import textwrap
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

from gateway.backends.base import BackendError, Endpoint
from gateway.backends.local import LocalBackend, probe
from gateway.backends.local_projects import ProjectsFileError, load_projects_file, parse_projects
from gateway.config import Settings
from gateway.demo import PROJECTS_FILE

WAIT_S = 20.0

# A stdlib-only project app. MODE: serve | fail | ignore-term. GET /env answers its environment,
# /healthz answers 503 until it was asked UNHEALTHY_PROBES times, /exit ends the process.
APP = textwrap.dedent(
    """
    import json, os, signal, subprocess, sys, time
    from http.server import BaseHTTPRequestHandler, HTTPServer

    mode = os.environ.get("MODE", "serve")
    print("app starting on", os.environ["PORT"], flush=True)
    print("a line on stderr", file=sys.stderr, flush=True)
    if mode == "fail":
        for i in range(30):
            print(f"boot error line {i}", file=sys.stderr)
        sys.exit(3)
    if mode == "ignore-term":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if os.environ.get("GRANDCHILD_PID_FILE"):
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        with open(os.environ["GRANDCHILD_PID_FILE"], "w") as f:
            f.write(str(child.pid))
    time.sleep(float(os.environ.get("BOOT_DELAY_S", "0")))
    health = {"asked": 0}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            if self.path == "/healthz":
                health["asked"] += 1
                ok = health["asked"] > int(os.environ.get("UNHEALTHY_PROBES", "0"))
                self._send(200 if ok else 503, str(health["asked"]))
            elif self.path == "/env":
                self._send(200, json.dumps(dict(os.environ)))
            elif self.path == "/exit":
                self._send(200, "bye")
                self.wfile.flush()
                os._exit(0)
            else:
                self._send(200, "hello from " + os.environ.get("NAME", "?"))

        def _send(self, status, text):
            data = text.encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)

    HTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
    """
)


class Recorder:
    """A real BackendListener that records what the backend reports, awaitably."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, Any]] = []
        self._changed = asyncio.Condition()
        self.table_changes = 0

    def _record(self, event: tuple[str, str, Any]) -> None:
        self.events.append(event)

        async def notify() -> None:
            async with self._changed:
                self._changed.notify_all()

        asyncio.get_running_loop().create_task(notify())

    def endpoints_changed(self, name: str, endpoints: Sequence[Endpoint]) -> None:
        self._record(("endpoints", name, list(endpoints)))

    def wake_failed(self, name: str, reason: str) -> None:
        self._record(("failed", name, reason))

    def projects_changed(self) -> None:
        self.table_changes += 1

    async def next(self, name: str, start: int = 0) -> tuple[int, tuple[str, str, Any]]:
        """The first event for ``name`` at index >= ``start`` (waits for it)."""
        async with asyncio.timeout(WAIT_S), self._changed:
            while True:
                for i in range(start, len(self.events)):
                    if self.events[i][1] == name:
                        return i, self.events[i]
                await self._changed.wait()


def write_projects(tmp_path: Path, projects: dict[str, dict[str, Any]]) -> Path:
    (tmp_path / "app.py").write_text(APP)
    for spec in projects.values():
        spec.setdefault("command", ["{python}", "{here}/app.py"])
    path = tmp_path / "projects.yaml"
    path.write_text(yaml.safe_dump({"projects": projects}))
    return path


def wait_gone(pid: int, timeout_s: float) -> bool:
    """Wait (bounded) until ``pid`` has ended or is a zombie; whether it did."""
    try:
        proc = psutil.Process(pid)
        proc.wait(timeout_s)
    except psutil.NoSuchProcess:
        return True
    except psutil.TimeoutExpired:
        return gone(pid)
    return True


def gone(pid: int) -> bool:
    """Whether ``pid`` has ended (a zombie that only waits for init to reap it counts as ended)."""
    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


async def http_get(ep: Endpoint, path: str = "/") -> tuple[int, str]:
    reader, writer = await asyncio.open_connection(ep.host, ep.port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = await asyncio.wait_for(reader.read(), WAIT_S)
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode()


@pytest.fixture
async def make_backend(tmp_path: Path) -> AsyncIterator[Any]:
    backends: list[LocalBackend] = []

    async def make(projects: dict[str, dict[str, Any]], **settings: Any) -> tuple[LocalBackend, Recorder]:
        path = write_projects(tmp_path, projects)
        backend = LocalBackend(Settings(projects_file=path, **{"stop_grace_s": 5.0, **settings}))
        rec = Recorder()
        backend.set_listener(rec)
        await backend.start()
        backends.append(backend)
        return backend, rec

    yield make
    for backend in backends:
        await backend.close()


# --- the projects file ---------------------------------------------------------------------------


def test_demo_projects_file_is_valid() -> None:
    table = load_projects_file(PROJECTS_FILE)
    assert set(table) == {"hello", "chat", "slow"}
    for proj in table.values():
        assert proj.command[0] == sys.executable
        assert Path(proj.command[1]).is_file()
        assert proj.cwd == PROJECTS_FILE.parent


def test_parse_substitutes_placeholders_and_defaults(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    table = parse_projects(
        {"projects": {
            "web": {"command": ["{python}", "{here}/x.py", "{{literal}}"], "env": {"A": 1, "B": "two", "C": 1.5},
                    "ready_path": "/ready", "cwd": "sub", "idle_timeout_s": 5, "hold_timeout_s": 2.5,
                    "strategy": "block"},
            "api": {"command": ["api"]},
        }},
        path,
    )
    web = table["web"]
    assert web.command == (sys.executable, f"{tmp_path.resolve()}/x.py", "{literal}")
    assert dict(web.env) == {"A": "1", "B": "two", "C": "1.5"}
    assert web.ready_path == "/ready"
    assert web.cwd == tmp_path.resolve() / "sub"
    assert (web.settings.idle_timeout_s, web.settings.hold_timeout_s, web.settings.strategy) == (5.0, 2.5, "block")
    api = table["api"]
    assert api.cwd == tmp_path.resolve()
    assert api.ready_path is None and dict(api.env) == {}
    assert (api.settings.idle_timeout_s, api.settings.hold_timeout_s, api.settings.strategy) == (None, None, None)


def test_parse_mode(tmp_path: Path) -> None:
    table = parse_projects({"projects": {
        "kept": {"command": ["x"], "mode": "Running"},
        "off": {"command": ["x"], "mode": "Suspended"},
        "auto": {"command": ["x"], "mode": "Auto"},
        "plain": {"command": ["x"]},
        "null": {"command": ["x"], "mode": None},
    }}, tmp_path / "p.yaml")
    assert {name: proj.settings.mode for name, proj in table.items()} == {
        "kept": "Running", "off": "Suspended", "auto": "Auto", "plain": None, "null": None}


def test_empty_project_table_is_allowed(tmp_path: Path) -> None:
    assert parse_projects({"projects": {}}, tmp_path / "p.yaml") == {}


@pytest.mark.parametrize(
    ("doc", "needles"),
    [
        (None, ["'projects' key"]),
        ([], ["'projects' key"]),
        ({"project": {}}, ["'projects' key"]),
        ({"projects": {}, "extra": 1}, ["unknown top-level key", "extra"]),
        ({"projects": []}, ["projects:", "mapping"]),
        ({"projects": {"Hello": {"command": ["x"]}}}, ["project 'Hello'", "invalid project name"]),
        ({"projects": {"1a": {"command": ["x"]}}}, ["project '1a'", "invalid project name"]),
        ({"projects": {"a_b": {"command": ["x"]}}}, ["project 'a_b'", "invalid project name"]),
        ({"projects": {5: {"command": ["x"]}}}, ["project 5", "invalid project name"]),
        ({"projects": {"web": None}}, ["project 'web'", "expected a mapping"]),
        ({"projects": {"web": ["x"]}}, ["project 'web'", "expected a mapping"]),
        ({"projects": {"web": {"command": ["x"], "comand": 1}}}, ["project 'web'", "unknown key", "comand"]),
        ({"projects": {"web": {}}}, ["project 'web'", "command:", "required"]),
        ({"projects": {"web": {"command": []}}}, ["project 'web'", "command:", "empty"]),
        ({"projects": {"web": {"command": [""]}}}, ["project 'web'", "command:", "empty"]),
        ({"projects": {"web": {"command": "python3 app.py"}}}, ["project 'web'", "command:", "list of strings"]),
        ({"projects": {"web": {"command": ["python3", 5]}}}, ["project 'web'", "command:", "list of strings"]),
        ({"projects": {"web": {"command": ["{pyhton}"]}}}, ["project 'web'", "command:", "placeholder"]),
        ({"projects": {"web": {"command": ["x"], "env": ["A=1"]}}}, ["project 'web'", "env:", "mapping"]),
        ({"projects": {"web": {"command": ["x"], "env": {"A": None}}}}, ["project 'web'", "env.A:"]),
        ({"projects": {"web": {"command": ["x"], "env": {"A": True}}}}, ["project 'web'", "env.A:"]),
        ({"projects": {"web": {"command": ["x"], "env": {"A": [1]}}}}, ["project 'web'", "env.A:"]),
        ({"projects": {"web": {"command": ["x"], "env": {"A=B": "1"}}}}, ["project 'web'", "env:", "A=B"]),
        ({"projects": {"web": {"command": ["x"], "env": {"PORT": 1}}}}, ["project 'web'", "env:", "PORT"]),
        ({"projects": {"web": {"command": ["x"], "ready_path": "healthz"}}}, ["project 'web'", "ready_path:"]),
        ({"projects": {"web": {"command": ["x"], "ready_path": 5}}}, ["project 'web'", "ready_path:"]),
        ({"projects": {"web": {"command": ["x"], "ready_path": "/a b"}}}, ["project 'web'", "ready_path:"]),
        ({"projects": {"web": {"command": ["x"], "idle_timeout_s": -1}}}, ["project 'web'", "idle_timeout_s:"]),
        ({"projects": {"web": {"command": ["x"], "idle_timeout_s": 0}}}, ["project 'web'", "idle_timeout_s:"]),
        ({"projects": {"web": {"command": ["x"], "idle_timeout_s": "5"}}}, ["project 'web'", "idle_timeout_s:"]),
        ({"projects": {"web": {"command": ["x"], "hold_timeout_s": -0.5}}}, ["project 'web'", "hold_timeout_s:"]),
        ({"projects": {"web": {"command": ["x"], "hold_timeout_s": True}}}, ["project 'web'", "hold_timeout_s:"]),
        ({"projects": {"web": {"command": ["x"], "hold_timeout_s": float("inf")}}},
         ["project 'web'", "hold_timeout_s:"]),
        ({"projects": {"web": {"command": ["x"], "strategy": "sometimes"}}}, ["project 'web'", "strategy:"]),
        ({"projects": {"web": {"command": ["x"], "mode": "running"}}},
         ["project 'web'", "mode:", "expected one of Auto, Running, Suspended, got 'running'"]),
        ({"projects": {"web": {"command": ["x"], "mode": 1}}}, ["project 'web'", "mode:", "got 1"]),
        ({"projects": {"web": {"command": ["x"], "mode": ["Running"]}}}, ["project 'web'", "mode:"]),
        ({"projects": {"web": {"command": ["x"], "cwd": 5}}}, ["project 'web'", "cwd:"]),
    ],
)
def test_invalid_projects_name_file_project_and_field(tmp_path: Path, doc: Any, needles: list[str]) -> None:
    path = tmp_path / "bad.yaml"
    with pytest.raises(ProjectsFileError) as err:
        parse_projects(doc, path)
    message = str(err.value)
    assert message.startswith(f"{path}: ")
    for needle in needles:
        assert needle in message


def test_unreadable_and_malformed_files(tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    with pytest.raises(ProjectsFileError, match=f"^{missing}: cannot read"):
        load_projects_file(missing)
    broken = tmp_path / "broken.yaml"
    broken.write_text("projects: {hello: [unclosed\n")
    with pytest.raises(ProjectsFileError, match=f"^{broken}: not valid YAML"):
        load_projects_file(broken)


async def test_start_fails_on_a_bad_file(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("projects: {web: {command: []}}\n")
    backend = LocalBackend(Settings(projects_file=path))
    with pytest.raises(ProjectsFileError, match="project 'web': command"):
        await backend.start()
    assert not backend.ready


# --- processes -----------------------------------------------------------------------------------


async def test_concurrent_scale_up_spawns_one_process(make_backend: Any) -> None:
    backend, rec = await make_backend({"web": {"env": {"NAME": "web"}}})
    assert backend.ready
    await asyncio.gather(*(backend.scale_up("web") for _ in range(20)))
    _, (kind, _, endpoints) = await rec.next("web")
    assert kind == "endpoints"
    assert len(endpoints) == 1 and endpoints[0].host == "127.0.0.1"
    assert backend.spawn_count["web"] == 1
    await backend.scale_up("web")  # idempotent once running
    assert backend.spawn_count["web"] == 1
    assert await http_get(endpoints[0]) == (200, "hello from web")
    pid = backend.pid("web")
    assert pid is not None and backend.projects()["web"].location == f"pid {pid}"
    assert rec.table_changes >= 2  # loaded, then the location changed


async def test_environment_is_a_clean_subset_plus_project_env(make_backend: Any,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WAKEGATE_TEST_SECRET", "do-not-leak")
    monkeypatch.setenv("LC_TIME", "C")
    backend, rec = await make_backend({"web": {"env": {"GREETING": "hi", "N": 3}}})
    await backend.scale_up("web")
    _, (_, _, endpoints) = await rec.next("web")
    status, body = await http_get(endpoints[0], "/env")
    env = json.loads(body)
    assert status == 200
    assert env["PORT"] == str(endpoints[0].port)
    assert env["GREETING"] == "hi" and env["N"] == "3"
    assert env["PATH"] == os.environ["PATH"]
    assert env["LC_TIME"] == "C"
    assert "WAKEGATE_TEST_SECRET" not in env


async def test_ready_path_waits_for_a_successful_probe(make_backend: Any) -> None:
    backend, rec = await make_backend({"web": {"ready_path": "/healthz", "env": {"UNHEALTHY_PROBES": "3"}}})
    await backend.scale_up("web")
    _, (kind, _, endpoints) = await rec.next("web")
    assert kind == "endpoints"
    # Three probes got 503, the fourth got 200 and made it ready; this GET is the fifth.
    assert await http_get(endpoints[0], "/healthz") == (200, "5")


async def test_probe_answers() -> None:
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    assert await probe(port, None)
    server.close()
    await server.wait_closed()
    assert not await probe(port, None)
    assert not await probe(port, "/healthz")


async def test_exit_before_ready_is_a_failed_wake_with_the_stderr_tail(make_backend: Any) -> None:
    backend, rec = await make_backend({"web": {"env": {"MODE": "fail"}}})
    await backend.scale_up("web")
    i, (kind, _, reason) = await rec.next("web")
    assert kind == "failed"
    assert "exited with code 3 before it was ready" in reason
    assert "boot error line 29" in reason  # the last line
    assert "boot error line 10" in reason  # the last 20 lines are kept …
    assert "boot error line 9\n" not in reason  # … and no more
    assert backend.pid("web") is None
    # The next wake tries again.
    await backend.scale_up("web")
    _, (kind, _, _) = await rec.next("web", i + 1)
    assert kind == "failed"
    assert backend.spawn_count["web"] == 2


async def test_command_that_cannot_start_is_a_backend_error(make_backend: Any) -> None:
    backend, _ = await make_backend({"web": {"command": ["/nonexistent/wakegate-app"]}})
    with pytest.raises(BackendError, match=r"project web: cannot start '/nonexistent/wakegate-app'"):
        await backend.scale_up("web")
    with pytest.raises(BackendError, match="project nope is not in"):
        await backend.scale_up("nope")


async def test_exit_after_ready_reports_no_endpoints(make_backend: Any) -> None:
    backend, rec = await make_backend({"web": {}})
    await backend.scale_up("web")
    i, (_, _, endpoints) = await rec.next("web")
    await http_get(endpoints[0], "/exit")
    _, event = await rec.next("web", i + 1)
    assert event == ("endpoints", "web", [])
    assert backend.pid("web") is None
    assert backend.projects()["web"].location == ""
    await backend.scale_up("web")
    assert backend.spawn_count["web"] == 2


async def test_scale_down_ends_the_whole_process_group(make_backend: Any, tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild.pid"
    backend, rec = await make_backend({"web": {"env": {"GRANDCHILD_PID_FILE": str(pid_file)}}})
    await backend.scale_up("web")
    i, _ = await rec.next("web")
    leader = backend.pid("web")
    grandchild = int(pid_file.read_text())
    assert leader is not None and psutil.pid_exists(grandchild)
    assert await backend.scale_down("web") is True
    _, event = await rec.next("web", i + 1)
    assert event == ("endpoints", "web", [])
    assert gone(leader)
    # The group got SIGKILL; the grandchild (not our child) ends when the kernel gets to it.
    assert await asyncio.to_thread(wait_gone, grandchild, 30)
    assert backend.pid("web") is None


async def test_scale_down_kills_after_the_grace_period(make_backend: Any) -> None:
    backend, rec = await make_backend({"web": {"env": {"MODE": "ignore-term"}}}, stop_grace_s=0.2)
    await backend.scale_up("web")
    await rec.next("web")
    proc = backend._children["web"].proc
    assert await backend.scale_down("web")
    assert proc.returncode == -signal.SIGKILL


async def test_scale_down_during_boot_is_not_a_failed_wake(make_backend: Any) -> None:
    backend, rec = await make_backend({"web": {"env": {"BOOT_DELAY_S": "30"}}})
    await backend.scale_up("web")
    assert await backend.scale_down("web")
    _, event = await rec.next("web")
    assert event == ("endpoints", "web", [])
    assert [e for e in rec.events if e[0] == "failed"] == []


async def test_scale_down_of_a_stopped_project_reports_no_endpoints(make_backend: Any) -> None:
    backend, rec = await make_backend({"web": {}})
    assert await backend.scale_down("web") is True
    _, event = await rec.next("web")
    assert event == ("endpoints", "web", [])
    assert backend.spawn_count["web"] == 0


async def test_scale_up_of_a_ready_process_reports_its_endpoint_again(make_backend: Any) -> None:
    backend, rec = await make_backend({"web": {}})
    await backend.scale_up("web")
    i, first = await rec.next("web")
    await backend.scale_up("web")  # e.g. after the data path dropped the endpoint
    _, again = await rec.next("web", i + 1)
    assert again == first
    assert backend.spawn_count["web"] == 1


async def test_close_stops_every_process(make_backend: Any) -> None:
    backend, rec = await make_backend({"a": {}, "b": {}})
    await asyncio.gather(backend.scale_up("a"), backend.scale_up("b"))
    await rec.next("a")
    await rec.next("b")
    pids = [backend.pid("a"), backend.pid("b")]
    await backend.close()
    assert all(pid is not None and gone(pid) for pid in pids)
    assert not backend.ready
    with pytest.raises(BackendError, match="shut down"):
        await backend.scale_up("a")


async def test_output_is_forwarded_to_the_log_with_the_project(make_backend: Any,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="wakegate")
    backend, rec = await make_backend({"web": {}})
    await backend.scale_up("web")
    await rec.next("web")
    lines = {(r.stream, r.line) for r in caplog.records  # type: ignore[attr-defined]
             if getattr(r, "event", None) == "project_output" and getattr(r, "project", None) == "web"}
    assert ("stderr", "a line on stderr") in lines
    assert any(stream == "stdout" and line.startswith("app starting on") for stream, line in lines)


async def test_reload_adds_removes_and_keeps_the_old_table_on_errors(make_backend: Any, tmp_path: Path) -> None:
    backend, rec = await make_backend({"a": {}, "b": {}})
    await backend.scale_up("a")
    await rec.next("a")
    pid_a = backend.pid("a")
    path = write_projects(tmp_path, {"b": {}, "c": {"idle_timeout_s": 9}})
    changes = rec.table_changes
    await backend.reload()
    assert set(backend.projects()) == {"b", "c"}
    assert backend.projects()["c"].settings.idle_timeout_s == 9
    assert pid_a is not None and gone(pid_a)
    assert rec.table_changes > changes
    path.write_text("projects: {b: {command: []}}\n")
    await backend.reload()
    assert set(backend.projects()) == {"b", "c"}
