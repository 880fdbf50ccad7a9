"""The ``wakegate`` command: flags, errors (one line, exit 2), ``demo`` and ``python -m gateway``."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
import yaml

from gateway import __version__, config
from gateway.cli import build_parser, demo_settings, main
from gateway.config import HostPort
from gateway.demo import PROJECTS_FILE
from tests.ops_support import GatewayProcess, write_projects

WAIT_S = 30.0


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("WAKEGATE_"):
            monkeypatch.delenv(key)


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WAKEGATE_")}
    env.update(extra)
    return env


def run_main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(argv)
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "env", "expected"),
    [
        (["serve"], {}, "wakegate: --projects: the local backend needs a projects file"),
        (["serve", "--projects", "p.yaml", "--idle-timeout", "0"], {}, "wakegate: --idle-timeout: "),
        (["serve", "--projects", "p.yaml", "--listen", "8080"], {}, "wakegate: --listen: expected HOST:PORT"),
        (["serve", "--projects", "p.yaml", "--backend", "docker"], {}, "wakegate: --backend: expected one of"),
        (["serve", "--projects", "p.yaml"], {"WAKEGATE_HOLD_TIMEOUT": "soon"}, "wakegate: WAKEGATE_HOLD_TIMEOUT: "),
        (["serve"], {"WAKEGATE_MAX_HELD_PER_PROJECT": "-3", "WAKEGATE_PROJECTS": "p.yaml"},
         "wakegate: WAKEGATE_MAX_HELD_PER_PROJECT: "),
        (["demo", "--domain", "bad domain"], {}, "wakegate: --domain: "),
        (["serve", "--projects", "p.yaml", "--admin-listen", "0.0.0.0:9090"], {},
         "wakegate: --admin-listen: 0.0.0.0:9090 is not a loopback address and --admin-token-file is not set"),
        (["serve", "--projects", "p.yaml"], {"WAKEGATE_ADMIN_LISTEN": ":9090"},
         "wakegate: --admin-listen: 0.0.0.0:9090 is not a loopback address and --admin-token-file is not set"),
    ],
)
def test_config_errors_are_one_line_and_exit_2(argv: list[str], env: dict[str, str], expected: str,
                                                capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    code, err = run_main(argv, capsys)
    assert code == 2
    assert err.startswith(expected)
    assert err.count("\n") == 1


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "cannot read the projects file"),
        ("projects: {web: {command: []}}\n", "project 'web': command: must not be empty"),
        ("projects: {web: [unclosed\n", "not valid YAML"),
        ("projects: {Web: {command: [x]}}\n", "project 'Web': invalid project name"),
    ],
)
def test_projects_file_errors_exit_2_before_anything_starts(tmp_path: Path, content: str | None, expected: str,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "projects.yaml"
    if content is not None:
        path.write_text(content)
    code, err = run_main(["serve", "--projects", str(path), "--listen", "127.0.0.1:0"], capsys)
    assert code == 2
    assert err.startswith(f"wakegate: {path}: ")
    assert expected in err
    assert err.count("\n") == 1


def test_unknown_flag_is_an_argparse_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["serve", "--no-such-flag"])
    assert exc.value.code == 2
    assert "--no-such-flag" in capsys.readouterr().err


def test_serve_help_lists_every_flag_and_its_variable(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["serve", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for flag, env in [("--backend", "WAKEGATE_BACKEND"), ("--projects", "WAKEGATE_PROJECTS"),
                      ("--domain", "WAKEGATE_DOMAIN"), ("--listen", "WAKEGATE_LISTEN"),
                      ("--admin-listen", "WAKEGATE_ADMIN_LISTEN"), ("--idle-timeout", "WAKEGATE_IDLE_TIMEOUT"),
                      ("--hold-timeout", "WAKEGATE_HOLD_TIMEOUT"),
                      ("--max-held-per-project", "WAKEGATE_MAX_HELD_PER_PROJECT"),
                      ("--reap-interval", "WAKEGATE_REAP_INTERVAL")]:
        assert flag in out and env in out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"wakegate {__version__}"


def test_a_command_is_required(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([])
    assert exc.value.code == 2
    assert "COMMAND" in capsys.readouterr().err


def test_project_group_has_every_action(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["project", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for action in ("render", "create", "status", "list", "delete", "activate", "deactivate"):
        assert re.search(rf"^\s+{action}\s", out, re.MULTILINE), action


def test_project_without_an_action(capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run_main(["project"], capsys)
    assert code == 2
    assert "wakegate: project: choose an action" in err


def test_demo_settings() -> None:
    s = demo_settings()
    assert s.backend == "local"
    assert s.projects_file == PROJECTS_FILE
    assert s.domain == "localhost"
    assert s.listen == HostPort("127.0.0.1", 8080)
    assert s.admin_listen == HostPort("127.0.0.1", 9090)
    assert s.admin_address == HostPort("127.0.0.1", 9090)
    assert s.idle_timeout_s == 30
    assert s.url_for("hello") == "http://hello.localhost:8080/"  # the URL the admin API reports


def test_python_dash_m_gateway() -> None:
    out = subprocess.run([sys.executable, "-m", "gateway", "--help"], capture_output=True, text=True,
                         timeout=WAIT_S, env=clean_env(), check=False)
    assert out.returncode == 0
    assert "serve" in out.stdout and "demo" in out.stdout and "project" in out.stdout


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).parent / "wakegate"
    out = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=WAIT_S,
                         env=clean_env(), check=False)
    assert out.returncode == 0 and out.stdout.strip() == f"wakegate {__version__}"


async def test_serve_does_not_need_aiohttps_c_extensions(tmp_path: Path) -> None:
    # The data path parses with httptools on uvloop (gateway.service.DATA_PATH_EXTENSIONS, checked in
    # tests/test_native.py); aiohttp serves only the admin API, which its pure-Python parser can do.
    gw = await GatewayProcess.start(write_projects(tmp_path, {"web": {}}), env={"AIOHTTP_NO_EXTENSIONS": "1"})
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WAIT_S)) as http:
            async with http.get(gw.url + "/hello", headers={"Host": "web.localhost"}) as resp:
                assert resp.status == 200 and "real content of web" in await resp.text()
            async with http.get(gw.admin_url + "/healthz") as resp:
                assert resp.status == 200
    finally:
        await gw.kill()


def test_port_in_use_exits_1(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = subprocess.run(
            [sys.executable, "-m", "gateway", "serve", "--projects", str(PROJECTS_FILE),
             "--listen", f"127.0.0.1:{port}", "--admin-listen", "127.0.0.1:0"],
            capture_output=True, text=True, timeout=WAIT_S, env=clean_env(), check=False,
        )
    assert out.returncode == 1
    assert f"wakegate: --listen: cannot listen on 127.0.0.1:{port}" in out.stderr


async def test_demo_prints_what_to_try_serves_hello_and_stops_on_ctrl_c() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "demo", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL, env=clean_env(),
    )
    assert proc.stdout is not None
    try:
        text = ""
        async with asyncio.timeout(WAIT_S):
            while "Ctrl-C stops" not in text:
                line = await proc.stdout.readline()
                assert line, f"the demo exited early: {text!r}"
                text += line.decode()
        match = re.search(r"curl http://hello\.localhost:(\d+)/", text)
        assert match, text
        port = int(match.group(1))
        admin = re.search(r"curl (http://127\.0\.0\.1:\d+)/metrics", text)
        assert admin, text
        assert "chat.localhost" in text and "slow.localhost" in text
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WAIT_S)) as session:
            async with session.get(f"http://127.0.0.1:{port}/", headers={"Host": "hello.localhost"}) as resp:
                assert resp.status == 200
                assert "Hello from a project that was asleep" in await resp.text()
            async with session.get(f"{admin.group(1)}/metrics") as resp:
                assert resp.status == 200
                assert "wakegate_" in await resp.text()
        proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(proc.wait(), WAIT_S) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


# --- where the admin API listens -------------------------------------------------------------------

# Each gateway below runs in a network namespace of its own, so the default admin port (9090) is free
# and the namespace has exactly two addresses: loopback, and this one on a (bridge) interface of its own.
OTHER_ADDRESS = "198.51.100.7"  # TEST-NET-2

PROBE = r"""
import json, socket, sys
out = {}
for host in sys.argv[2:]:
    try:
        with socket.create_connection((host, int(sys.argv[1])), timeout=5) as s:
            s.settimeout(5)
            s.sendall(b"GET /healthz HTTP/1.0\r\nHost: admin\r\n\r\n")
            out[host] = s.recv(64).split(b"\r\n", 1)[0].decode()
    except OSError as exc:
        out[host] = type(exc).__name__
