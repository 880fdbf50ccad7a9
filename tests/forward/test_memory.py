"""100 MB through the gateway both ways with bounded memory.

The gateway runs in its own process and its RSS is sampled throughout. Each transfer starts with
the receiving side deliberately not reading for a while: a gateway that buffered instead of pushing
back would swallow the whole body into memory during that pause. Socket buffers live in the kernel
and are not part of the RSS, so the growth measured is the gateway's own buffering.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import psutil

from tests.support import DOMAIN, STEP_TIMEOUT_S, build_request

SIZE = 100 * 1024 * 1024
CHUNK = 1024 * 1024
PAUSE_S = 1.0  # how long the receiving side does not read at first
MAX_GROWTH = 30 * 1024 * 1024
ROOT = Path(__file__).resolve().parents[2]


def _chunk(i: int) -> bytes:
    return bytes([i % 251]) * CHUNK


class Upstream:
    """Raw upstream: /upload hashes the body (after a pause), /download streams SIZE bytes."""

    def __init__(self) -> None:
        self.upload_hash = ""
        self.upload_size = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        if head.startswith(b"GET /warm"):
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nwarm")
        elif head.startswith(b"POST /upload"):
            await asyncio.sleep(PAUSE_S)
            digest = hashlib.sha256()
            remaining = SIZE
            while remaining:
                data = await reader.read(min(remaining, 256 * 1024))
                if not data:
                    break
                digest.update(data)
                remaining -= len(data)
            self.upload_size = SIZE - remaining
            self.upload_hash = digest.hexdigest()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        else:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                         b"Content-Length: %d\r\n\r\n" % SIZE)
            for i in range(SIZE // CHUNK):
                writer.write(_chunk(i))
                await writer.drain()
        await writer.drain()
        writer.close()


@contextlib.asynccontextmanager
async def gateway_process(upstream_port: int) -> AsyncIterator[tuple[int, psutil.Process]]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.forward.gateway_proc", "big", f"127.0.0.1:{upstream_port}",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), STEP_TIMEOUT_S)
        assert line.startswith(b"PORT "), line
        yield int(line.split()[1]), psutil.Process(proc.pid)
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


class RssSampler:
    def __init__(self, process: psutil.Process) -> None:
        self.process = process
        self.peak = 0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            self.peak = max(self.peak, self.process.memory_info().rss)
            await asyncio.sleep(0.01)

    def __enter__(self) -> RssSampler:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        self.peak = max(self.peak, self.process.memory_info().rss)


async def test_100mb_upload_and_download_keep_the_gateway_small() -> None:
    up = Upstream()
    server = await asyncio.start_server(up.serve, "127.0.0.1", 0)
    host = f"big.{DOMAIN}"
    try:
        async with gateway_process(server.sockets[0].getsockname()[1]) as (port, gw):
            # Warm up (imports, first connection), then take the baseline.
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(build_request("GET", "/warm", project="big"))
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), STEP_TIMEOUT_S)
            assert head.startswith(b"HTTP/1.1 200") and await reader.readexactly(4) == b"warm"
            writer.close()
            baseline = gw.memory_info().rss

            with RssSampler(gw) as rss:
                # Upload: the upstream does not read for PAUSE_S; the client keeps sending.
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(f"POST /upload HTTP/1.1\r\nHost: {host}\r\nContent-Length: {SIZE}\r\n\r\n".encode())
                digest = hashlib.sha256()
                for i in range(SIZE // CHUNK):
                    data = _chunk(i)
                    digest.update(data)
                    writer.write(data)
                    await writer.drain()
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 60)
                assert head.startswith(b"HTTP/1.1 200"), head
                assert await asyncio.wait_for(reader.readexactly(2), STEP_TIMEOUT_S) == b"ok"
                assert up.upload_size == SIZE
                assert up.upload_hash == digest.hexdigest()
                writer.close()

                # Download: the client does not read for PAUSE_S after asking.
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(f"GET /download HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
                await writer.drain()
                await asyncio.sleep(PAUSE_S)
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), STEP_TIMEOUT_S)
                assert b"Content-Length: %d" % SIZE in head
                received = 0
                digest = hashlib.sha256()
                async with asyncio.timeout(60):
                    while received < SIZE:
                        data = await reader.read(1024 * 1024)
                        assert data, f"connection closed after {received} bytes"
                        digest.update(data)
                        received += len(data)
                assert received == SIZE
                assert digest.hexdigest() == hashlib.sha256(
                    b"".join(_chunk(i) for i in range(SIZE // CHUNK))).hexdigest()
                writer.close()
            growth = rss.peak - baseline
            print(f"gateway RSS growth: {growth / 2**20:.1f} MiB")
            assert growth < MAX_GROWTH, f"gateway RSS grew by {growth / 2**20:.1f} MiB moving 2 x 100 MiB"
    finally:
        server.close()
