"""``watch``: list an EndpointSlice collection (none may be ready yet), watch it on several connections,
and print when the event with a ready endpoint first arrived: the kernel's receive stamp (Unix ns) of
the first segment of the read that delivered its line, so the watch's own TLS and JSON work is not
counted. A process of its own, started and confirmed open before the request that wakes the project."""

from __future__ import annotations

import http.client
import json
import os
import select
import socket
import ssl
import time
import urllib.parse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.loadgen.http1 import ProtocolError, parse_response_head
from bench.loadgen.kernel import ANCILLARY_SIZE, enable_rx_timestamps, stamp_of


def _ready(slice_: Any) -> bool:
    if not isinstance(slice_, dict):
        return False
    for ep in slice_.get("endpoints") or ():
        if isinstance(ep, dict) and (ep.get("conditions") or {}).get("ready") is True:
            return True
    return False


def dechunk(buf: bytearray, out: bytearray) -> bool:
    """Move the complete chunks at the start of ``buf`` (chunked transfer coding) to ``out``;
    True once the last chunk has been seen."""
    while True:
        nl = buf.find(b"\r\n")
        if nl < 0:
            if len(buf) > 4096:
                raise ProtocolError("chunked body: chunk size line longer than 4096 bytes")
            return False
        size_text = bytes(buf[:nl]).split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise ProtocolError(f"chunked body: malformed chunk size {size_text[:20]!r}") from None
        if size == 0:
            return True
        if len(buf) < nl + 2 + size + 2:
            return False
        out += buf[nl + 2:nl + 2 + size]
        del buf[:nl + 2 + size + 2]


def _list(host: str, port: int, ctx: ssl.SSLContext, target: str, timeout_s: float) -> str:
    """GET the collection; raise if an endpoint is ready already; its resourceVersion."""
    conn = http.client.HTTPSConnection(host, port, context=ctx, timeout=timeout_s)
    try:
        conn.request("GET", target)
        resp = conn.getresponse()
        body = resp.read()
    finally:
        conn.close()
    if resp.status != 200:
        raise RuntimeError(f"list: status {resp.status}")
    try:
        listing = json.loads(body)
    except ValueError as exc:
        raise RuntimeError(f"list: {exc}") from exc
    if any(_ready(item) for item in listing.get("items") or ()):
        raise RuntimeError("an endpoint is ready already")
    return str((listing.get("metadata") or {}).get("resourceVersion", ""))


class _Watch:
    """One watch connection: its TLS socket, a duplicate of the TCP socket under it (for the kernel's
    receive stamps) and what has been read so far."""

    def __init__(self, host: str, port: int, ctx: ssl.SSLContext, timeout_s: float) -> None:
        raw = socket.create_connection((host, port), timeout=timeout_s)
        enable_rx_timestamps(raw)
        self.tls = ctx.wrap_socket(raw, server_hostname=host)
        self.peek = socket.socket(fileno=os.dup(self.tls.fileno()))
        self.buf, self.lines = bytearray(), bytearray()
        self.chunked: bool | None = None  # None until the head is read
        self.arrived = time.time_ns()  # replaced by the kernel stamp before anything is read

    def fileno(self) -> int:
        return self.tls.fileno()

    def close(self) -> None:
        self.peek.close()
        self.tls.close()

    def stamp(self) -> None:
        """Note the kernel's arrival stamp of the next unread segment (call when readable)."""
        _, anc, _, _ = self.peek.recvmsg(1, ANCILLARY_SIZE, socket.MSG_PEEK)
        self.arrived = stamp_of(anc)

    def read(self) -> tuple[bool, int | None]:
        """One read: (the head has been read, the arrival stamp once an event with a ready endpoint
        has come)."""
        data = self.tls.recv(65536)
        if not data:
            raise RuntimeError("watch ended before an endpoint was ready")
        self.buf += data
        if self.chunked is None:
            head = parse_response_head(bytes(self.buf))
            if head is None:
                return False, None
            if head.status != 200:
                raise RuntimeError(f"watch: status {head.status}")
            self.chunked = head.chunked
            del self.buf[:head.length]
        ended = False
        if self.chunked:
            ended = dechunk(self.buf, self.lines)
        else:
            self.lines += self.buf
            self.buf.clear()
        while (nl := self.lines.find(b"\n")) >= 0:
            line = bytes(self.lines[:nl]).strip()
            del self.lines[:nl + 1]
            if not line:
                continue
            try:
                event = json.loads(line)
            except ValueError as exc:
                raise RuntimeError(f"watch: malformed event: {exc}") from exc
            if event.get("type") in ("ADDED", "MODIFIED") and _ready(event.get("object")):
                return True, self.arrived
        if ended:
            raise RuntimeError("watch ended before an endpoint was ready")
        return True, None


