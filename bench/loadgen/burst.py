"""``burst``: open N connections, then send one request on each as fast as possible, and record
when each response's first byte arrived (the kernel's receive stamp of its first segment, Unix ns,
for comparison with times other processes on this machine record with ``time.time_ns()``)."""

from __future__ import annotations

import errno
import os
import select
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.loadgen.conn import client_socket, send_all
from bench.loadgen.http1 import ProtocolError, ResponseReader, request_bytes
from bench.loadgen.kernel import ANCILLARY_SIZE, raise_nofile, stamp_of
from bench.loadgen.stats import ErrorCounts


@dataclass(frozen=True)
class BurstOptions:
    addr: tuple[str, int]
    host: str
    path: str
    n: int
    dial_concurrency: int = 256
    timeout_s: float = 120.0
    progress_file: str | None = None


def _note(path: str | None, line: str) -> None:
    if path:
        with Path(path).open("a") as f:
            f.write(line + "\n")


class _Req:
    __slots__ = ("first_ns", "reader", "sock", "status")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.reader = ResponseReader()
        self.first_ns = 0
        self.status = 0


def _connect_all(o: BurstOptions, deadline: float, errs: ErrorCounts) -> list[socket.socket]:
    """N connections, at most ``dial_concurrency`` of them being opened at once."""
    connected: list[socket.socket] = []
    ep = select.epoll()
    opening: dict[int, socket.socket] = {}
    started = 0
    try:
        while started < o.n or opening:
            while started < o.n and len(opening) < o.dial_concurrency:
                started += 1
                sock = client_socket()
                rc = sock.connect_ex(o.addr)
                if rc == 0:
                    connected.append(sock)
                elif rc in (errno.EINPROGRESS, errno.EAGAIN):
                    opening[sock.fileno()] = sock
                    ep.register(sock.fileno(), select.EPOLLOUT)
                else:
                    errs.add(os.strerror(rc).lower())
                    sock.close()
            left = deadline - time.monotonic()
            if left <= 0:
                for sock in opening.values():
                    sock.close()
                errs.add("i/o timeout", len(opening) + o.n - started)
                opening.clear()
                break
            for fd, _ in ep.poll(min(left, 1.0)):
                sock = opening.pop(fd)
                ep.unregister(fd)
                err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    errs.add(os.strerror(err).lower())
                    sock.close()
                else:
                    connected.append(sock)
    finally:
        ep.close()
    return connected


def run(o: BurstOptions) -> dict[str, Any]:
    """Run the burst; the JSON object ``burst`` prints."""
    raise_nofile()
    deadline = time.monotonic() + o.timeout_s
    req = request_bytes("GET", o.path, o.host)
    errs = ErrorCounts()
    began = time.perf_counter()
    socks = _connect_all(o, deadline, errs)
    connect_s = time.perf_counter() - began
    _note(o.progress_file, f"connected {len(socks)}")

    ep = select.epoll()
    reqs: dict[int, _Req] = {}
    for sock in socks:
        reqs[sock.fileno()] = _Req(sock)
        ep.register(sock.fileno(), select.EPOLLIN)
    sent_at = time.time_ns()
    for fd, r in list(reqs.items()):
        try:
            send_all(r.sock, req)
        except OSError as exc:
            errs.add_exc(exc)
            ep.unregister(fd)
            r.sock.close()
            del reqs[fd]
    _note(o.progress_file, f"sent {len(socks)}")

    done: list[_Req] = []
    unstamped = 0  # first bytes without a kernel stamp (timed at the read instead)
    try:
        while reqs:
            left = deadline - time.monotonic()
            if left <= 0:
                errs.add("i/o timeout", len(reqs))
                break
            for fd, _ in ep.poll(min(left, 1.0)):
                r = reqs[fd]
                try:
                    if not r.first_ns:
                        # One byte first: the stamp is then that of the segment carrying it (a read
                        # spanning several segments reports the last one's).
                        data, anc, _, _ = r.sock.recvmsg(1, ANCILLARY_SIZE)
                        if data:
                            r.first_ns = stamp_of(anc)
                            unstamped += not anc
                    else:
                        data = r.sock.recv(65536)
                    complete = r.reader.feed(data) if data else r.reader.eof()
                except BlockingIOError:
                    continue
                except (OSError, ProtocolError) as exc:
                    errs.add_exc(exc)
                    complete = False
                    r.first_ns = -1
                if complete or r.first_ns < 0:
                    if complete:
                        assert r.reader.head is not None
                        r.status = r.reader.head.status
                        done.append(r)
                    ep.unregister(fd)
                    r.sock.close()
                    del reqs[fd]
    finally:
        for r in reqs.values():
            r.sock.close()
        ep.close()

    statuses: dict[str, int] = {}
    ok: list[int] = []
    for r in done:
        statuses[str(r.status)] = statuses.get(str(r.status), 0) + 1
        if 200 <= r.status <= 299:
            ok.append(r.first_ns)
    return {
        "n": o.n,
        "connected": len(socks),
        "connect_s": connect_s,
        "sent_unix_ns": sent_at,
        "ok": len(ok),
        "statuses": statuses,
        "errors": errs.total(),
        "error_kinds": errs.as_json(),
        "first_byte_unix_ns": ok,
        "unstamped": unstamped,
    }
