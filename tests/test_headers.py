"""Unit tests of the pure header rules (gateway.headers)."""

from __future__ import annotations

import httptools
import pytest

from gateway import headers as h


def parse_head(head: bytes) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """Split a message head into its start line and fields; asserts it ends with a blank line."""
    assert head.endswith(b"\r\n\r\n"), head
    lines = head[:-4].split(b"\r\n")
    fields = []
    for line in lines[1:]:
        name, _, value = line.partition(b": ")
        fields.append((name, value))
    return lines[0], fields


def values(fields: list[tuple[bytes, bytes]], name: bytes) -> list[bytes]:
    return [v for n, v in fields if n.lower() == name.lower()]


def req(headers: list[tuple[bytes, bytes]], **kw: object) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    kw.setdefault("client_ip", b"10.0.0.7")
    return parse_head(h.request_head(b"GET", b"/x?y=1", headers, **kw))  # type: ignore[arg-type]


# --- hop-by-hop ---------------------------------------------------------------------------------


def test_hop_by_hop_set_is_rfc9110_plus_legacy() -> None:
    assert {
        b"connection", b"keep-alive", b"proxy-connection", b"proxy-authenticate", b"proxy-authorization",
        b"te", b"trailer", b"transfer-encoding", b"upgrade",
    } == h.HOP_BY_HOP


def test_connection_tokens_are_lowercased_split_and_merged_across_lines() -> None:
    tokens = h.connection_tokens(
        [(b"Connection", b"Keep-Alive, X-Secret ,, "), (b"X-Other", b"a"), (b"CONNECTION", b"close,x-two")]
    )
    assert tokens == {b"keep-alive", b"x-secret", b"close", b"x-two"}
    assert h.connection_tokens([(b"Host", b"a")]) == frozenset()


@pytest.mark.parametrize("name", sorted(h.HOP_BY_HOP))
def test_each_hop_by_hop_field_is_stripped_in_any_case(name: bytes) -> None:
    fields = [(b"Host", b"a.example"), (name.upper(), b"v"), (name.title(), b"w"), (b"Accept", b"*/*")]
    assert h.strip_hop_by_hop(fields) == [(b"Host", b"a.example"), (b"Accept", b"*/*")]


def test_fields_named_in_connection_are_stripped_and_others_kept_in_order() -> None:
    fields = [
        (b"Connection", b"X-Secret, keep-alive"),
        (b"X-A", b"1"),
        (b"x-secret", b"s"),
        (b"X-B", b"2"),
        (b"X-A", b"3"),
    ]
    assert h.strip_hop_by_hop(fields) == [(b"X-A", b"1"), (b"X-B", b"2"), (b"X-A", b"3")]


# --- requests -----------------------------------------------------------------------------------


def test_request_line_keeps_method_and_raw_target_byte_for_byte() -> None:
    head = h.request_head(b"PATCH", b"/a%2Fb/../c?x=1&x=2", [(b"Host", b"p.d")], client_ip=b"1.2.3.4")
    assert head.startswith(b"PATCH /a%2Fb/../c?x=1&x=2 HTTP/1.1\r\n")


def test_request_strips_hop_by_hop_and_connection_listed_fields() -> None:
    _, fields = req(
        [
            (b"Host", b"p.d"),
            (b"Connection", b"keep-alive, X-Hop"),
            (b"Keep-Alive", b"timeout=5"),
            (b"X-Hop", b"secret"),
            (b"TE", b"trailers"),
            (b"Proxy-Authorization", b"Basic abc"),
            (b"Transfer-Encoding", b"chunked"),
            (b"X-Kept", b"yes"),
        ]
    )
    names = {n.lower() for n, _ in fields}
    assert not names & (h.HOP_BY_HOP | {b"x-hop"})
    assert values(fields, b"X-Kept") == [b"yes"]
    assert values(fields, b"Host") == [b"p.d"]


def test_request_end_to_end_fields_keep_case_order_and_duplicates() -> None:
    _, fields = req([(b"Host", b"p.d"), (b"x-CaSe", b"1"), (b"Cookie", b"a=1"), (b"Cookie", b"b=2")])
    assert fields[:4] == [(b"Host", b"p.d"), (b"x-CaSe", b"1"), (b"Cookie", b"a=1"), (b"Cookie", b"b=2")]


