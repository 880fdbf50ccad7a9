"""``serve``: the upstream of the cold-start, herd and streaming scenarios (uvloop + httptools).

``/download?bytes=N`` streams N zero bytes in 256 KiB writes with flow control, ``/upload`` counts
the request body and answers with the count, every other path gets ``--body-size`` bytes of 'x'.
Responses to ``/`` are precomputed bytes: it answers 1,000 released requests at a cold start and
must be cheap per request. It listens only after ``--delay`` and ``--wait-file``, then appends
the Unix-ns time to ``--ready-file``: from then on the kernel accepts connections for it.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from bench.loadgen.conn import parse_addr
from bench.loadgen.kernel import raise_nofile

CHUNK = 256 * 1024
_ZEROS = bytes(CHUNK)


@dataclass(frozen=True)
class ServeOptions:
    listen: str | None
    delay_s: float = 0.0
    wait_file: str | None = None
    wait_timeout_s: float = 300.0
    ready_file: str | None = None
    body_size: int = 1024


def _response(status: str, body: bytes, content_type: str, close: bool) -> bytes:
    head = f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
    return (head + ("Connection: close\r\n" if close else "") + "\r\n").encode() + body


class _Responses:
    def __init__(self, body_size: int) -> None:
        body = b"x" * body_size
        self.ok = _response("200 OK", body, "text/plain", False)
        self.ok_close = _response("200 OK", body, "text/plain", True)
        bad = b"bytes=N required\n"
        self.bad = _response("400 Bad Request", bad, "text/plain; charset=utf-8", False)
        self.bad_close = _response("400 Bad Request", bad, "text/plain; charset=utf-8", True)
        self.malformed = _response("400 Bad Request", b"malformed request\n", "text/plain", True)


class ServeProtocol(asyncio.Protocol):
    """One client connection."""

    def __init__(self, responses: _Responses) -> None:
        import httptools  # type: ignore[import-not-found,unused-ignore]

        self.r = responses
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.route = 0  # 0: body, 1: download, 2: upload
        self.uploaded = 0
        self.download_left = 0
        self.download_close = False
        self.paused = False
        self.streaming = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        t: asyncio.Transport = transport  # type: ignore[assignment]  # uvloop's TCPTransport: no asyncio subclass
        t.set_write_buffer_limits(high=4 * CHUNK, low=CHUNK)
        self.transport = t

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except Exception:  # httptools raises its own HttpParserError family; any is a malformed request
            if self.transport is not None:
                self.transport.write(self.r.malformed)
                self.transport.close()

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.url = b""
        self.uploaded = 0

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_headers_complete(self) -> None:
        path = self.url.split(b"?", 1)[0]
        self.route = 1 if path == b"/download" else 2 if path == b"/upload" else 0

    def on_body(self, body: bytes) -> None:
        self.uploaded += len(body)

    def on_message_complete(self) -> None:
        t = self.transport
        if t is None or t.is_closing():
            return
        keep = self.parser.should_keep_alive()
        if self.route == 0:
            t.write(self.r.ok if keep else self.r.ok_close)
        elif self.route == 2:
            t.write(_response("200 OK", f"{self.uploaded}\n".encode(), "text/plain", not keep))
        else:
            size = _bytes_param(self.url)
            if size is None:
                t.write(self.r.bad if keep else self.r.bad_close)
            else:
                t.write(f"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {size}\r\n"
                        f"{'' if keep else 'Connection: close' + chr(13) + chr(10)}\r\n".encode())
                self.download_left, self.download_close = size, not keep
                self.streaming = True
                t.pause_reading()  # one response at a time: no pipelined request while streaming
                self._stream()
                return
        if not keep:
            t.close()

    def _stream(self) -> None:
        t = self.transport
        assert t is not None
        while self.download_left > 0 and not self.paused and not t.is_closing():
            n = min(CHUNK, self.download_left)
            self.download_left -= n
            t.write(_ZEROS if n == CHUNK else _ZEROS[:n])
        if self.download_left == 0 and not self.paused and not t.is_closing():
            self.streaming = False
            if self.download_close:
                t.close()
            else:
                t.resume_reading()

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        if self.streaming and self.transport is not None:
            self._stream()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.download_left = 0
        self.streaming = False


def _bytes_param(url: bytes) -> int | None:
    _, _, query = url.partition(b"?")
    for part in query.split(b"&"):
        if part.startswith(b"bytes="):
            value = part[6:]
            return int(value) if value.isdigit() else None
    return None


def _wait(o: ServeOptions) -> None:
    if o.delay_s:
        time.sleep(o.delay_s)
    if o.wait_file:
        give_up = time.monotonic() + o.wait_timeout_s
        while not os.path.exists(o.wait_file):
            if time.monotonic() > give_up:
                raise RuntimeError(f"{o.wait_file} did not appear within {o.wait_timeout_s:g} s")
            time.sleep(0.001)


def run(o: ServeOptions) -> None:
    """Wait, listen, record the time, serve until killed."""
    if o.body_size < 0:
        raise ValueError(f"--body-size: must not be negative, got {o.body_size}")
    listen = o.listen
    if not listen:
        port = os.environ.get("PORT")
        if not port:
            raise ValueError("--listen not given and PORT not set")
        listen = f"127.0.0.1:{port}"
    host, port_number = parse_addr(listen)
    raise_nofile()
    import uvloop  # type: ignore[import-not-found,unused-ignore]

    _wait(o)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port_number))
    sock.listen(4096)
    if o.ready_file:
        with Path(o.ready_file).open("a") as f:
            f.write(f"{time.time_ns()}\n")
    responses = _Responses(o.body_size)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: ServeProtocol(responses), sock=sock, backlog=4096)
        async with server:
            await server.serve_forever()

    uvloop.run(main())
