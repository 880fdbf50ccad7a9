"""The memo (gateway.forward.memo) is an optimisation only: a real Listener with its memo on and one
with it off (``Memo(enabled=False)``: no remembered heads, no deferred writes or closes) are driven
over the same request and response sequences, and a real upstream socket and real client sockets
must receive exactly the same bytes from both."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import httptools

from gateway.backends.base import Endpoint
from gateway.forward.client import Exchange, Listener
from gateway.forward.memo import KNOWN_REQUEST_MISSES, Memo
from tests.support import STEP_TIMEOUT_S, build_request

SPLIT_BODY = b"0123456789abcdefghij"
SPLIT_AT = 8


def _head(status: int, *fields: str) -> bytes:
    return f"HTTP/1.1 {status} X\r\n".encode() + b"".join(f"{f}\r\n".encode() for f in fields) + b"\r\n"


PLAIN = _head(200, "X-A: 1", "Content-Length: 5") + b"hello"


class Upstream:
    """A raw upstream: every byte each connection received, and a scripted answer per request
    (by target), written as one piece unless the script splits it."""

    def __init__(self) -> None:
        self.received: list[bytearray] = []
        self.split_go = asyncio.Event()  # the client got the first part of /split's body
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self._tasks: list[asyncio.Task[Any]] = []

    async def start(self) -> Endpoint:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return Endpoint("127.0.0.1", self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for w in self._writers:
            w.transport.abort()
        async with asyncio.timeout(STEP_TIMEOUT_S):
            await asyncio.gather(*self._tasks)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        got = bytearray()
        self.received.append(got)
        self._writers.append(writer)
        task = asyncio.current_task()
        assert task is not None
        self._tasks.append(task)
        sink = _Requests()
        parser = httptools.HttpRequestParser(sink)
        sink.parser = parser
        try:
            while data := await reader.read(65536):
                got += data
                parser.feed_data(data)
                while sink.done:
                    method, target = sink.done.pop(0)
                    if not await self._answer(method, target, writer):
                        return
        except (ConnectionError, httptools.HttpParserError):
            pass
        finally:
            writer.transport.abort()

    async def _answer(self, method: bytes, target: bytes, w: asyncio.StreamWriter) -> bool:
        """Answer one request; False: close the connection."""
        path, _, query = target.partition(b"?")
        if path == b"/split":
            w.write(_head(200, "X-Split: 1", f"Content-Length: {len(SPLIT_BODY)}") + SPLIT_BODY[:SPLIT_AT])
            await w.drain()
            await asyncio.wait_for(self.split_go.wait(), STEP_TIMEOUT_S)
            self.split_go.clear()
            w.write(SPLIT_BODY[SPLIT_AT:])
        elif path == b"/vhead":  # a head seen once
            w.write(_head(200, f"X-Seq: {query.decode()}", "Content-Length: 5") + b"vhead")
        elif path == b"/head":
            w.write(_head(200, "X-H: 1", "Content-Length: 5") + (b"" if method == b"HEAD" else b"hello"))
        elif path == b"/chunked":
            w.write(_head(200, "Transfer-Encoding: chunked") + b"5\r\nhello\r\n3\r\nabc\r\n0\r\n\r\n")
        elif path == b"/204":
            w.write(_head(204, "X-N: 1"))
        elif path == b"/early":
            w.write(_head(103, "Link: </a.css>") + PLAIN)
        elif path == b"/bad":
            w.write(_head(200, "Content-Length: 5", "Content-Length: 6") + b"hello")
        elif path == b"/extra":  # a second response hidden after the body: never relayed
            w.write(PLAIN + _head(200, "Content-Length: 0"))
        elif path == b"/upclose":
            w.write(_head(200, "Connection: close", "Content-Length: 5") + b"bye!!")
            return False
        else:
            w.write(PLAIN)
        await w.drain()
        return True


class _Requests:
    def __init__(self) -> None:
        self.parser: Any = None
        self.target = b""
        self.done: list[tuple[bytes, bytes]] = []

    def on_message_begin(self) -> None:
        self.target = b""

    def on_url(self, url: bytes) -> None:
        self.target += url

    def on_message_complete(self) -> None:
        self.done.append((self.parser.get_method(), self.target))


class Forwarder:
    """The handler: forwards everything to one endpoint; its own request ids (deterministic);
    the cold-start field for /cold; 502 when the upstream fails."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.count = 0
        self.ended = 0

    def handle(self, ex: Exchange) -> None:
        self.count += 1
        if ex.request_id is None:
            ex.id_field = b"X-Request-Id: test-%08x\r\n" % self.count
        if ex.target.startswith(b"/cold"):
            ex.response_extra = ((b"X-Wakegate-Cold-Start", b"0.125"),)
        ex.forward(self.endpoint)

    def upstream_failed(self, ex: Exchange, reason: str, message: str) -> None:
        ex.respond(502, f"upstream failed: {reason}\n".encode())

    def finished(self, ex: Exchange) -> None:
        self.ended += 1


