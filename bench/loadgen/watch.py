"""``watch``: list an EndpointSlice collection (none may be ready yet), watch it, and print when the
event with a ready endpoint arrived: the kernel's receive stamp (Unix ns) of the first segment of the
read that delivered its line, so the watch's own TLS and JSON work is not counted. A process of its
own, started and confirmed open before the request that wakes the project."""

from __future__ import annotations

import http.client
import json
import os
import select
import socket
import ssl
import time
import urllib.parse
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


def run(url: str, ca: str, cert: str, key: str, timeout_s: float, progress_file: str | None) -> dict[str, Any]:
    """List, check, watch; the JSON object ``watch`` prints."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise ValueError(f"--url: want an https:// URL, got {url!r}")
    try:
        ctx = ssl.create_default_context(cafile=ca)
        ctx.load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as exc:
        raise ValueError(f"--ca/--cert/--key: {exc}") from exc
    host, port = parts.hostname, parts.port or 443
    path = parts.path or "/"
    version = _list(host, port, ctx, path + (f"?{parts.query}" if parts.query else ""), timeout_s)
    deadline = time.monotonic() + timeout_s

    raw = socket.create_connection((host, port), timeout=timeout_s)
    enable_rx_timestamps(raw)
    tls = ctx.wrap_socket(raw, server_hostname=host)
    peek = socket.socket(fileno=os.dup(tls.fileno()))  # the TCP socket under TLS, for its receive stamps
    try:
        query = urllib.parse.urlencode({"watch": "1", "resourceVersion": version, "timeoutSeconds": int(timeout_s)})
        tls.sendall(f"GET {path}?{query} HTTP/1.1\r\nHost: {parts.netloc}\r\nAccept: application/json\r\n"
                    "User-Agent: wakegate-bench\r\n\r\n".encode())
        buf, lines = bytearray(), bytearray()
        chunked: bool | None = None  # None until the head is read
        arrived = time.time_ns()  # replaced by the kernel stamp before anything is read
        while True:
            if not tls.pending():
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([tls], [], [], left)[0]:
                    raise RuntimeError(f"no ready endpoint within {timeout_s:g} s")
                _, anc, _, _ = peek.recvmsg(1, ANCILLARY_SIZE, socket.MSG_PEEK)
                arrived = stamp_of(anc)
            data = tls.recv(65536)
            if not data:
                raise RuntimeError("watch ended before an endpoint was ready")
            buf += data
            if chunked is None:
                head = parse_response_head(bytes(buf))
                if head is None:
                    continue
                if head.status != 200:
                    raise RuntimeError(f"watch: status {head.status}")
                chunked = head.chunked
                del buf[:head.length]
                if progress_file:
                    Path(progress_file).write_text("watching\n")
            ended = False
            if chunked:
                ended = dechunk(buf, lines)
            else:
                lines += buf
                buf.clear()
            while (nl := lines.find(b"\n")) >= 0:
                line = bytes(lines[:nl]).strip()
                del lines[:nl + 1]
                if not line:
                    continue
                try:
                    event = json.loads(line)
                except ValueError as exc:
                    raise RuntimeError(f"watch: malformed event: {exc}") from exc
                if event.get("type") in ("ADDED", "MODIFIED") and _ready(event.get("object")):
                    return {"ready_unix_ns": arrived}
            if ended:
                raise RuntimeError("watch ended before an endpoint was ready")
    finally:
        peek.close()
        tls.close()