def run(urls: Sequence[str], ca: str, cert: str, key: str, timeout_s: float, progress_file: str | None,
        connections: int = 3) -> dict[str, Any]:
    """For each URL (an EndpointSlice collection, its query kept): list, check, then watch it on
    ``connections`` connections from the listed resourceVersion; the JSON object ``watch`` prints.

    The apiserver writes an event to each watcher from a goroutine of its own, so one connection
    can receive it milliseconds after another on a busy machine, and watches of one kind (say,
    namespaced) can lag those of another (cluster-wide, by label, as the gateway's informer) together.
    The earliest arrival over all of them is the moment the EndpointSlice was first seen ready."""
    if connections < 1:
        raise ValueError(f"--connections: want at least 1, got {connections}")
    if not urls:
        raise ValueError("--url: give at least one")
    try:
        ctx = ssl.create_default_context(cafile=ca)
        ctx.load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as exc:
        raise ValueError(f"--ca/--cert/--key: {exc}") from exc
    targets = []
    for url in urls:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "https" or not parts.hostname:
            raise ValueError(f"--url: want an https:// URL, got {url!r}")
        targets.append(parts)
    deadline = time.monotonic() + timeout_s
    watches: list[_Watch] = []
    try:
        for parts in targets:
            host, port = parts.hostname or "", parts.port or 443
            path = parts.path or "/"
            version = _list(host, port, ctx, path + (f"?{parts.query}" if parts.query else ""), timeout_s)
            query = urllib.parse.urlencode([*urllib.parse.parse_qsl(parts.query), ("watch", "1"),
                                            ("resourceVersion", version), ("timeoutSeconds", int(timeout_s))])
            request = (f"GET {path}?{query} HTTP/1.1\r\nHost: {parts.netloc}\r\nAccept: application/json\r\n"
                       "User-Agent: wakegate-bench\r\n\r\n").encode()
            for _ in range(connections):
                watches.append(_Watch(host, port, ctx, timeout_s))
                watches[-1].tls.sendall(request)
        opened: set[_Watch] = set()
        stamps: dict[_Watch, int] = {}
        while len(stamps) < len(watches):
            waiting = [w for w in watches if w not in stamps]
            ready = [w for w in waiting if w.tls.pending()]
            if not ready:
                left = deadline - time.monotonic()
                if left <= 0 or not (readable := select.select(waiting, [], [], left)[0]):
                    raise RuntimeError(f"no ready endpoint within {timeout_s:g} s "
                                       f"({len(stamps)} of {len(watches)} watches saw one)")
                for w in readable:
                    w.stamp()
                ready = readable
            for w in ready:
                head_read, stamp = w.read()
                if head_read and w not in opened:
                    opened.add(w)
                    if progress_file and len(opened) == len(watches):
                        Path(progress_file).write_text("watching\n")
                if stamp is not None:
                    stamps[w] = stamp
        arrivals = sorted(stamps.values())
        return {"ready_unix_ns": arrivals[0], "arrivals_unix_ns": arrivals}
    finally:
        for w in watches:
            w.close()
