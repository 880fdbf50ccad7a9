"""``rate``: open-loop HTTP/1.1 load at a constant rate, no coordinated omission.

Each connection has a fixed schedule (rate / connections per second, staggered by connection).
One process, one thread: non-blocking sockets on epoll, the schedule on a timerfd in the same
epoll (epoll's own timeout is millisecond-granular), timer slack 1 ns, never a busy wait.
A request whose connection was still busy at its intended time is sent as soon as the connection
is free and measured from the intended time (a stalled server is charged for the whole stall, as
in wrk2); one sent while its connection was free is measured from its actual send, so the
generator's own wake-up delay is not charged to the server. Response times are kernel stamps.
"""

from __future__ import annotations

import http.client
import select
import socket
import threading
import time
import urllib.parse
from collections import deque
from dataclasses import dataclass
from typing import Any

from bench.loadgen.conn import connect_blocking, send_all
from bench.loadgen.http1 import ProtocolError, ResponseReader, request_bytes
from bench.loadgen.kernel import ANCILLARY_SIZE, SO_TIMESTAMPNS, TIMESPEC, Timer, raise_nofile, set_timer_slack
from bench.loadgen.stats import ErrorCounts, percentiles_ms

S = 1_000_000_000


@dataclass(frozen=True)
class RateOptions:
    addr: tuple[str, int]
    host: str
    path: str
    connections: int
    rate: float
    duration_s: float
    warmup_s: float
    timeout_s: float
    scrape_url: str | None = None
    scrape_interval_s: float = 1.0


class _Conn:
    __slots__ = ("backlog", "busy", "done_ns", "fd", "from_ns", "intended_ns", "partial", "reader", "sent_ns",
                 "sock")

    def __init__(self) -> None:
        self.sock: socket.socket | None = None
        self.fd = -1
        self.reader = ResponseReader()
        self.busy = False
        self.partial = False  # part of the current response has been read
        self.backlog: deque[int] = deque()  # intended times (Unix ns) that found the connection busy
        self.done_ns = 0  # when the previous response completed (kernel stamp)
        self.from_ns = 0
        self.intended_ns = 0
        self.sent_ns = 0


class _Scraper(threading.Thread):
    """GETs a URL every ``interval_s`` between two Unix-ns instants; durations by perf_counter."""

    def __init__(self, url: str, interval_s: float, begin_ns: int, end_ns: int, timeout_s: float) -> None:
        super().__init__(name="scrape", daemon=True)
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"--scrape-url: want an http:// URL, got {url!r}")
        self.host, self.port = parts.hostname, parts.port or 80
        self.target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.interval_ns, self.begin_ns, self.end_ns = int(interval_s * S), begin_ns, end_ns
        self.timeout_s = timeout_s
        self.durations_ns: list[int] = []
        self.errors = ErrorCounts()
        self._stop_event = threading.Event()

    def stop(self) -> None:
        self._stop_event.set()

    def run(self) -> None:
        conn: http.client.HTTPConnection | None = None
        t = self.begin_ns
        while t < self.end_ns:
            if self._stop_event.wait(max(0.0, (t - time.time_ns()) / S)):
                break
            began = time.perf_counter_ns()
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout_s)
                conn.request("GET", self.target)
                resp = conn.getresponse()
                resp.read()
                if resp.status != 200:
                    raise ProtocolError(f"status {resp.status}")
                self.durations_ns.append(time.perf_counter_ns() - began)
            except (OSError, http.client.HTTPException, ProtocolError) as exc:
                self.errors.add_exc(exc)
                if conn is not None:
                    conn.close()
                conn = None
            t += self.interval_ns
        if conn is not None:
            conn.close()