def test_x_forwarded_for_is_replaced_unless_trusted_and_appended_across_lines_when_trusted() -> None:
    _, fields = req([(b"Host", b"p.d")])
    assert values(fields, b"X-Forwarded-For") == [b"10.0.0.7"]
    incoming = [(b"Host", b"p.d"), (b"X-Forwarded-For", b"1.1.1.1, 2.2.2.2"), (b"x-forwarded-for", b"3.3.3.3")]
    _, fields = req(incoming)
    assert values(fields, b"X-Forwarded-For") == [b"10.0.0.7"]
    _, fields = req(incoming, trust_forwarded=True)
    assert values(fields, b"X-Forwarded-For") == [b"1.1.1.1, 2.2.2.2, 3.3.3.3, 10.0.0.7"]


def test_x_forwarded_proto_and_host_are_set_from_the_listener_unless_trusted() -> None:
    incoming = [(b"Host", b"P.D:8080"), (b"X-Forwarded-Proto", b"https"), (b"X-Forwarded-Host", b"evil.example")]
    _, fields = req(incoming, scheme=b"http")
    assert values(fields, b"X-Forwarded-Proto") == [b"http"]
    assert values(fields, b"X-Forwarded-Host") == [b"P.D:8080"]
    _, fields = req(incoming, scheme=b"http", trust_forwarded=True)
    assert values(fields, b"X-Forwarded-Proto") == [b"https"]
    assert values(fields, b"X-Forwarded-Host") == [b"evil.example"]
    _, fields = req([(b"Host", b"p.d")], trust_forwarded=True, scheme=b"https")
    assert values(fields, b"X-Forwarded-Proto") == [b"https"]
    assert values(fields, b"X-Forwarded-Host") == [b"p.d"]


def test_forwarded_and_x_real_ip_follow_the_same_rule_as_x_forwarded() -> None:
    incoming = [(b"Host", b"p.d"), (b"Forwarded", b"for=6.6.6.6;proto=https"), (b"X-Real-IP", b"6.6.6.6"),
                (b"forwarded", b"for=7.7.7.7")]
    _, fields = req(incoming)
    assert values(fields, b"Forwarded") == [b'for=10.0.0.7;host="p.d";proto=http']
    assert values(fields, b"X-Real-IP") == [b"10.0.0.7"]
    _, fields = req(incoming, trust_forwarded=True)
    assert values(fields, b"Forwarded") == [b'for=6.6.6.6;proto=https, for=7.7.7.7, for=10.0.0.7;host="p.d";proto=http']
    assert values(fields, b"X-Real-IP") == [b"6.6.6.6"]
    _, fields = req([(b"Host", b"p.d")], trust_forwarded=True)
    assert values(fields, b"X-Real-IP") == [b"10.0.0.7"]


def test_forwarded_element_quotes_ipv6_and_escapes_the_host() -> None:
    assert h.forwarded_element(b"::1", b'a"b\\c', b"http") == b'for="[::1]";host="a\\"b\\\\c";proto=http'
    assert h.forwarded_element(b"1.2.3.4", None, b"https") == b"for=1.2.3.4;proto=https"


@pytest.mark.parametrize(("incoming", "kept"), [
    ([b"abc-1"], b"abc-1"),
    ([b"bad id with spaces"], None),
    ([b"x" * 129], None),
    ([b"\xff\xfe"], None),
    ([b"good", b"second"], b"good"),
    ([b"bad id", b"good"], None),  # the first one decides; a later one never sneaks in
])
def test_a_client_request_id_is_kept_only_when_the_first_is_a_safe_token(
    incoming: list[bytes], kept: bytes | None
) -> None:
    _, fields = req([(b"Host", b"p.d"), *((b"X-Request-Id", v) for v in incoming)])
    assert values(fields, b"X-Request-Id") == ([kept] if kept is not None else [])
    assert h.safe_request_id(incoming[0]) is (kept is not None)


def test_without_host_no_forwarded_host_is_invented() -> None:
    _, fields = req([])
    assert values(fields, b"X-Forwarded-Host") == []