@dataclass
class Client:
    """One client connection: every byte it received; llhttp counts the responses."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    upstream: Upstream
    received: bytearray = field(default_factory=bytearray)
    statuses: list[int] = field(default_factory=list)

    async def send(self, data: bytes, heads: tuple[bool, ...] = (False,)) -> None:
        """Send ``data`` and read until a response to each request in it arrived (``heads``: which
        requests are HEAD)."""
        self.writer.write(data)
        count = 0
        sink = _Responses()
        sink.parser = httptools.HttpResponseParser(sink)
        async with asyncio.timeout(STEP_TIMEOUT_S):
            while count < len(heads):
                chunk = await self.reader.read(65536)
                assert chunk, "the gateway closed the connection early"
                self.received += chunk
                if SPLIT_BODY[:SPLIT_AT] in chunk:
                    self.upstream.split_go.set()
                sink.parser.feed_data(chunk)
                while count < len(heads) and (sink.done or (heads[count] and sink.head_done)):
                    self.statuses.append(sink.done.pop(0) if sink.done else sink.status)
                    if heads[count]:  # llhttp does not know the method: start afresh
                        sink = _Responses()
                        sink.parser = httptools.HttpResponseParser(sink)
                    count += 1

    async def until_closed(self) -> None:
        async with asyncio.timeout(STEP_TIMEOUT_S):
            while chunk := await self.reader.read(65536):
                self.received += chunk


class _Responses:
    def __init__(self) -> None:
        self.parser: Any = None
        self.status = 0
        self.head_done = False
        self.done: list[int] = []

    def on_message_begin(self) -> None:
        self.head_done = False

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.head_done = self.status >= 200

    def on_message_complete(self) -> None:
        if self.status >= 200:
            self.done.append(self.status)


def _get(path: str, **headers: str) -> bytes:
    return build_request("GET", path, headers=headers)


async def _drive(enabled: bool) -> tuple[list[bytes], list[bytes], list[list[int]], Memo]:
    upstream = Upstream()
    endpoint = await upstream.start()
    memo = Memo(enabled=enabled)
    listener = Listener(Forwarder(endpoint), memo=memo)
    await listener.start("127.0.0.1", 0)
    clients: list[Client] = []

    async def client() -> Client:
        reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
        clients.append(Client(reader, writer, upstream))
        return clients[-1]

    try:
        a = await client()
        for _ in range(3):
            await a.send(_get("/same"))  # identical heads: remembered request and response heads
        for _ in range(2):
            await a.send(_get("/cold"))  # the handler's extra field after Via
        for _ in range(2):
            await a.send(_get("/split"))  # a known head whose body comes in two reads
        for _ in range(2):
            await a.send(build_request("HEAD", "/head"), (True,))
            await a.send(_get("/head"))  # the same head, now with a body: a fresh llhttp in step
        for path in ("/chunked", "/chunked", "/204", "/204", "/early", "/early"):
            await a.send(_get(path))
        await a.send(_get("/same") + _get("/same"), (False, False))  # pipelined: never remembered
        for _ in range(2):
            await a.send(build_request("POST", "/same", body=b"x" * 10))
        await a.send(build_request("POST", "/same", headers={"Transfer-Encoding": "chunked"},
                                   body=b"3\r\nabc\r\n0\r\n\r\n"))
        await a.send(_get("/same", **{"X-Forwarded-For": "10.0.0.1", "X-Request-Id": "client-id"}))
        for path in ("/bad", "/same", "/extra", "/extra", "/upclose", "/upclose", "/same"):
            await a.send(_get(path))
        for i in range(3):
            await a.send(_get(f"/vhead?{i}", **{"X-Seq": str(i)}))  # new response heads
        for i in range(KNOWN_REQUEST_MISSES + 2):
            await a.send(_get(f"/same?seq={i}", **{"X-Bench-Seq": str(i)}))  # varied request heads
        for _ in range(2):
            await a.send(_get("/same"))  # this connection stopped looking its reads up
        a.writer.write(_get("/same", Connection="close"))
        await a.until_closed()

        b = await client()  # HTTP/1.0: its connection closes after the response
        b.writer.write(b"GET /same HTTP/1.0\r\nHost: app.example.test\r\n\r\n")
        await b.until_closed()

        c = await client()  # a new connection: remembered heads again, then pieces of a head
        await c.send(_get("/same"))
        await c.send(_get("/cold"))
        raw = _get("/same")
        c.writer.write(raw[:7])
        await c.writer.drain()
        await c.send(raw[7:])
        c.writer.write(_get("/same", Connection="close"))
        await c.until_closed()
    finally:
        for cl in clients:
            cl.writer.transport.abort()
        listener.close()
        await listener.wait_closed()
        await upstream.stop()
    return ([bytes(r) for r in upstream.received], [bytes(cl.received) for cl in clients],
            [cl.statuses for cl in clients], memo)


async def test_the_memo_changes_no_byte_upstream_or_downstream() -> None:
    up_on, down_on, statuses_on, memo_on = await _drive(enabled=True)
    up_off, down_off, statuses_off, memo_off = await _drive(enabled=False)
    # The memo was used (it remembered heads) where it is on, and not at all where it is off.
    assert _get("/same") in memo_on.requests
    assert PLAIN[:-5] in memo_on.responses
    assert memo_on.relayed
    assert not (memo_off.requests or memo_off.responses or memo_off.relayed)
    # What happened is what the script asks for.
    assert statuses_on == statuses_off
    assert statuses_on[0] == [200] * 13 + [204, 204] + [200] * 8 + [502] + [200] * 29
    assert statuses_on[2] == [200] * 3
    # Exactly the same bytes, on every upstream connection and every client connection.
    # A new upstream connection after each one that failed (/bad), sent too much (/extra) or closed.
    assert len(up_on) == len(up_off) == 6
    assert up_on == up_off
    assert down_on == down_off
    assert b"X-Wakegate-Cold-Start: 0.125\r\n" in down_on[0]
    assert b"X-Request-Id: test-00000001\r\n" in up_on[0]
