"""Routing: Host / route header → project name; malformed → 400, not ours → 404."""

from __future__ import annotations

import pytest

from gateway.routing import RouteError, Router, is_project_name

D = "env.example.com"


@pytest.fixture
def router() -> Router:
    return Router(D)


@pytest.mark.parametrize(
    "host",
    [
        "hello.env.example.com",
        "HELLO.ENV.EXAMPLE.COM",
        "Hello.Env.Example.Com",
        "hello.env.example.com:8080",
        "hello.env.example.com:0",
        "hello.env.example.com:65535",
        "hello.env.example.com.",
        "hello.env.example.com.:443",
        "  hello.env.example.com  ",
    ],
)
def test_routes_to_project(router: Router, host: str) -> None:
    assert router.route(host) == "hello"


@pytest.mark.parametrize(
    "name",
    ["a", "a1", "my-app", "x" * 63, "a-b-c", "z9"],
)
def test_every_valid_project_name_routes(router: Router, name: str) -> None:
    assert router.route(f"{name}.{D}") == name


@pytest.mark.parametrize(
    ("host", "needle"),
    [
        (None, "missing Host"),
        ("", "missing Host"),
        ("   ", "missing Host"),
        ("hel lo.env.example.com", "malformed"),
        ("héllo.env.example.com", "malformed"),
        ("hello.env.example.com:", "malformed"),
        ("hello.env.example.com:99999", "port out of range"),
        ("hello.env.example.com:123456", "malformed"),
        ("hello.env.example.com:80:80", "malformed"),
        ("hello.env.example.com:http", "malformed"),
        ("user@hello.env.example.com", "malformed"),
        ("hello/x.env.example.com", "malformed"),
        ("hel\rlo.env.example.com", "malformed"),
        ("[::1", "malformed"),
        ("[zz::1]:80", "malformed"),
        (".env.example.com", "empty label"),
        ("hello..env.example.com", "empty label"),
        ("hello.env.example.com..", "empty label"),
        ("..", "empty label"),
    ],
)
def test_malformed_host_is_400(router: Router, host: str | None, needle: str) -> None:
    with pytest.raises(RouteError) as err:
        router.route(host)
    assert err.value.status == 400
    assert needle in err.value.message


@pytest.mark.parametrize(
    ("host", "needle"),
    [
        ("env.example.com", "not under"),  # the domain itself
        ("example.com", "not under"),
        ("hello.other.com", "not under"),
        ("helloenv.example.com", "not under"),  # suffix must start at a label boundary
        ("hello.env.example.com.evil.com", "not under"),
        ("a.b.env.example.com", "exactly one label"),
        ("www.hello.env.example.com:8080", "exactly one label"),
        ("127.0.0.1", "not under"),
        ("127.0.0.1:8080", "not under"),
        ("[::1]", "IP address"),
        ("[::1]:8080", "IP address"),
        ("[2001:db8::1]:443", "IP address"),
        ("1abc.env.example.com", "not a valid project name"),
        ("-abc.env.example.com", "not a valid project name"),
        ("abc-.env.example.com", "not a valid project name"),
        ("a_b.env.example.com", "not a valid project name"),
        ("x" * 64 + ".env.example.com", "not a valid project name"),
    ],
)
def test_outside_the_domain_is_404(router: Router, host: str, needle: str) -> None:
    with pytest.raises(RouteError) as err:
        router.route(host)
    assert err.value.status == 404
    assert needle in err.value.message


def test_long_malformed_host_is_truncated_in_the_message(router: Router) -> None:
    with pytest.raises(RouteError) as err:
        router.route("bad host " + "x" * 5000)
    assert err.value.status == 400
    assert len(err.value.message) < 200


def test_domain_is_normalised() -> None:
    r = Router(" Env.Example.COM. ")
    assert r.domain == D
    assert r.route("hello.env.example.com") == "hello"


def test_single_label_domain() -> None:
    r = Router("localhost")
    assert r.route("hello.localhost:8080") == "hello"
    with pytest.raises(RouteError) as err:
        r.route("localhost:8080")
    assert err.value.status == 404


@pytest.mark.parametrize(("header", "expected"), [("hello", "hello"), (" Hello ", "hello"), ("a-1", "a-1")])
def test_route_header_wins(router: Router, header: str, expected: str) -> None:
    assert router.route("other.env.example.com", header) == expected
    assert router.route(None, header) == expected
    assert router.route("not a host!", header) == expected


@pytest.mark.parametrize("header", ["", "  ", "1abc", "a.b", "hello.env.example.com", "a b", "x" * 64])
def test_invalid_route_header_is_400(router: Router, header: str) -> None:
    with pytest.raises(RouteError) as err:
        router.route("hello.env.example.com", header)
    assert err.value.status == 400
    assert "route header" in err.value.message


def test_results_and_errors_are_cached(router: Router) -> None:
    assert router.route("hello.env.example.com") == "hello"
    assert router.route("hello.env.example.com") == "hello"
    for _ in range(2):
        with pytest.raises(RouteError):
            router.route("a.b.env.example.com")
    info = router.project_for_host.cache_info()
    assert info.hits == 2
    assert info.misses == 2


def test_cache_is_bounded() -> None:
    r = Router(D, cache_size=8)
    for i in range(100):
        assert r.route(f"p{i}.{D}") == f"p{i}"
    assert r.project_for_host.cache_info().currsize == 8


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("a", True), ("abc", True), ("a-b", True), ("a1", True), ("x" * 63, True),
        ("", False), ("1a", False), ("-a", False), ("a-", False), ("A", False), ("a_b", False),
        ("a.b", False), ("x" * 64, False), ("é", False), ("a b", False),
    ],
)
def test_is_project_name(name: str, ok: bool) -> None:
    assert is_project_name(name) is ok
