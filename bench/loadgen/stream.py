"""``stream``: one large download (``GET /download?bytes=N``) or upload (``POST /upload``, N zero
bytes) over a raw socket with 256 KiB buffers; bytes per second. Built not to be the bottleneck:
``recv_into`` one preallocated buffer, ``send`` from one preallocated zero buffer."""

from __future__ import annotations

import socket
import struct
import time
from typing import Any

from bench.loadgen.http1 import ProtocolError, ResponseReader, request_bytes

BUF = 256 * 1024


def _timeouts(sock: socket.socket, timeout_s: float) -> None:
    """Kernel-side send/receive timeouts (Python's own would poll before every call)."""
    sec = int(timeout_s)
    tv = struct.pack("@ll", sec, int((timeout_s - sec) * 1e6))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, tv)


def run(addr: tuple[str, int], host: str, mode: str, size: int, timeout_s: float) -> dict[str, Any]:
    """Transfer ``size`` bytes; the JSON object ``stream`` prints."""
    if size <= 0:
        raise ValueError("--bytes must be positive")
    if mode == "download":
        head = request_bytes("GET", f"/download?bytes={size}", host)
    elif mode == "upload":
        head = request_bytes("POST", "/upload", host,
                             f"Content-Type: application/octet-stream\r\nContent-Length: {size}\r\n")
    else:
        raise ValueError(f"--mode: want download or upload, got {mode!r}")
    buf = bytearray(BUF)
    view = memoryview(buf)
    deadline = time.monotonic() + timeout_s
    began = time.perf_counter()
    sock = socket.create_connection(addr, timeout=timeout_s)
    try:
        sock.settimeout(None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        _timeouts(sock, timeout_s)
        sock.sendall(head)
        if mode == "upload":
            left = size
            while left > 0:
                left -= sock.send(view[:left] if left < BUF else view)
                if time.monotonic() > deadline:
                    raise TimeoutError(f"upload not done after {timeout_s:g} s")
        reader = ResponseReader()
        kept = bytearray()  # the upload's small answer (the byte count)
        while True:
            n = sock.recv_into(view)
            if n == 0:
                reader.eof()
                break
            if mode == "upload" and len(kept) < 4096:
                kept += view[:n]
            if reader.feed(view[:n]):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"transfer not done after {timeout_s:g} s")
    except BlockingIOError:
        raise TimeoutError(f"no progress for {timeout_s:g} s") from None
    finally:
        sock.close()
    elapsed = time.perf_counter() - began
    assert reader.head is not None and reader.body is not None
    if reader.head.status != 200:
        raise ProtocolError(f"status {reader.head.status}")
    if mode == "download" and reader.body.received != size:
        raise ProtocolError(f"downloaded {reader.body.received} bytes, want {size}")
    if mode == "upload" and not reader.head.chunked:
        answer = bytes(kept[reader.head.length:]).strip()
        if answer.isdigit() and int(answer) != size:
            raise ProtocolError(f"the upstream counted {int(answer)} uploaded bytes, want {size}")
    return {"mode": mode, "bytes": size, "seconds": elapsed, "bytes_per_s": size / elapsed}