def test_via_is_appended_after_existing_via() -> None:
    _, fields = req([(b"Host", b"p.d"), (b"Via", b"1.0 fred")])
    assert values(fields, b"Via") == [b"1.0 fred", b"1.1 wakegate"]


def test_request_framing_and_upgrade_and_extra_fields() -> None:
    _, fields = req([(b"Host", b"p.d"), (b"Content-Length", b"12")])
    assert values(fields, b"Content-Length") == [b"12"]
    assert values(fields, b"Transfer-Encoding") == []
    _, fields = req([(b"Host", b"p.d"), (b"Transfer-Encoding", b"chunked")], chunked=True)
    assert values(fields, b"Transfer-Encoding") == [b"chunked"]
    _, fields = req(
        [(b"Host", b"p.d"), (b"Connection", b"Upgrade"), (b"Upgrade", b"websocket")],
        upgrade=b"websocket", extra=[(b"X-Request-Id", b"abc-1")],
    )
    assert values(fields, b"Connection") == [b"upgrade"]
    assert values(fields, b"Upgrade") == [b"websocket"]
    assert values(fields, b"X-Request-Id") == [b"abc-1"]


def test_request_head_parses_as_valid_http() -> None:
    head = h.request_head(
        b"POST", b"/p", [(b"Host", b"p.d"), (b"Transfer-Encoding", b"chunked")], client_ip=b"::1", chunked=True
    )
    seen: list[tuple[bytes, bytes]] = []

    class Sink:
        def on_header(self, name: bytes, value: bytes) -> None:
            seen.append((name, value))

    parser = httptools.HttpRequestParser(Sink())
    parser.feed_data(head + b"0\r\n\r\n")
    assert (b"Transfer-Encoding", b"chunked") in seen
    assert (b"X-Forwarded-For", b"::1") in seen


@pytest.mark.parametrize("token", sorted(h.NEVER_LISTED))
def test_connection_never_removes_framing_routing_or_identity_fields(token: bytes) -> None:
    # RFC 9110 7.6.1 is about hop-by-hop fields: obeying "Connection: content-length" would forward
    # a body without its length (the next request on a pooled connection, for the next hop).
    assert h.connection_tokens([(b"Connection", b"keep-alive, " + token.upper() + b", X-Hop")]) == {
        b"keep-alive", b"x-hop"}
    assert h.listed_tokens(b"close," + token + b" ,x-hop") == {b"x-hop"}
    _, fields = req([(b"Host", b"p.d"), (b"Connection", token + b", x-hop"), (b"Content-Length", b"3"),
                     (b"X-Hop", b"1")])
    assert values(fields, b"Host") == [b"p.d"]
    assert values(fields, b"Content-Length") == [b"3"]
    assert values(fields, b"X-Hop") == []


def test_kept_parts_keep_framing_and_route_fields_whatever_connection_lists() -> None:
    table = h.request_fields_table("x-project")
    headers = [(b"Host", b"p.d"), (b"Content-Length", b"3"), (b"X-Project", b"p"), (b"X-Hop", b"1"),
               (b"User-Agent", b"u"), (b"X-Request-Id", b"ok-1"), (b"X-Request-Id", b"dup")]
    tokens = h.listed_tokens(b"host, content-length, x-project, x-hop, user-agent")
    assert tokens == {b"x-project", b"x-hop", b"user-agent"}
    kept = b"".join(h.kept_parts(headers, table, tokens))
    assert kept == b"Host: p.d\r\nContent-Length: 3\r\nX-Project: p\r\nX-Request-Id: ok-1\r\n"


def test_connection_false_skips_token_scan() -> None:
    # The caller promises there is no Connection header; listed tokens are then not looked for.
    _, fields = req([(b"Host", b"p.d"), (b"X-A", b"1")], connection=False)
    assert values(fields, b"X-A") == [b"1"]


# --- responses ----------------------------------------------------------------------------------


