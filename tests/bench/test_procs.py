"""The bench's process helpers, against real child processes."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.procs import CpuTrace, Proc, cpu_between

# Burns CPU on a second thread that then ends, and on the main thread; prints the CPU time it
# used (user + system, all threads) and waits on stdin, idle.
_BURNER = """
import threading, time

def burn(seconds):
    start = time.thread_time()
    while time.thread_time() - start < seconds:
        pass

worker = threading.Thread(target=burn, args=(0.1,))
worker.start()
worker.join()
burn(0.1)
print(time.process_time_ns(), flush=True)
input()
"""


@pytest.mark.timeout(30)
def test_cpu_ns_counts_every_thread_of_another_process(tmp_path: Path) -> None:
    popen = subprocess.Popen([sys.executable, "-c", _BURNER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True)
    proc = Proc("burner", popen, tmp_path / "burner.log")  # type: ignore[arg-type]  # text-mode pipes
    try:
        assert popen.stdout is not None and popen.stdin is not None
        own = int(popen.stdout.readline())  # the child's own count, once both threads are done
        seen = proc.cpu_ns()
        # At least what the child counted, the ended thread's 0.1 s included; and not much more:
        # the child has only printed and blocked on stdin since.
        assert own >= 200_000_000
        assert own <= seen < own + 50_000_000
        assert proc.cpu_ns() - seen < 5_000_000  # idle while blocked
        popen.stdin.write("\n")
        popen.stdin.flush()
        assert popen.wait(timeout=10) == 0
    finally:
        if popen.poll() is None:
            popen.kill()
            popen.wait()


def test_cpu_between_takes_the_samples_around_the_span() -> None:
    samples = [(100, 0), (200, 50), (300, 150), (400, 160)]
    assert cpu_between(samples, 200, 300) == (100, 100)  # exactly on samples
    assert cpu_between(samples, 250, 301) == (110, 200)  # widened to 200 .. 400
    assert cpu_between(samples, 100, 100) == (0, 0)


@pytest.mark.parametrize(("start", "end", "problem"), [
    (50, 300, "do not cover"),  # starts before the first sample
    (200, 401, "do not cover"),  # ends after the last
    (300, 200, "ends"),
])
def test_cpu_between_refuses_what_it_cannot_answer(start: int, end: int, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        cpu_between([(100, 0), (200, 50), (300, 150), (400, 160)], start, end)


@pytest.mark.timeout(30)
def test_cpu_trace_tells_busy_from_idle(tmp_path: Path) -> None:
    """A child that burns CPU until told to stop on stdin, then idles until stdin closes."""
    code = ("import select, sys\n"
            "while not select.select([sys.stdin], [], [], 0)[0]:\n    pass\n"
            "sys.stdin.readline()\nsys.stdin.read()\n")
    popen = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE)
    proc = Proc("spinner", popen, tmp_path / "spinner.log")
    try:
        assert popen.stdin is not None
        with CpuTrace(proc, interval_s=0.001) as trace:
            start = time.time_ns()
            while time.time_ns() - start < 100_000_000:  # 0.1 s of its spinning
                time.sleep(0.005)
            popen.stdin.write(b"stop\n")
            popen.stdin.flush()
            idle_from = time.time_ns()
            while time.time_ns() - idle_from < 100_000_000:  # 0.1 s of its idling
                time.sleep(0.005)
            end = time.time_ns()
        assert len(trace.samples) > 20
        assert [t for t, _ in trace.samples] == sorted(t for t, _ in trace.samples)
        busy_cpu, busy_wall = cpu_between(trace.samples, start + 10_000_000, idle_from - 10_000_000)
        idle_cpu, idle_wall = cpu_between(trace.samples, idle_from + 20_000_000, end - 10_000_000)
        # Spinning, it gets a good share of a core even on a busy machine; idle, next to nothing.
        assert busy_cpu > 0.25 * busy_wall
        assert idle_cpu < 0.05 * idle_wall
    finally:
        popen.kill()
        popen.wait()


@pytest.mark.timeout(30)
def test_cpu_trace_of_a_process_that_ended_keeps_what_it_sampled(tmp_path: Path) -> None:
    popen = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    proc = Proc("short", popen, tmp_path / "short.log")
    with CpuTrace(proc) as trace:
        assert popen.stdin is not None
        popen.stdin.close()
        assert popen.wait(timeout=10) == 0
    assert trace.samples  # the first one, at least; none after the process was reaped, and no error
    with pytest.raises(OSError):
        proc.cpu_ns()
