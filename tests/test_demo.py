"""The demo projects `make run` serves, run as the real processes the local backend starts."""

from __future__ import annotations

import asyncio
import os
import socket
import sys

WAIT_S = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def test_chat_event_stream_ends_quietly_when_the_client_disconnects() -> None:
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.demo.chat", env={**os.environ, "PORT": str(port)},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    try:
        async with asyncio.timeout(WAIT_S):
            assert b"listening" in await proc.stdout.readline()
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /events?interval=0.05 HTTP/1.1\r\nHost: chat\r\n\r\n")
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200") and b"text/event-stream" in head
            assert b"data: tick 1" in await reader.readuntil(b"\n\n")
            writer.transport.abort()  # the browser tab closes
            line = await proc.stdout.readline()
        assert b"event stream closed by the client" in line
    finally:
        proc.terminate()
        _, stderr = await asyncio.wait_for(proc.communicate(), WAIT_S)
    assert b"Traceback" not in stderr, stderr.decode()
