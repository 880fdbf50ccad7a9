"""The whole gateway (:class:`gateway.service.Service`) on port 0 with the local backend and the
demo apps as real child processes, driven over real sockets; and the real ``wakegate serve``."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import pytest
import yaml

from gateway.backends.local import LocalBackend
from gateway.config import HostPort, Settings
from gateway.demo import PROJECTS_FILE
from gateway.lifecycle import LifecycleObserver, NullObserver, State
from gateway.service import Service, StartupError

DOMAIN = "example.test"
WAIT_S = 30.0
DEMO = PROJECTS_FILE.parent


def gone(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


class WatchedBackend(LocalBackend):
    """The real local backend; tests await its scale-downs, and may hold one in progress."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.downs: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)
        self.down_started: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)
        self.down_gate: asyncio.Event | None = None

    async def scale_down(self, name: str, last_activity_wall_s: float | None = None) -> bool:
        self.down_started[name].set()
        if self.down_gate is not None:
            await self.down_gate.wait()
        ok = await super().scale_down(name, last_activity_wall_s)
        self.downs[name].set()
        return ok


class HeldSignal(NullObserver):
    """A lifecycle observer that passes everything on and signals when a request is held."""

    def __init__(self, inner: LifecycleObserver) -> None:
        self.inner = inner
        self.held = asyncio.Event()

    def wake_started(self, project: str) -> None:
        self.inner.wake_started(project)

    def wake_finished(self, project: str, result: str, duration_s: float) -> None:
        self.inner.wake_finished(project, result, duration_s)

    def held_changed(self, delta: int) -> None:
        self.inner.held_changed(delta)
        if delta > 0:
            self.held.set()

    def held_rejected(self, reason: str) -> None:
        self.inner.held_rejected(reason)

    def scale_operation(self, direction: str, ok: bool) -> None:
        self.inner.scale_operation(direction, ok)

    def project_removed(self, project: str) -> None:
        self.inner.project_removed(project)

    def project_changed(self, project: str) -> None:
        self.inner.project_changed(project)


def projects_file(tmp_path: Path, **overrides: dict[str, Any]) -> Path:
    projects: dict[str, Any] = {
        "hello": {"command": ["{python}", f"{DEMO}/hello.py"], "env": {"GREETING": "hi from e2e"}},
        "chat": {"command": ["{python}", f"{DEMO}/chat.py"]},
    }
    for name, spec in overrides.items():
        projects[name] = {**projects.get(name, {}), **spec}
    path = tmp_path / "projects.yaml"
    path.write_text(yaml.safe_dump({"projects": projects}))
    return path


def settings(path: Path, **kw: Any) -> Settings:
    values: dict[str, Any] = {
        "projects_file": path, "domain": DOMAIN, "listen": HostPort("127.0.0.1", 0),
        "admin_listen": HostPort("127.0.0.1", 0), "reap_interval_s": 3600.0, "hold_timeout_s": WAIT_S,
        "stop_grace_s": 5.0, "drain_timeout_s": 10.0, **kw,
    }
    return Settings(**values)


class Gateway:
    def __init__(self, service: Service, backend: WatchedBackend, session: aiohttp.ClientSession) -> None:
        self.service = service
        self.backend = backend
        self.session = session

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.service.port}"

    def headers(self, project: str) -> dict[str, str]:
        return {"Host": f"{project}.{DOMAIN}"}

    async def get(self, project: str, path: str = "/") -> tuple[int, str]:
        async with self.session.get(self.url + path, headers=self.headers(project)) as resp:
            return resp.status, await resp.text()

    def state(self, project: str) -> State:
        p = self.service.lifecycle.get(project)
        assert p is not None
        return p.state


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[Any]:
    started: list[Gateway] = []

    async def start(path: Path | None = None, **kw: Any) -> Gateway:
        s = settings(path or projects_file(tmp_path), **kw)
        backend = WatchedBackend(s)
        service = Service(s, backend=backend)
        await service.start()
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                        timeout=aiohttp.ClientTimeout(total=WAIT_S))
        gw = Gateway(service, backend, session)
        started.append(gw)
        return gw

    yield start
    for gw in started:
        await gw.session.close()
        await gw.service.stop()


