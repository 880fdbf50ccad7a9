"""The clients: wrk (closed-loop throughput) and bench/loadgen (open-loop latency, bursts, streams, the upstream)."""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.procs import BenchError, run_json

ROOT = Path(__file__).resolve().parent.parent

# wrk prints its own report for people; this script adds one JSON line for us.
_WRK_LUA = """\
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"bytes":%d,"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,' ..
    '"timeout":%d},"latency_us":{"p50":%d,"p90":%d,"p99":%d,"max":%d,"mean":%f}}\\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
"""


# Every request head differs from the one before: the path's query and one header carry a counter
# (the gateway memoises identical heads; this measures it without that help).
_WRK_VARIED_LUA = """\
local seq = 0
request = function()
  seq = seq + 1
  local headers = {}
  for k, v in pairs(wrk.headers) do headers[k] = v end
  headers["X-Bench-Seq"] = tostring(seq)
  return wrk.format("GET", "/?seq=" .. seq, headers)
end
"""


def wrk(url: str, host: str, connections: int, duration_s: float, cores: tuple[int, ...],
        work_dir: Path, varied: bool = False) -> dict[str, Any]:
    """Closed-loop load with wrk (one thread, keep-alive). Returns requests/s, errors and latency.
    ``varied``: no two consecutive request heads are byte-identical (path query and a header vary)."""
    if shutil.which("wrk") is None:
        raise BenchError("wrk is not installed (make bench installs it)")
    script = work_dir / ("report-varied.lua" if varied else "report.lua")
    if not script.exists():
        script.write_text((_WRK_VARIED_LUA if varied else "") + _WRK_LUA)
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration_s))}s", "--timeout", "10s",
            "-H", f"Host: {host}", "-s", str(script), url]
    out = run_json(argv, cores, timeout_s=duration_s + 60)
    line = next((ln for ln in reversed(out.splitlines()) if ln.startswith("{")), None)
    if line is None:
        raise BenchError(f"wrk printed no report:\n{out[-1000:]}")
    report: dict[str, Any] = json.loads(line)
    report["rps"] = report["requests"] / (report["duration_us"] / 1e6)
    errors = report["errors"]
    report["error_count"] = sum(errors.values())
    return report


def loadgen_command() -> list[str]:
    """The argv prefix of bench/loadgen (``python -m bench.loadgen``; nothing to build). Also puts the
    repository on this process's PYTHONPATH, which its children inherit (the gateway passes it on to
    its projects), so the module is found whatever a child's working directory."""
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if str(ROOT) not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), *paths])
    return [sys.executable, "-m", "bench.loadgen"]


class Loadgen:
    """Runs the loadgen client commands, pinned to the load generator's cores."""

    def __init__(self, command: list[str], cores: tuple[int, ...]) -> None:
        self.command = command  # argv prefix, see loadgen_command()
        self.cores = cores

    def _run(self, command: str, args: list[str], timeout_s: float) -> dict[str, Any]:
        out = run_json([*self.command, command, *args], self.cores, timeout_s)
        result: dict[str, Any] = json.loads(out)
        return result

    def rate(self, port: int, host: str, rate: float, connections: int, duration_s: float, warmup_s: float = 1.0,
             scrape_url: str | None = None, scrape_interval_s: float = 1.0) -> dict[str, Any]:
        """Open-loop load at ``rate`` requests/s; latency percentiles in ms from the intended send time."""
        args = [f"--addr=127.0.0.1:{port}", f"--host={host}", f"--rate={rate}", f"-c={connections}",
                f"--duration={duration_s}", f"--warmup={warmup_s}"]
        if scrape_url:
            args += [f"--scrape-url={scrape_url}", f"--scrape-interval={scrape_interval_s}"]
        return self._run("rate", args, duration_s + warmup_s + 60)

    def burst_argv(self, port: int, host: str, n: int, progress_file: Path, timeout_s: float) -> list[str]:
        """The command line of a burst (started in the background by the caller)."""
        return [*self.command, "burst", f"--addr=127.0.0.1:{port}", f"--host={host}", f"--n={n}",
                f"--timeout={timeout_s}", f"--progress-file={progress_file}"]

    def watch_argv(self, urls: Sequence[str], ca: Path, cert: Path, key: Path, progress_file: Path,
                   timeout_s: float, connections: int) -> list[str]:
        """The command line of an EndpointSlice watch (started in the background by the caller)."""
        return [*self.command, "watch", *(f"--url={u}" for u in urls), f"--ca={ca}", f"--cert={cert}", f"--key={key}",
                f"--progress-file={progress_file}", f"--timeout={timeout_s}", f"--connections={connections}"]

    def stream(self, port: int, host: str, mode: str, size: int, timeout_s: float = 300) -> dict[str, Any]:
        """One download or upload of ``size`` bytes; bytes per second."""
        return self._run("stream", [f"--addr=127.0.0.1:{port}", f"--host={host}", f"--mode={mode}",
                                    f"--bytes={size}", f"--timeout={timeout_s}"], timeout_s + 30)

    def serve_argv(self, *, listen: str | None = None, delay_s: float = 0.0, wait_file: Path | None = None,
                   ready_file: Path | None = None) -> list[str]:
        """The upstream command (``listen`` None → 127.0.0.1:$PORT, for projects of the local backend)."""
        argv = [*self.command, "serve"]
        if listen:
            argv.append(f"--listen={listen}")
        if delay_s:
            argv.append(f"--delay={delay_s}")
        if wait_file:
            argv.append(f"--wait-file={wait_file}")
        if ready_file:
            argv.append(f"--ready-file={ready_file}")
        return argv
