"""bench/loadgen's command-line durations, percentiles and error tallies; the kernel receive stamps."""

from __future__ import annotations

import select
import socket
import time

import pytest

from bench.loadgen.cli import build_parser
from bench.loadgen.conn import parse_addr
from bench.loadgen.kernel import ANCILLARY_SIZE, enable_rx_timestamps, stamp_of
from bench.loadgen.stats import ErrorCounts, parse_duration, percentiles_ms


@pytest.mark.parametrize(("text", "seconds"), [
    ("10s", 10.0), ("250ms", 0.25), ("1m30s", 90.0), ("1.5h", 5400.0), ("2", 2.0), ("0.05", 0.05),
    ("100us", 1e-4), ("100µs", 1e-4), ("7ns", 7e-9), ("0s", 0.0), (".5s", 0.5),
])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "s", "10x", "10 s", "1s2", "-1s", "-3", "nan", "inf", "1s-2s"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_percentiles_nearest_rank() -> None:
    samples = list(range(1000, 0, -1))  # 1..1000 ns, unsorted
    p = percentiles_ms([s * 1_000_000 for s in samples])
    assert (p["p50"], p["p90"], p["p99"], p["p99_9"], p["max"]) == (500, 900, 990, 999, 1000)
    assert p["mean"] == pytest.approx(500.5)
    assert percentiles_ms([]) == {}
    assert percentiles_ms([3_000_000])["p99_9"] == 3.0


def test_error_kinds_keep_the_cause() -> None:
    e = ErrorCounts()
    assert e.as_json() is None and e.total() == 0
    e.add("read tcp 127.0.0.1:1->127.0.0.1:2: connection reset by peer")
    e.add("connection reset by peer", 2)
    e.add_exc(ConnectionRefusedError(111, "Connection refused"))
    e.add_exc(TimeoutError())
    assert e.as_json() == {"connection reset by peer": 3, "connection refused": 1, "i/o timeout": 1}
    assert e.total() == 5


def test_addresses() -> None:
    assert parse_addr("127.0.0.1:8080") == ("127.0.0.1", 8080)
    assert parse_addr("[::1]:80") == ("::1", 80)
    for bad in ("127.0.0.1", ":80", "h:0", "h:70000", "h:x"):
        with pytest.raises(ValueError, match="HOST:PORT"):
            parse_addr(bad)


def test_command_line_flags() -> None:
    p = build_parser()
    a = p.parse_args(["rate", "--addr=127.0.0.1:9", "--host=h", "-c=7", "--rate=100", "--duration=1m",
                      "--warmup=500ms", "--scrape-url=http://127.0.0.1:1/metrics", "--scrape-interval=0.5"])
    assert (a.addr, a.host, a.connections, a.rate, a.duration, a.warmup, a.scrape_interval) == (
        ("127.0.0.1", 9), "h", 7, 100.0, 60.0, 0.5, 0.5)
    a = p.parse_args(["burst", "--addr", "127.0.0.1:9", "--n=10000", "--timeout=2m",
                      "--progress-file=/tmp/p"])
    assert (a.n, a.timeout, a.dial_concurrency, a.progress_file) == (10000, 120.0, 256, "/tmp/p")
    for bad in (["rate", "--addr=x"], ["rate", "--addr=h:1", "--rate=0"], ["burst", "--addr=h:1", "--n=-1"],
                ["stream", "--addr=h:1", "--mode=sideways"], ["rate", "--addr=h:1", "--duration=soon"]):
        with pytest.raises(SystemExit):
            p.parse_args(bad)


def _exchange(sender: socket.socket, receiver: socket.socket) -> tuple[int, int, int | None]:
    """One byte across: (time before sending, time it was readable, its kernel stamp or None)."""
    before = time.time_ns()
    sender.sendall(b"x")
    ready, _, _ = select.select([receiver], [], [], 5)
    arrived_by = time.time_ns()
    assert ready, "nothing arrived within 5 s"
    time.sleep(0.02)  # read well after the arrival: the stamp must not move with the read
    data, anc, _, _ = receiver.recvmsg(16, ANCILLARY_SIZE)
    assert data == b"x"
    return before, arrived_by, stamp_of(anc) if anc else None


def test_kernel_receive_stamp_is_the_arrival() -> None:
    """The stamp of a segment is when it arrived, not when it was read."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname(), timeout=5)
        peer, _ = server.accept()
        with client, peer:
            enable_rx_timestamps(client)
            # The kernel switches receive stamping on in a deferred work item when the first socket
            # asks for it; segments arriving before that carry no stamp.
            deadline = time.monotonic() + 10
            while (result := _exchange(peer, client))[2] is None:
                assert time.monotonic() < deadline, "SO_TIMESTAMPNS never delivered a stamp"
            before, arrived_by, stamp = result
            assert stamp is not None and before <= stamp <= arrived_by