async def test_fifty_concurrent_cold_requests_one_spawn_all_served(gateway: Any) -> None:
    gw = await gateway()
    assert gw.state("hello") is State.ASLEEP
    results = await asyncio.gather(*(gw.get("hello") for _ in range(50)))
    assert [status for status, _ in results] == [200] * 50
    assert all("hi from e2e" in body for _, body in results)
    assert gw.backend.spawn_count["hello"] == 1
    assert gw.state("hello") is State.READY
    # All bodies come from the one process.
    assert len({body.split("(pid ")[1].split(")")[0] for _, body in results}) == 1


async def test_unknown_project_and_foreign_host(gateway: Any) -> None:
    gw = await gateway()
    status, body = await gw.get("nope")
    assert status == 404 and "nope" in body
    async with gw.session.get(gw.url + "/", headers={"Host": "hello.elsewhere.test"}) as resp:
        assert resp.status == 404
    assert sum(gw.backend.spawn_count.values()) == 0


async def test_failed_boot_answers_502_and_the_admin_api_has_the_stderr_tail(gateway: Any, tmp_path: Path) -> None:
    path = projects_file(tmp_path, broken={"command": ["{python}", "-c", "import sys; sys.exit('bad config: X')"]})
    gw = await gateway(path)
    status, body = await gw.get("broken")
    assert status == 502
    # the public answer says what failed; the details are for the admin API (issue 13, item 8)
    assert "project broken failed to start" in body and "bad config: X" not in body
    async with gw.session.get(f"http://127.0.0.1:{gw.service.admin_port}/api/v1/projects/broken") as resp:
        assert resp.status == 200
        assert "bad config: X" in (await resp.json())["last_error"]
    status, _ = await gw.get("broken")  # the next request tries again
    assert status == 502
    assert gw.backend.spawn_count["broken"] == 2


async def test_hold_timeout_and_overflow_answers(gateway: Any, tmp_path: Path) -> None:
    path = projects_file(tmp_path, slow={"command": ["{python}", f"{DEMO}/slow.py"], "env": {"BOOT_DELAY_S": "600"},
                                         "hold_timeout_s": 5})
    gw = await gateway(path, max_held_per_project=2)

    async def get() -> tuple[int, str, str | None]:
        async with gw.session.get(gw.url + "/", headers=gw.headers("slow")) as resp:
            return resp.status, await resp.text(), resp.headers.get("Retry-After")

    results = sorted(await asyncio.gather(*(get() for _ in range(5))))
    assert [status for status, _, _ in results] == [503, 503, 503, 504, 504]
    for _, body, retry_after in results[:3]:
        assert "project slow is starting and too many requests are already waiting" in body
        assert retry_after is not None and int(retry_after) >= 1
    for _, body, _ in results[3:]:
        assert "project slow is not ready after 5s" in body
    assert gw.backend.spawn_count["slow"] == 1


async def test_websocket_open_past_the_idle_timeout_keeps_the_project_awake(gateway: Any) -> None:
    gw = await gateway(idle_timeout_s=0.5, reap_interval_s=0.1)
    assert (await gw.get("hello"))[0] == 200  # a control project, idle from now on
    async with gw.session.ws_connect(gw.url + "/ws", headers=gw.headers("chat")) as ws:
        await ws.send_str("one")
        assert await ws.receive_str(timeout=WAIT_S) == "one"
        chat_pid = gw.backend.pid("chat")
        # hello's idle timeout passes and the reaper puts it to sleep ...
        await asyncio.wait_for(gw.backend.downs["hello"].wait(), WAIT_S)
        # ... while chat, older than the idle timeout but with its WebSocket open, stays awake.
        assert not gw.backend.downs["chat"].is_set()
        assert gw.state("chat") is State.READY and gw.backend.pid("chat") == chat_pid
        await ws.send_str("two")
        assert await ws.receive_str(timeout=WAIT_S) == "two"
    # Closing the WebSocket lets it sleep.
    await asyncio.wait_for(gw.backend.downs["chat"].wait(), WAIT_S)
    assert gw.backend.pid("chat") is None and chat_pid is not None and gone(chat_pid)