def run(o: RateOptions) -> dict[str, Any]:
    """Run the load; the JSON object ``rate`` prints."""
    if o.connections <= 0 or o.rate <= 0:
        raise ValueError("--addr, a positive -c and a positive --rate are required")
    set_timer_slack(1)
    raise_nofile()
    req = request_bytes("GET", o.path, o.host)
    n = o.connections
    # Slot j (connection j % n) is due at start + j * spacing: each connection's own schedule has
    # the period n * spacing, and the connections are staggered by one spacing.
    spacing = int(S / o.rate)
    if spacing <= 0:
        raise ValueError(f"--rate {o.rate} is too high")
    timeout_ns = int(o.timeout_s * S)
    conns = [_Conn() for _ in range(n)]
    ep = select.epoll()
    by_fd: dict[int, _Conn] = {}

    def attach(c: _Conn, sock: socket.socket) -> None:
        c.sock, c.fd = sock, sock.fileno()
        by_fd[c.fd] = c
        ep.register(c.fd, select.EPOLLIN)

    for c in conns:
        try:
            attach(c, connect_blocking(o.addr, o.timeout_s))
        except OSError as exc:
            raise OSError(f"connect {o.addr[0]}:{o.addr[1]}: {exc}") from exc

    errs = ErrorCounts()
    samples: list[int] = []
    non_2xx = unsent = busy = 0
    unstamped = 0  # responses without a kernel stamp (timed at the read instead)

    # The schedule runs on CLOCK_MONOTONIC (the timer's clock); intended times are reported and
    # compared with kernel stamps in CLOCK_REALTIME, through an offset taken once.
    offset = time.time_ns() - time.monotonic_ns()
    start = time.monotonic_ns() + 50_000_000
    measure_mono = start + int(o.warmup_s * S)
    end_mono = measure_mono + int(o.duration_s * S)
    measure_from = measure_mono + offset
    give_up = end_mono + offset + timeout_ns

    def close(c: _Conn) -> None:
        if c.sock is not None:
            del by_fd[c.fd]
            ep.unregister(c.fd)
            c.sock.close()
            c.sock, c.fd = None, -1
        c.reader.reset()
        c.partial = False

    def send(c: _Conn, intended: int) -> None:
        """Send the request meant for ``intended``; on failure, the connection's next late one."""
        nonlocal busy, unsent
        while True:
            now = time.time_ns()
            if now > give_up:
                unsent += 1 + len(c.backlog)
                c.backlog.clear()
                return
            c.from_ns = intended if c.done_ns > intended else now
            c.intended_ns = intended
            try:
                if c.sock is None:
                    attach(c, connect_blocking(o.addr, o.timeout_s))
                    now = time.time_ns()
                assert c.sock is not None
                c.sent_ns = now
                sent = c.sock.send(req)
                if sent != len(req):
                    send_all(c.sock, req[sent:])
            except OSError as exc:
                errs.add_exc(exc)
                close(c)
                c.done_ns = time.time_ns()
                if not c.backlog:
                    return
                intended = c.backlog.popleft()
                continue
            c.busy = True
            busy += 1
            return

    def finish(c: _Conn, done: int, failed: BaseException | None, eof: bool = False) -> None:
        nonlocal busy, non_2xx
        c.busy = False
        busy -= 1
        c.done_ns = done
        if failed is not None:
            errs.add_exc(failed)
            close(c)
        else:
            head = c.reader.head
            assert head is not None
            if not 200 <= head.status <= 299:
                non_2xx += 1
            if c.intended_ns >= measure_from:
                samples.append(done - c.from_ns)
            if head.closing or eof:
                close(c)
            else:
                c.reader.reset()
                c.partial = False
        if c.backlog:
            send(c, c.backlog.popleft())

    scraper = None
    if o.scrape_url:
        scraper = _Scraper(o.scrape_url, o.scrape_interval_s, measure_from, end_mono + offset, o.timeout_s)
        scraper.start()

    timer = Timer()
    tfd = timer.fd
    ep.register(tfd, select.EPOLLIN)
    i = j = 0
    next_t = start  # when slot j is due (monotonic)
    # One periodic expiry per slot (the rate's spacing): no re-arming per request.
    timer.arm_periodic(next_t, spacing)
    consume = timer.consume
    scheduling = True
    last_check = time.monotonic_ns()
    recvmsg_size = 16384
    memo: dict[bytes, tuple[int, bool]] = {}  # whole one-read responses → (status, closing)
    unpack_timespec = TIMESPEC.unpack_from
    try:
        while scheduling or busy:
            for fd, _ in ep.poll(0.1):
                if fd == tfd:
                    consume()  # before reading the clock: a tick after this read is not lost
                    now = time.monotonic_ns()
                    while next_t <= now:
                        c = conns[i]  # i == j % n
                        if c.busy:
                            c.backlog.append(next_t + offset)
                        else:
                            send(c, next_t + offset)
                        i += 1
                        if i == n:
                            i = 0
                        j += 1
                        next_t = start + j * spacing
                        if next_t >= end_mono:
                            scheduling = False
                            break
                        now = time.monotonic_ns()
                    if not scheduling:
                        timer.disarm()
                    continue
                got = by_fd.get(fd)
                if got is None or got.sock is None:
                    continue
                c = got
                try:
                    data, anc, _, _ = got.sock.recvmsg(recvmsg_size, ANCILLARY_SIZE)
                except BlockingIOError:
                    continue
                except OSError as exc:
                    if c.busy:
                        finish(c, time.time_ns(), exc)
                    else:
                        close(c)
                    continue
                if not c.busy:  # the server closed an idle keep-alive connection (or sent junk)
                    if data:
                        errs.add("unexpected bytes on an idle connection")
                    close(c)
                    continue
                if anc and anc[0][1] == SO_TIMESTAMPNS:
                    sec, nsec = unpack_timespec(anc[0][2])
                    done = sec * S + nsec
                else:
                    done = time.time_ns()
                    unstamped += 1
                fresh = not c.partial
                seen = memo.get(data) if fresh else None
                if seen is not None:  # byte for byte a whole response parsed before: the common case
                    status, closing = seen
                    c.busy = False
                    busy -= 1
                    c.done_ns = done
                    if not 200 <= status <= 299:
                        non_2xx += 1
                    if c.intended_ns >= measure_from:
                        samples.append(done - c.from_ns)
                    if closing:
                        close(c)
                    if c.backlog:
                        send(c, c.backlog.popleft())
                    continue
                try:
                    complete = c.reader.feed(data) if data else c.reader.eof()
                except ProtocolError as exc:
                    finish(c, time.time_ns(), exc)
                    continue
                if not complete:
                    c.partial = True
                    continue
                head = c.reader.head
                if fresh and data and head is not None:
                    if len(memo) >= 1024:  # a Date header changes every second
                        memo.clear()
                    memo[data] = (head.status, head.closing)
                finish(c, done, None, eof=not data)
            mono = time.monotonic_ns()
            if mono - last_check > 100_000_000:
                last_check = mono
                now_rt = time.time_ns()
                for c in conns:
                    if c.busy and now_rt - c.sent_ns > timeout_ns:
                        finish(c, now_rt, TimeoutError("i/o timeout"))
    finally:
        timer.close()
        for c in conns:
            close(c)
        ep.close()
    if scraper is not None:
        scraper.stop()
        scraper.join(o.timeout_s + 5)
    requests = len(samples)
    cpu_s = time.process_time()
    return {
        "requests": requests,
        "errors": errs.total(),
        "error_kinds": errs.as_json(),
        "non_2xx": non_2xx,
        "unsent": unsent,
        "target_rate": o.rate,
        "rate": requests / o.duration_s,
        "connections": n,
        "duration_s": o.duration_s,
        "latency_ms": percentiles_ms(samples),
        "scrapes": len(scraper.durations_ns) if scraper else 0,
        "scrape_ms": percentiles_ms(scraper.durations_ns) if scraper else {},
        "scrape_errors": scraper.errors.total() if scraper else 0,
        "loadgen_cpu_s": cpu_s,
        "unstamped": unstamped,
    }