print(json.dumps(out))
"""


async def _serve_in_own_netns(*flags: str) -> tuple[asyncio.subprocess.Process, dict[str, object]]:
    """``wakegate serve`` (demo projects, no ``--admin-listen``) in a new network namespace; returns
    the process and its ``listening`` log line."""
    setup = (f"ip link set lo up && ip link add wg-other type bridge && ip addr add {OTHER_ADDRESS}/24 dev wg-other"
             ' && ip link set wg-other up && exec "$0" -m gateway serve "$@"')
    proc = await asyncio.create_subprocess_exec(
        "unshare", "--net", "sh", "-c", setup, sys.executable, "--projects", str(PROJECTS_FILE),
        "--listen", "127.0.0.1:0", "--log-format", "json", *flags,
        env=clean_env(), stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stderr is not None
    seen: list[str] = []
    try:
        async with asyncio.timeout(WAIT_S):
            while True:
                line = await proc.stderr.readline()
                assert line, "the gateway exited early:\n" + "".join(seen)
                seen.append(line.decode(errors="replace"))
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if isinstance(event, dict) and event.get("event") == "listening":
                    return proc, event
    except BaseException:
        await _stop(proc)
        raise


async def _stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), WAIT_S)
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def _probe_admin(proc: asyncio.subprocess.Process, port: int) -> dict[str, str]:
    """The first line answered to ``GET /healthz`` on ``port`` at each address of the gateway's
    network namespace, or the connection error."""
    probe = await asyncio.create_subprocess_exec(
        "nsenter", "-t", str(proc.pid), "-n", sys.executable, "-c", PROBE, str(port), "127.0.0.1", OTHER_ADDRESS,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(probe.communicate(), WAIT_S)
    assert probe.returncode == 0, err.decode()
    result: dict[str, str] = json.loads(out)
    return result


async def test_admin_api_without_a_token_listens_on_loopback_only() -> None:
    proc, listening = await _serve_in_own_netns()
    try:
        answers = await _probe_admin(proc, 9090)
        assert answers == {"127.0.0.1": "HTTP/1.0 200 OK", OTHER_ADDRESS: "ConnectionRefusedError"}
        assert listening["admin_listen"] == "127.0.0.1:9090"
        assert listening["admin_auth"] == "none (loopback only)"
    finally:
        await _stop(proc)
    assert proc.returncode == 0


async def test_admin_api_with_a_token_listens_on_every_interface(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    proc, listening = await _serve_in_own_netns("--admin-token-file", str(token))
    try:
        assert listening["admin_listen"] == "0.0.0.0:9090"
        assert listening["admin_auth"] == "token"
        # the probe does see the other address when something listens there
        answers = await _probe_admin(proc, 9090)
        assert answers == {"127.0.0.1": "HTTP/1.0 200 OK", OTHER_ADDRESS: "HTTP/1.0 200 OK"}
    finally:
        await _stop(proc)
    assert proc.returncode == 0


def test_explicit_non_loopback_admin_listen_without_a_token_exits_2() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--projects", str(PROJECTS_FILE), "--listen", "127.0.0.1:0",
         "--admin-listen", "0.0.0.0:0"],
        capture_output=True, text=True, timeout=WAIT_S, env=clean_env(), check=False,
    )
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1, out.stderr
    assert out.stderr.startswith("wakegate: --admin-listen: 0.0.0.0:0 is not a loopback address and "
                                 "--admin-token-file is not set;"), out.stderr
    assert "listening" not in out.stderr


def test_shipped_deployment_keeps_the_admin_api_reachable_for_probes() -> None:
    # The probes and Prometheus reach the admin port from outside the pod: the manifests must pass a
    # token, so that the admin API may (and does) listen on every interface.
    root = Path(__file__).resolve().parents[1]
    docs = yaml.safe_load_all((root / "manifests" / "base" / "deployment.yaml").read_text())
    dep = next(d for d in docs if d and d.get("kind") == "Deployment")
    container = next(c for c in dep["spec"]["template"]["spec"]["containers"] if c["name"] == "wakegate")
    args = build_parser(project_actions=False).parse_args(container["args"])
    settings = config.load_settings({o.field: getattr(args, o.field) for o in config.OPTIONS}, environ={})
    assert settings.admin_token_file is not None
    assert settings.admin_address == HostPort("0.0.0.0", 9090)
    probe_ports = {container[probe]["httpGet"]["port"] for probe in ("readinessProbe", "livenessProbe")}
    assert probe_ports == {"admin"}
    assert {p["name"]: p["containerPort"] for p in container["ports"]}["admin"] == 9090


def test_kubernetes_backend_without_credentials_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    env = {k: v for k, v in clean_env(HOME=str(tmp_path)).items()
           if k not in ("KUBECONFIG", "KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT")}
    out = subprocess.run([sys.executable, "-m", "gateway", "serve", "--backend", "kubernetes",
                          "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"],
                         capture_output=True, text=True, timeout=WAIT_S, env=env, check=False, cwd=tmp_path)
    assert out.returncode == 1
    assert "Traceback" not in out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("wakegate: --backend kubernetes: cannot load Kubernetes credentials from ~/.kube/config")
    assert "pass --kubeconfig FILE" in last