async def test_sse_stream_is_not_buffered_and_keeps_the_project_awake(gateway: Any) -> None:
    gw = await gateway(idle_timeout_s=0.5, reap_interval_s=0.1)
    assert (await gw.get("hello"))[0] == 200
    # One event now, the next in an hour: the first can only arrive if nothing buffers the stream.
    async with gw.session.get(gw.url + "/events?interval=3600", headers=gw.headers("chat")) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        first = await asyncio.wait_for(resp.content.readuntil(b"\n\n"), WAIT_S)
        assert first.startswith(b"id: 1\ndata: tick 1 at ")
        await asyncio.wait_for(gw.backend.downs["hello"].wait(), WAIT_S)
        assert not gw.backend.downs["chat"].is_set()
        assert gw.state("chat") is State.READY
    await asyncio.wait_for(gw.backend.downs["chat"].wait(), WAIT_S)


async def test_sse_stream_arrives_complete(gateway: Any) -> None:
    gw = await gateway()
    events = []
    async with gw.session.get(gw.url + "/events?interval=0.05&count=5", headers=gw.headers("chat")) as resp:
        async for chunk in resp.content.iter_any():
            events.append(chunk)
    text = b"".join(events).decode()
    assert [line for line in text.splitlines() if line.startswith("id:")] == [f"id: {i}" for i in range(1, 6)]


async def test_request_racing_a_scale_down_is_served(gateway: Any) -> None:
    gw = await gateway()
    status, body = await gw.get("hello")
    assert status == 200
    old_pid = gw.backend.pid("hello")
    p = gw.service.lifecycle.get("hello")
    assert p is not None
    gw.backend.down_gate = asyncio.Event()
    sleeping = asyncio.ensure_future(gw.service.lifecycle.sleep(p, reason="test"))
    await asyncio.wait_for(gw.backend.down_started["hello"].wait(), WAIT_S)
    signal_ = gw.service.lifecycle.observer = HeldSignal(gw.service.lifecycle.observer)
    request = asyncio.ensure_future(gw.get("hello"))  # arrives while the scale-down runs
    await asyncio.wait_for(signal_.held.wait(), WAIT_S)  # it was held (its wake waits for the scale-down)
    assert p.held == 1
    gw.backend.down_gate.set()
    assert await sleeping is True
    status, body = await asyncio.wait_for(request, WAIT_S)
    assert status == 200 and "hi from e2e" in body
    new_pid = gw.backend.pid("hello")
    assert new_pid is not None and new_pid != old_pid and f"(pid {new_pid})" in body


async def test_stop_drains_in_flight_requests_and_stops_projects(gateway: Any) -> None:
    gw = await gateway()
    async with gw.session.get(gw.url + "/events?interval=0.3&count=3", headers=gw.headers("chat")) as resp:
        await asyncio.wait_for(resp.content.readuntil(b"\n\n"), WAIT_S)
        pid = gw.backend.pid("chat")
        stopping = asyncio.ensure_future(gw.service.stop())
        rest = await asyncio.wait_for(resp.content.read(), WAIT_S)  # the stream finishes during the drain
    assert b"id: 3\n" in rest
    assert await asyncio.wait_for(stopping, WAIT_S) is True
    assert pid is not None and gone(pid)
    with pytest.raises(aiohttp.ClientConnectionError):
        await gw.get("hello")


async def test_drain_timeout_cuts_long_streams(gateway: Any) -> None:
    gw = await gateway(drain_timeout_s=0.3)
    async with gw.session.get(gw.url + "/events?interval=3600", headers=gw.headers("chat")) as resp:
        await asyncio.wait_for(resp.content.readuntil(b"\n\n"), WAIT_S)
        assert await asyncio.wait_for(gw.service.stop(), WAIT_S) is False


async def test_bad_projects_file_fails_before_binding(tmp_path: Path) -> None:
    path = tmp_path / "projects.yaml"
    path.write_text("projects: {hello: {command: []}}\n")
    service = Service(settings(path))
    with pytest.raises(ValueError, match="project 'hello': command"):
        await service.start()
    assert service.port is None and service.admin_port is None


