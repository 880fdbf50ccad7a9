"""Regression tests for the framing and identity holes of issue 13, through a real gateway, raw
clients and raw upstreams: one party's bytes must never become another party's request or response.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from gateway import logs
from tests.support import (
    DOMAIN,
    RecordingUpstream,
    SeenRequest,
    TableBackend,
    build_request,
    reply_ok,
    running_gateway,
)

HOST = f"app.{DOMAIN}"
SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: " + HOST.encode() + b"\r\n\r\n"


def backend(up: RecordingUpstream) -> TableBackend:
    return TableBackend({"app": up}, running=("app",))


# --- 1. Connection never removes framing or routing fields -----------------------------------------


@pytest.mark.parametrize("connection", ["content-length", "Keep-Alive, Content-Length", "x-a ,CONTENT-LENGTH, x-b"])
async def test_connection_listing_content_length_cannot_smuggle_a_request_to_the_next_client(connection: str) -> None:
    up = RecordingUpstream()
    async with running_gateway(backend(up)) as gw:
        async with gw.client() as attacker:
            r = await attacker.request("POST", "/a", headers={"Connection": connection}, body=SMUGGLED)
            assert r.status == 200
        # Another user's request on the (pooled) upstream connection the attacker's went over.
        async with gw.client() as victim:
            r = await victim.request("GET", "/victim", headers={"Cookie": "session=victim"})
            assert r.status == 200
            assert r.body == b"GET /victim"
    targets = [s.target for s in up.seen]
    assert targets == [b"/a", b"/victim"]
    assert up.seen[0].one("Content-Length") == str(len(SMUGGLED)).encode()
    assert up.seen[0].body == SMUGGLED
    assert up.seen[1].one("Cookie") == b"session=victim"


async def test_connection_listing_host_keeps_the_host() -> None:
    up = RecordingUpstream()
    async with running_gateway(backend(up)) as gw, gw.client() as c:
        r = await c.request("GET", "/h", headers={"Connection": "host, x-hop", "X-Hop": "1"})
        assert r.status == 200
    assert up.seen[0].one("Host") == HOST.encode()
    assert up.seen[0].one("X-Hop") is None


async def test_an_upstream_connection_listing_content_length_still_frames_its_response() -> None:
    async def responder(seen: SeenRequest, w: asyncio.StreamWriter) -> None:
        body = seen.target
        w.write(b"HTTP/1.1 200 OK\r\nConnection: Content-Length, X-A\r\nX-A: 1\r\nContent-Length: %d\r\n\r\n%s"
                % (len(body), body))

    up = RecordingUpstream(responder)
    async with running_gateway(backend(up)) as gw, gw.client() as c:
        first = await c.request("GET", "/one")
        second = await c.request("GET", "/two")  # the client connection stays usable and in step
    assert (first.status, first.body, first.header("Content-Length")) == (200, b"/one", "4")
    assert first.header("X-A") is None
    assert (second.status, second.body) == (200, b"/two")


# --- 2. Only `chunked` is relayed as chunked ------------------------------------------------------

INJECTED = b"HTTP/1.1 200 OK\r\nSet-Cookie: stolen=1\r\nContent-Length: 6\r\n\r\nstolen"


@pytest.mark.parametrize("coding", ["gzip", "identity", "gzip, chunked", "chunked, gzip", "Chunked, Chunked"])
async def test_an_upstream_transfer_coding_other_than_chunked_never_injects_a_response(coding: str) -> None:
    async def responder(seen: SeenRequest, w: asyncio.StreamWriter) -> None:
        if seen.target == b"/evil":
            # Bytes that look like chunks, then a complete second response.
            w.write(f"HTTP/1.1 200 OK\r\nTransfer-Encoding: {coding}\r\n\r\n".encode()
                    + b"5\r\nhello\r\n0\r\n\r\n" + INJECTED)
        else:
            await reply_ok(seen, w)

    up = RecordingUpstream(responder)
    async with running_gateway(backend(up)) as gw:
        async with gw.client() as c:
            evil = await c.request("GET", "/evil")
            nxt = await c.request("GET", "/next")
        async with gw.client() as other:
            third = await other.request("GET", "/third")
    assert evil.status == 502
    assert b"stolen" not in evil.body and evil.header("Set-Cookie") is None
    for r, body in ((nxt, b"GET /next"), (third, b"GET /third")):
        assert (r.status, r.body, r.header("Set-Cookie")) == (200, body, None)


# --- 3. An Upgrade request with a body ------------------------------------------------------------


async def test_an_upgrade_request_with_a_body_is_refused_not_hung() -> None:
    up = RecordingUpstream()
    async with running_gateway(backend(up)) as gw, gw.client() as c:
        await c.send(build_request("GET", "/ws", headers={"Connection": "Upgrade", "Upgrade": "websocket"},
                                   body=b"hello"))
        r = await c.response()
        assert r.status == 400
        assert "Upgrade" in r.text
        assert await c.read_until_closed() == b""
    assert up.seen == []


# --- 4. A stalled request body ----------------------------------------------------------------------


async def test_a_stalled_body_gets_408_and_stops_counting_as_activity() -> None:
    up = RecordingUpstream()
    async with running_gateway(backend(up), client_body_timeout_s=1.0) as gw, gw.client() as c:
        await c.send(b"POST /upload HTTP/1.1\r\nHost: " + HOST.encode() + b"\r\nContent-Length: 100\r\n\r\nabc")
        p = gw.lifecycle.projects["app"]
        r = await c.response()
        assert r.status == 408
        assert "body" in r.text
        assert await c.read_until_closed() == b""
        assert p.in_flight == 0  # the project may sleep again


async def test_a_body_that_keeps_coming_is_not_timed_out() -> None:
    up = RecordingUpstream()
    # Timeouts are checked once a second, so the gaps stay 2 s under the timeout; the whole body
    # takes longer than it. (The sleeps are the slow client being simulated.)
    async with running_gateway(backend(up), client_body_timeout_s=3.0) as gw, gw.client() as c:
        await c.send(b"POST /slow HTTP/1.1\r\nHost: " + HOST.encode() + b"\r\nContent-Length: 8\r\n\r\n")
        for piece in (b"ab", b"cd", b"ef", b"gh"):
            await asyncio.sleep(1.0)
            await c.send(piece)
        r = await c.response()
    assert r.status == 200
    assert up.seen[0].body == b"abcdefgh"


# --- 5. Absolute-form targets ---------------------------------------------------------------------


async def test_an_absolute_form_target_naming_another_project_is_refused() -> None:
    up = RecordingUpstream()
    async with running_gateway(TableBackend({"app": up, "b": RecordingUpstream()}, running=("app", "b"))) as gw, \
            gw.client() as c:
        await c.send(f"GET http://b.{DOMAIN}/x HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
        r = await c.response()
        assert r.status == 400
        assert "Host" in r.text
    other = gw.backend.upstreams["b"]
    assert isinstance(other, RecordingUpstream)
    assert up.seen == [] and other.seen == []


@pytest.mark.parametrize(("target", "forwarded"), [
    (f"http://{HOST}/x?y=1", b"/x?y=1"),
    (f"HTTP://{HOST.upper()}/p", b"/p"),
    (f"https://{HOST}?q", b"/?q"),
    (f"http://{HOST}", b"/"),
])
async def test_an_absolute_form_target_is_forwarded_in_origin_form(target: str, forwarded: bytes) -> None:
    up = RecordingUpstream()
    async with running_gateway(backend(up)) as gw, gw.client() as c:
        await c.send(f"GET {target} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
        r = await c.response()
        assert r.status == 200
    assert up.seen[0].target == forwarded


@pytest.mark.parametrize("target", [f"http://user@{HOST}/x", f"ftp://{HOST}/x", HOST + ":80"])
async def test_other_target_forms_are_refused(target: str) -> None:
    up = RecordingUpstream()
    async with running_gateway(backend(up)) as gw, gw.client() as c:
        await c.send(f"GET {target} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
        r = await c.response()
        assert r.status == 400
    assert up.seen == []


# --- 6. Identity fields and request ids -------------------------------------------------------------

IDENTITY = {"X-Forwarded-For": "6.6.6.6", "Forwarded": "for=6.6.6.6;proto=https", "X-Real-IP": "6.6.6.6",
            "X-Forwarded-Proto": "https", "X-Forwarded-Host": "evil.example"}


@pytest.mark.parametrize(("settings", "trusted"), [
    ({}, False),
    ({"trusted_proxies": ("10.0.0.0/8",)}, False),
    ({"trusted_proxies": ("127.0.0.0/8",)}, True),
    ({"trusted_proxies": ("::1", "127.0.0.1/32")}, True),
    ({"trust_forwarded": True}, True),
])
async def test_identity_fields_are_replaced_unless_the_peer_is_trusted(settings: dict[str, object],
                                                                      trusted: bool) -> None:
    up = RecordingUpstream()
    async with running_gateway(backend(up), **settings) as gw, gw.client() as c:
        assert (await c.request("GET", "/", headers=IDENTITY)).status == 200
    seen = up.seen[0]
    own_forwarded = f'for=127.0.0.1;host="{HOST}";proto=http'.encode()
    if trusted:
        assert seen.one("X-Forwarded-For") == b"6.6.6.6, 127.0.0.1"
        assert seen.one("Forwarded") == b"for=6.6.6.6;proto=https, " + own_forwarded
        assert seen.one("X-Real-IP") == b"6.6.6.6"
        assert (seen.one("X-Forwarded-Proto"), seen.one("X-Forwarded-Host")) == (b"https", b"evil.example")
    else:
        assert seen.one("X-Forwarded-For") == b"127.0.0.1"
        assert seen.one("Forwarded") == own_forwarded
        assert seen.one("X-Real-IP") == b"127.0.0.1"
        assert (seen.one("X-Forwarded-Proto"), seen.one("X-Forwarded-Host")) == (b"http", HOST.encode())


@pytest.mark.parametrize(("incoming", "kept"), [
    (["good-id.1"], True),
    (["bad id <script>"], False),
    (["x" * 200], False),
    (["good-first", "second"], True),
])
async def test_the_request_id_is_the_same_upstream_and_in_the_logs(
    incoming: list[str], kept: bool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=logs.LOGGER_NAME)
    up = RecordingUpstream()
    raw = b"GET /r HTTP/1.1\r\nHost: " + HOST.encode() + b"\r\n" + b"".join(
        b"X-Request-Id: " + v.encode() + b"\r\n" for v in incoming) + b"\r\n"
    async with running_gateway(backend(up), access_log=True) as gw, gw.client() as c:
        await c.send(raw)
        assert (await c.response()).status == 200
    forwarded = up.seen[0].all("X-Request-Id")
    assert len(forwarded) == 1
    access = [r for r in caplog.records if getattr(r, "event", None) == "access"]
    assert getattr(access[0], "request_id", None) == forwarded[0].decode()
    assert (forwarded[0] == incoming[0].encode()) is kept


# --- found by the differential fuzzer -------------------------------------------------------------


async def test_a_body_error_in_the_first_read_is_an_invalid_response_not_junk_after_it() -> None:
    async def responder(seen: SeenRequest, w: asyncio.StreamWriter) -> None:
        if seen.target == b"/evil":
            # One write: head, chunks, a trailer llhttp refuses, then a complete second response.
            w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n"
                    b"Content-Length: 99\r\n\r\n" + INJECTED)
        else:
            await reply_ok(seen, w)

    up = RecordingUpstream(responder)
    async with running_gateway(backend(up)) as gw, gw.client() as c:
        evil = await c.request("GET", "/evil")
        nxt = await c.request("GET", "/next")
    assert evil.status == 502 and b"stolen" not in evil.body
    assert (nxt.status, nxt.body, nxt.header("Set-Cookie")) == (200, b"GET /next", None)


@pytest.mark.parametrize("malformed", [b"get /r1 HTTP/1.1\r\n\r\n", b"GET /r1 HTTP/1.1\r\nHost: " + HOST.encode()
                                       + b"\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"])
async def test_the_answer_after_a_pipelined_head_frames_as_a_head_answer(malformed: bytes) -> None:
    up = RecordingUpstream()
    async with running_gateway(backend(up)) as gw, gw.client() as c:
        await c.send(b"HEAD /r0 HTTP/1.1\r\nHost: " + HOST.encode() + b"\r\n\r\n" + malformed)
        raw = await c.read_until_closed()
    # One answer, a head and nothing after it: no body bytes after a HEAD's answer.
    assert raw.startswith(b"HTTP/1.1 400 ") and raw.endswith(b"\r\n\r\n") and raw.count(b"HTTP/1.1") == 1, raw


async def test_a_refused_head_gets_an_empty_answer() -> None:
    up = RecordingUpstream()
    async with running_gateway(backend(up)) as gw, gw.client() as c:
        await c.send(b"HEAD /r0 HTTP/1.1\r\nHost: " + HOST.encode() + b"\r\nTransfer-Encoding: gzip, chunked\r\n\r\n")
        raw = await c.read_until_closed()
    assert raw.startswith(b"HTTP/1.1 501 ") and b"\r\nContent-Length: 0\r\n" in raw and raw.endswith(b"\r\n\r\n")
    assert up.seen == []
