"""Processes the suite starts: free ports, core pinning, readiness waits, CPU time and memory."""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil  # type: ignore[import-untyped]


class BenchError(RuntimeError):
    """A benchmark could not run; the message says which part failed and why."""


@dataclass(frozen=True)
class Layout:
    """Which cores each role is pinned to. With two or more cores the proxy under test gets a core
    of its own; load generator and upstream share the other. With one core nothing is pinned."""

    loadgen: tuple[int, ...]
    upstream: tuple[int, ...]
    proxy: tuple[int, ...]

    @classmethod
    def detect(cls) -> Layout:
        cores = sorted(os.sched_getaffinity(0))
        if len(cores) < 2:
            return cls((), (), ())
        return cls((cores[0],), (cores[0],), (cores[1],))

    def describe(self) -> dict[str, list[int]]:
        return {"loadgen": list(self.loadgen), "upstream": list(self.upstream), "proxy": list(self.proxy)}

    def taskset(self, cores: tuple[int, ...]) -> list[str]:
        """A command prefix pinning to ``cores`` (for commands other programs start)."""
        return ["taskset", "-c", ",".join(map(str, cores))] if cores else []


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(check: Callable[[], bool], timeout_s: float, what: str, interval_s: float = 0.01) -> None:
    """Poll ``check`` until it is true; raise :class:`BenchError` naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(interval_s)


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


@dataclass
class Proc:
    """A child process of the suite, with its log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def check_alive(self) -> None:
        if not self.alive():
            raise BenchError(f"{self.name} exited with status {self.popen.returncode}; log:\n{self.tail()}")

    def listening(self, *ports: int) -> bool:
        """Whether every port accepts connections; raises if the process has exited meanwhile."""
        self.check_alive()
        return all(port_open(p) for p in ports)

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def cpu_s(self, with_children: bool = False) -> float:
        """User+system CPU seconds of the process (and of its live children, e.g. nginx workers)."""
        procs = [psutil.Process(self.pid)]
        if with_children:
            procs += procs[0].children(recursive=True)
        total = 0.0
        for p in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                t = p.cpu_times()
                total += t.user + t.system
        return total

    def cpu_ns(self) -> int:
        """CPU time of the process (all its threads, ended ones included) in ns, from its
        CPU-time clock: fine enough for windows of milliseconds, where :meth:`cpu_s` counts clock
        ticks of 10 ms. Python has no ``clock_getcpuclockid``; the clock id is what glibc's
        computes on Linux (``(~pid << 3) | CPUCLOCK_SCHED``)."""
        return time.clock_gettime_ns(((~self.pid) << 3) | 2)

    def rss_bytes(self, with_children: bool = False) -> int:
        procs = [psutil.Process(self.pid)]
        if with_children:
            procs += procs[0].children(recursive=True)
        total = 0
        for p in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                total += p.memory_info().rss
        return total

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout_s``; waits for the process, then ends any of its
        descendants still running (processes it started that it did not stop itself)."""
        descendants: list[psutil.Process] = []
        with contextlib.suppress(psutil.NoSuchProcess):
            descendants = psutil.Process(self.pid).children(recursive=True)
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(timeout_s)
        for child in descendants:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()


class CpuTrace:
    """Samples a process's CPU time against the wall clock in a thread while the block runs, to
    tell afterwards how busy the process was between two instants (:func:`cpu_between`). The
    thread runs on ``cores``, to keep off the core of the process it watches."""

    def __init__(self, proc: Proc, cores: tuple[int, ...] = (), interval_s: float = 0.001) -> None:
        self.proc, self.cores, self.interval_s = proc, cores, interval_s
        self.samples: list[tuple[int, int]] = []  # (time.time_ns(), proc.cpu_ns())
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        with contextlib.suppress(OSError):  # the process has ended: no more samples
            self.samples.append((time.time_ns(), self.proc.cpu_ns()))

    def _run(self) -> None:
        if self.cores:
            os.sched_setaffinity(0, set(self.cores))  # this thread only
        while not self._stop.wait(self.interval_s):
            self._sample()

    def __enter__(self) -> CpuTrace:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


def cpu_between(samples: Sequence[tuple[int, int]], start_ns: int, end_ns: int) -> tuple[int, int]:
    """(CPU ns, wall ns) over the shortest sampled span containing ``start_ns`` .. ``end_ns``: from
    the last sample at or before the start to the first at or after the end. ``samples`` are
    (wall ns, CPU ns) in time order, as :class:`CpuTrace` takes them."""
    if end_ns < start_ns:
        raise ValueError(f"the span ends ({end_ns}) before it starts ({start_ns})")
    before = [s for s in samples if s[0] <= start_ns]
    after = [s for s in samples if s[0] >= end_ns]
    if not before or not after:
        raise ValueError("the samples do not cover the span")
    (t0, c0), (t1, c1) = before[-1], after[0]
    return c1 - c0, t1 - t0


def pinned(cores: tuple[int, ...]) -> Callable[[], None]:
    """A ``preexec_fn`` pinning the child to ``cores`` (nothing when empty)."""

    def pre() -> None:
        if cores:
            os.sched_setaffinity(0, set(cores))

    return pre


def spawn(name: str, argv: Sequence[str], log_dir: Path, cores: tuple[int, ...] = (),
          env: dict[str, str] | None = None) -> Proc:
    """Start ``argv`` in its own process group, pinned to ``cores``, output to ``log_dir/name.log``."""
    log = log_dir / f"{name}.log"
    with log.open("ab") as out:
        popen = subprocess.Popen(list(argv), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 env={**os.environ, **(env or {})}, preexec_fn=pinned(cores),
                                 start_new_session=True)
    return Proc(name, popen, log)


@contextlib.contextmanager
def running(procs: list[Proc]) -> Iterator[list[Proc]]:
    """Stop every process in ``procs`` (in reverse order) when the block ends, however it ends."""
    try:
        yield procs
    finally:
        for p in reversed(procs):
            p.stop()


def run_json(argv: Sequence[str], cores: tuple[int, ...] = (), timeout_s: float = 600.0) -> str:
    """Run a client to completion and return its stdout; a failure raises with its stderr."""
    try:
        done = subprocess.run(list(argv), capture_output=True, timeout=timeout_s, preexec_fn=pinned(cores),
                              check=False)
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"{Path(argv[0]).name} {argv[1] if len(argv) > 1 else ''}: no result after "
                         f"{timeout_s:.0f} s") from exc
    if done.returncode != 0:
        raise BenchError(f"{' '.join(argv[:2])} failed ({done.returncode}): "
                         f"{done.stderr.decode(errors='replace')[-2000:]}")
    return done.stdout.decode()


def raise_nofile(want: int) -> int:
    """Raise this process's open-file limit (children inherit it); returns the limit in effect."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= want:
        return soft
    for target in (want, hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, max(target, hard)))
            return target
        except (ValueError, OSError):
            continue
    return soft