def test_response_strips_hop_by_hop_and_listed_fields_and_adds_via() -> None:
    line, fields = parse_head(
        h.response_head(
            200, b"OK",
            [
                (b"Content-Type", b"text/plain"),
                (b"Connection", b"keep-alive, X-Internal"),
                (b"X-Internal", b"1"),
                (b"Keep-Alive", b"timeout=5"),
                (b"Proxy-Authenticate", b"Basic"),
                (b"Trailer", b"X-T"),
                (b"Content-Length", b"5"),
                (b"Set-Cookie", b"a=1"),
                (b"Set-Cookie", b"b=2"),
            ],
            framing=h.FRAME_LENGTH,
        )
    )
    assert line == b"HTTP/1.1 200 OK"
    assert fields == [
        (b"Content-Type", b"text/plain"),
        (b"Content-Length", b"5"),
        (b"Set-Cookie", b"a=1"),
        (b"Set-Cookie", b"b=2"),
        (b"Via", b"1.1 wakegate"),
    ]


@pytest.mark.parametrize("listed", [b"content-length", b"Content-Length, X-A", b"x-a, CONTENT-LENGTH"])
def test_a_response_keeps_its_content_length_whatever_connection_lists(listed: bytes) -> None:
    block = b"\r\nConnection: " + listed + b"\r\nContent-Length: 3\r\nX-A: 1\r\n"
    head, framing, _, length = h.relay_raw_response_head(200, block, False, True, False)
    _, fields = parse_head(head)
    assert framing == h.FRAME_LENGTH and length == 3
    assert values(fields, b"Content-Length") == [b"3"]
    assert values(fields, b"X-A") == ([] if b"x-a" in listed.lower() else [b"1"])


@pytest.mark.parametrize("coding", [b"gzip", b"identity", b"gzip, chunked", b"chunked, gzip", b"chunked, chunked",
                                    b"deflate,chunked", b"x"])
def test_a_response_transfer_coding_other_than_chunked_alone_is_refused(coding: bytes) -> None:
    block = b"\r\nTransfer-Encoding: " + coding + b"\r\nX-A: 1\r\n"
    with pytest.raises(h.FramingError, match="transfer coding"):
        h.relay_raw_response_head(200, block, False, True, False)
    with pytest.raises(h.FramingError):
        h.relay_response_head(200, h.parse_fields(block), no_body=False, http11=True, close=False)
    # Without a body (HEAD, 204, 304) there is nothing to frame: the head passes.
    h.relay_raw_response_head(200, block, True, True, False)


@pytest.mark.parametrize("coding", [b"chunked", b"Chunked", b" CHUNKED "])
def test_a_chunked_response_is_accepted_in_any_case(coding: bytes) -> None:
    assert h.transfer_coding_ok(coding)
    _, framing, chunked, _ = h.relay_raw_response_head(200, b"\r\nTransfer-Encoding: " + coding + b"\r\n",
                                                       False, True, False)
    assert (framing, chunked) == (h.FRAME_CHUNKED, True)


def test_two_transfer_encoding_lines_are_judged_joined() -> None:
    block = b"\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n"
    with pytest.raises(h.FramingError):
        h.relay_raw_response_head(200, block, False, True, False)


def test_response_framing_variants() -> None:
    upstream = [(b"Content-Length", b"5"), (b"Transfer-Encoding", b"chunked")]
    _, fields = parse_head(h.response_head(200, b"OK", upstream, framing=h.FRAME_CHUNKED))
    assert values(fields, b"Transfer-Encoding") == [b"chunked"]
    assert values(fields, b"Content-Length") == []
    _, fields = parse_head(h.response_head(200, b"OK", upstream, framing=h.FRAME_CLOSE, close=True))
    assert values(fields, b"Transfer-Encoding") == []
    assert values(fields, b"Content-Length") == []
    assert values(fields, b"Connection") == [b"close"]
    # HEAD / 304: Content-Length describes the representation and passes through; nothing is added.
    _, fields = parse_head(h.response_head(304, b"Not Modified", upstream, framing=h.FRAME_NONE))
    assert values(fields, b"Content-Length") == [b"5"]
    assert values(fields, b"Transfer-Encoding") == []


