"""``wakegate serve`` on the local backend, as the suite runs it."""

from __future__ import annotations

import json
import re
import shutil
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bench.procs import BenchError, Layout, Proc, free_port, spawn, wait_until

DOMAIN = "bench.local"


def host(project: str) -> str:
    return f"{project}.{DOMAIN}"


def wakegate_binary() -> list[str]:
    """How to start the gateway: the venv's console script, else ``python -m gateway.cli``."""
    script = Path(sys.executable).parent / "wakegate"
    if script.exists():
        return [str(script)]
    found = shutil.which("wakegate")
    return [found] if found else [sys.executable, "-m", "gateway.cli"]


def write_projects(path: Path, projects: Mapping[str, Mapping[str, Any]]) -> Path:
    """A projects file for the local backend (``projects: {name: {command: [...], ...}}``)."""
    path.write_text(yaml.safe_dump({"projects": {k: dict(v) for k, v in projects.items()}}, sort_keys=False))
    return path


@dataclass
class Gateway:
    """A running ``wakegate serve``."""

    proc: Proc
    port: int
    admin_port: int

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/metrics", timeout=30) as resp:
            body: bytes = resp.read()
        return body.decode()

    def get(self, project: str, path: str = "/", timeout_s: float = 60) -> int:
        """One request through the gateway (wakes the project if needed); returns the status."""
        req = urllib.request.Request(self.url(path), headers={"Host": host(project)})
        try:
            with urllib.request.urlopen(req, timeout=timeout_s) as resp:
                resp.read()
                return int(resp.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)


def start(projects_file: Path | None, layout: Layout, log_dir: Path, *, name: str = "wakegate",
          max_held: int = 1000, backend: list[str] | None = None, timeout_s: float = 120) -> Gateway:
    """Start the gateway pinned to the proxy core and wait until its public listener accepts.

    The local backend with ``projects_file``, or whatever ``backend`` flags say (Kubernetes)."""
    port, admin_port = free_port(), free_port()
    if backend is None:
        if projects_file is None:
            raise BenchError("the local backend needs a projects file")
        backend = ["--backend", "local", "--projects", str(projects_file)]
    argv = [*wakegate_binary(), "serve", *backend, "--domain", DOMAIN,
            "--listen", f"127.0.0.1:{port}", "--admin-listen", f"127.0.0.1:{admin_port}",
            "--idle-timeout", "3600", "--hold-timeout", "300", "--reap-interval", "60",
            "--max-held-per-project", str(max_held), "--max-held-total", str(max_held),
            "--log-format", "json"]
    proc = spawn(name, argv, log_dir, layout.proxy)
    try:
        wait_until(lambda: proc.listening(port, admin_port), timeout_s,
                   f"{name} listening on {port} and {admin_port}", 0.05)
    except BaseException:
        proc.stop()
        raise
    return Gateway(proc, port, admin_port)


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")


def metric(text: str, name: str, labels: Mapping[str, str] | None = None) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels`` (Prometheus text format)."""
    total, found = 0.0, False
    want = [f'{k}="{v}"' for k, v in (labels or {}).items()]
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if m is None or m.group(1) != name:
            continue
        if all(w in (m.group(2) or "") for w in want):
            total += float(m.group(3))
            found = True
    if not found:
        raise BenchError(f"/metrics has no {name}{labels or ''}")
    return total


COUNTERS = ("wakegate_scale_operations_total", "wakegate_wakeups_total", "wakegate_upstream_errors_total",
            "wakegate_held_rejected_total", "wakegate_requests_total")


def counters(text: str, names: tuple[str, ...] = COUNTERS) -> dict[str, float]:
    """The non-zero samples of the named families, keyed ``name{labels}`` (for the raw results)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if m is not None and m.group(1) in names and float(m.group(3)) != 0:
            out[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return out


def listening_ports(proc: Proc) -> tuple[int, int] | None:
    """The (public, admin) ports from a gateway's JSON ``listening`` log line, once it is there."""
    for event in log_events(proc):
        if event.get("event") == "listening":
            return int(event["port"]), int(event["admin_port"])
    return None


def log_events(proc: Proc) -> list[dict[str, Any]]:
    """The gateway's JSON log lines so far (other output in the log file is skipped)."""
    out: list[dict[str, Any]] = []
    try:
        text = proc.log.read_text(errors="replace")
    except OSError:
        return out
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict):
                out.append(event)
    return out


def start_replica(layout: Layout, log_dir: Path, name: str, flags: list[str], *,
                  admin_host: str = "0.0.0.0", timeout_s: float = 120) -> Gateway:
    """A gateway replica on ports the kernel picks (public on 127.0.0.1, admin on ``admin_host``:
    other replicas reach it there), pinned to the proxy core; waits for its ``listening`` line."""
    argv = [*wakegate_binary(), "serve", *flags, "--domain", DOMAIN, "--listen", "127.0.0.1:0",
            "--admin-listen", f"{admin_host}:0", "--log-format", "json"]
    proc = spawn(name, argv, log_dir, layout.proxy)
    found: list[tuple[int, int]] = []

    def listening() -> bool:
        proc.check_alive()
        ports = listening_ports(proc)
        if ports is not None:
            found.append(ports)
        return ports is not None

    try:
        wait_until(listening, timeout_s, f"{name}'s listening line", 0.05)
    except BaseException:
        proc.stop()
        raise
    port, admin_port = found[-1]
    return Gateway(proc, port, admin_port)