def machine_info() -> dict[str, object]:
    """What the numbers were measured on."""
    cpu = platform.processor() or ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    nginx_version = ""
    if shutil.which("nginx"):
        out = subprocess.run(["nginx", "-v"], capture_output=True, text=True, check=False)
        nginx_version = (out.stderr or out.stdout).strip().removeprefix("nginx version: ")
    wrk_version = ""
    if shutil.which("wrk"):
        out = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False)
        words = (out.stdout + out.stderr).split()
        wrk_version = " ".join(words[:2])
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "kernel": platform.release(),
        "os": _os_name(),
        "python": platform.python_version(),
        "wakegate_data_path": _data_path(),
        "nginx": nginx_version,
        "wrk": wrk_version,
    }


def _data_path() -> str:
    """How the gateway's data path runs: compiled by mypyc (gateway/native.py) or plain Python."""
    from gateway import native

    done = native.compiled()
    if native.stale():
        return "stale compiled modules (wakegate serve refuses to start)"
    return ("compiled (mypyc)" if set(done) == set(native.NATIVE_MODULES) else
            "plain Python" if not done else f"partly compiled ({len(done)} of {len(native.NATIVE_MODULES)} modules)")


def _os_name() -> str:
    with contextlib.suppress(OSError), open("/etc/os-release") as f:
        for line in f:
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip().strip('"')
    return platform.system()


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]