def test_response_upgrade_and_extra() -> None:
    line, fields = parse_head(
        h.response_head(
            101, b"Switching Protocols",
            [(b"Upgrade", b"websocket"), (b"Connection", b"Upgrade"), (b"Sec-WebSocket-Protocol", b"chat")],
            framing=h.FRAME_NONE, upgrade=b"websocket", extra=[(b"X-Wakegate-Cold-Start", b"1.250")],
        )
    )
    assert line == b"HTTP/1.1 101 Switching Protocols"
    assert values(fields, b"Upgrade") == [b"websocket"]
    assert values(fields, b"Connection") == [b"upgrade"]
    assert values(fields, b"Sec-WebSocket-Protocol") == [b"chat"]
    assert values(fields, b"X-Wakegate-Cold-Start") == [b"1.250"]


def test_simple_response() -> None:
    raw = h.simple_response(404, b"no project named x\n", extra=[(b"Retry-After", b"3")], close=True)
    head, _, body = raw.partition(b"\r\n\r\n")
    line, fields = parse_head(head + b"\r\n\r\n")
    assert line == b"HTTP/1.1 404 Not Found"
    assert body == b"no project named x\n"
    assert values(fields, b"Content-Length") == [str(len(body)).encode()]
    assert values(fields, b"Retry-After") == [b"3"]
    assert values(fields, b"Connection") == [b"close"]
    head_only = h.simple_response(404, b"abc", head_only=True)
    assert head_only.endswith(b"Content-Length: 3\r\nCache-Control: no-store\r\n\r\n")


# --- the raw response-head fast path equals the general rules ------------------------------------

RESPONSE_FIELD_SETS = [
    [],
    [(b"Content-Length", b"12")],
    [(b"Server", b"nginx"), (b"Content-Length", b"5"), (b"Connection", b"keep-alive")],
    [(b"Connection", b"keep-alive"), (b"Keep-Alive", b"timeout=5"), (b"Content-Type", b"text/plain")],
    [(b"CONNECTION", b"Keep-Alive"), (b"X-A", b"1")],
    [(b"Transfer-Encoding", b"chunked"), (b"Content-Type", b"text/event-stream")],
    [(b"connection", b"close"), (b"content-length", b"0")],
    [(b"Connection", b"keep-alive, X-Internal"), (b"X-Internal", b"secret"), (b"Content-Length", b"3")],
    [(b"Upgrade", b"h2c"), (b"Connection", b"Upgrade"), (b"Content-Length", b"3")],
    [(b"Proxy-Authenticate", b"Basic"), (b"Trailer", b"X-T"), (b"TE", b"trailers")],
    [(b"Set-Cookie", b"a=1"), (b"Set-Cookie", b"b=2"), (b"Connection", b"keep-alive"), (b"Connection", b"close")],
    [(b"X-Connection", b"keep-alive"), (b"X-Keep-Alive", b"1"), (b"Content-Length", b"1")],
    [(b"Connection", b"  keep-alive  "), (b"Content-Length", b"1")],
    [(b"Connection", b"content-length, host"), (b"Content-Length", b"1"), (b"Host", b"h")],
]


@pytest.mark.parametrize("fields", RESPONSE_FIELD_SETS)
@pytest.mark.parametrize(("status", "no_body", "http11", "close"), [
    (200, False, True, False), (200, False, False, False), (204, True, True, False), (200, True, True, True),
    (404, False, True, True),
])
def test_raw_response_head_equals_the_general_rules(
    fields: list[tuple[bytes, bytes]], status: int, no_body: bool, http11: bool, close: bool
) -> None:
    block = b"\r\n" + b"".join(n + b": " + v + b"\r\n" for n, v in fields)
    extra = [(b"X-Wakegate-Cold-Start", b"0.250")] if status == 404 else []
    head, framing, chunked, length = h.relay_raw_response_head(status, block, no_body, http11, close, extra)
    ref_head, ref_framing, ref_chunked = h.relay_response_head(
        status, [(n, v.strip()) for n, v in fields], no_body=no_body, http11=http11, close=close, extra=extra
    )
    assert (framing, chunked) == (ref_framing, ref_chunked)
    # Same fields in the same order (values keep the upstream's whitespace on the fast path).
    assert [(n, v.strip()) for n, v in parse_head(head)[1]] == parse_head(ref_head)[1]
    assert parse_head(head)[0] == parse_head(ref_head)[0]
    cl = [int(v) for n, v in fields if n.lower() == b"content-length"]
    assert length == (cl[0] if cl else None)