async def test_port_in_use_is_a_startup_error(gateway: Any, tmp_path: Path) -> None:
    gw = await gateway()
    service = Service(settings(projects_file(tmp_path), listen=HostPort("127.0.0.1", gw.service.port or 0)))
    with pytest.raises(StartupError, match=r"^--listen: cannot listen on 127\.0\.0\.1:\d+"):
        await service.start()


async def test_unauthenticated_admin_api_off_loopback_is_a_startup_error(gateway: Any, tmp_path: Path) -> None:
    # Settings built in code skip config.validate; the service refuses by itself, before binding the
    # admin API, and leaves nothing listening.
    service = Service(settings(projects_file(tmp_path), admin_listen=HostPort("0.0.0.0", 0)))
    with pytest.raises(StartupError, match=r"^--admin-listen: 0\.0\.0\.0:0 is not a loopback address and "
                                           r"--admin-token-file is not set"):
        await service.start()
    assert service.admin_port is None
    assert service.server.port is None or not await _accepts(service.server.port)
    # with a token the same address is fine
    token = tmp_path / "token"
    token.write_text("s3cret")
    gw = await gateway(admin_listen=HostPort("0.0.0.0", 0), admin_token_file=token)
    assert gw.service.admin_port


async def _accepts(port: int) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), WAIT_S)
    except OSError:
        return False
    writer.close()
    return True


# --- the real process ----------------------------------------------------------------------------


async def read_events(stream: asyncio.StreamReader, until: str, seen: list[dict[str, Any]]) -> dict[str, Any]:
    """Read JSON log lines until the event ``until``."""
    async with asyncio.timeout(WAIT_S):
        while True:
            line = await stream.readline()
            if not line:
                raise AssertionError(f"the gateway exited before logging {until}; saw {seen[-5:]}")
            try:
                record = json.loads(line)
            except ValueError:
                continue
            seen.append(record)
            if record.get("event") == until:
                return record


async def test_wakegate_serve_process_reloads_on_sighup_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    path = projects_file(tmp_path)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "serve", "--projects", str(path), "--domain", DOMAIN,
        "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--log-format", "json",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        env={k: v for k, v in os.environ.items() if not k.startswith("WAKEGATE_")},
    )
    assert proc.stderr is not None
    seen: list[dict[str, Any]] = []
    try:
        listening = await read_events(proc.stderr, "listening", seen)
        port, admin_port = listening["port"], listening["admin_port"]
        assert listening["admin_listen"] == f"127.0.0.1:{admin_port}"
        assert listening["admin_auth"] == "none (loopback only)"
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WAIT_S)) as session:
            async with session.get(f"http://127.0.0.1:{port}/", headers={"Host": f"hello.{DOMAIN}"}) as resp:
                assert resp.status == 200
                assert "hi from e2e" in await resp.text()
            async with session.get(f"http://127.0.0.1:{admin_port}/readyz") as resp:
                assert resp.status == 200
        started = await read_events(proc.stderr, "project_started", seen)
        project_pid = started["pid"]
        assert not gone(project_pid)
        # SIGHUP reloads the projects file: a new project is served without a restart.
        projects_file(tmp_path, extra={"command": ["{python}", f"{DEMO}/hello.py"], "env": {"GREETING": "new"}})
        proc.send_signal(signal.SIGHUP)
        reloaded = await read_events(proc.stderr, "projects_reloaded", seen)
        assert reloaded["projects"] == 3
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WAIT_S)) as session,
            session.get(f"http://127.0.0.1:{port}/", headers={"Host": f"extra.{DOMAIN}"}) as resp,
        ):
            assert resp.status == 200
            assert "new" in await resp.text()
        proc.send_signal(signal.SIGTERM)
        await read_events(proc.stderr, "stopped", seen)
        await asyncio.wait_for(proc.stderr.read(), WAIT_S)
        assert await asyncio.wait_for(proc.wait(), WAIT_S) == 0
        assert gone(project_pid)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
