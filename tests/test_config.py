"""Settings: flags, WAKEGATE_* variables, precedence, and errors that name the flag or variable."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from gateway import config
from gateway.config import OPTIONS, ConfigError, HostPort, Settings, load_settings, parse_host_port

PROJECTS = {"projects_file": "/tmp/projects.yaml"}  # the local backend needs one

# A valid value for every option, and what it parses to. New options must be added here.
GOOD: dict[str, tuple[str, object]] = {
    "--backend": ("kubernetes", "kubernetes"),
    "--projects": ("/srv/p.yaml", Path("/srv/p.yaml")),
    "--domain": ("dev.example.org", "dev.example.org"),
    "--listen": ("127.0.0.1:8081", HostPort("127.0.0.1", 8081)),
    "--admin-listen": ("[::1]:9091", HostPort("::1", 9091)),
    "--idle-timeout": ("12.5", 12.5),
    "--hold-timeout": ("7", 7.0),
    "--max-held-per-project": ("5", 5),
    "--max-held-total": ("50", 50),
    "--reap-interval": ("0.5", 0.5),
    "--route-header": ("X-WakeGate-Project", "x-wakegate-project"),
    "--unknown-cache-size": ("10", 10),
    "--unknown-cache-ttl": ("3", 3.0),
    "--public-url": ("http://{project}.{domain}:8080/", "http://{project}.{domain}:8080/"),
    "--admin-token-file": ("/run/token", Path("/run/token")),
    "--drain-timeout": ("4", 4.0),
    "--log-format": ("text", "text"),
    "--access-log": ("yes", True),
    "--trust-forwarded": ("true", True),
    "--trusted-proxies": ("10.0.0.0/8, 192.0.2.1", ("10.0.0.0/8", "192.0.2.1")),
    "--wake-rate": ("120", 120.0),
    "--wake-rate-per-client": ("6", 6.0),
    "--strategy": ("page", "page"),
    "--ignore-paths": ("/healthz, /metrics,", ("/healthz", "/metrics")),
    "--ignore-user-agents": ("^curl/,Bot$", ("^curl/", "Bot$")),
    "--upstream-connect-timeout": ("2", 2.0),
    "--client-keepalive-timeout": ("0.25", 0.25),
    "--client-header-timeout": ("3", 3.0),
    "--client-body-timeout": ("15", 15.0),
    "--stop-grace": ("1.5", 1.5),
    "--kubeconfig": ("/root/.kube/config", Path("/root/.kube/config")),
    "--context": ("kind-dev", "kind-dev"),
    "--namespace-selector": ("wakegate.dev/project", "wakegate.dev/project"),
    "--gateway-namespace": ("gw", "gw"),
    "--activity-pull-interval": ("9", 9.0),
    "--peer-service": ("wakegate-peers", "wakegate-peers"),
    "--replica-id": ("gw-1", "gw-1"),
    "--leader-lease": ("20", 20.0),
}

# Values every parser must reject (options whose parser accepts any string are absent).
BAD: dict[str, list[str]] = {
    "--backend": ["docker", "", "LOCAL"],
    "--listen": ["8080", "host", "host:99999", "host:-1", "[::1:80", "a:b"],
    "--admin-listen": ["9090", "::1:9090"],
    "--idle-timeout": ["0", "-1", "nan", "inf", "soon", ""],
    "--hold-timeout": ["0", "-5", "x"],
    "--max-held-per-project": ["0", "-1", "1.5", "many"],
    "--max-held-total": ["0", "x"],
    "--reap-interval": ["0", "-0.1"],
    "--route-header": ["bad header", "x:y", ""],
    "--unknown-cache-size": ["0"],
    "--unknown-cache-ttl": ["-1"],
    "--public-url": ["https://example.com/", ""],
    "--drain-timeout": ["0"],
    "--log-format": ["xml", "JSON"],
    "--access-log": ["maybe", "2"],
    "--trust-forwarded": ["sometimes"],
    "--strategy": ["always"],
    "--ignore-user-agents": ["(unclosed", "ok,[bad"],
    "--upstream-connect-timeout": ["0"],
    "--client-keepalive-timeout": ["0", "-1", "nan", "inf", "75 s", "5x", ""],
    "--client-header-timeout": ["0", "-30", "nan", "inf", "half a minute", ""],
    "--stop-grace": ["0"],
    "--activity-pull-interval": ["0"],
    "--leader-lease": ["0", "-2"],
}


def _option(flag: str) -> config.Option:
    return next(o for o in OPTIONS if o.flag == flag)


def test_defaults_are_the_documented_ones() -> None:
    s = load_settings(PROJECTS, environ={})
    assert s.backend == "local"
    assert s.domain == "env.example.com"
    assert s.listen == HostPort("0.0.0.0", 8080)
    assert s.admin_listen is None  # resolved by admin_address: see test_admin_* below
    assert s.admin_address == HostPort("127.0.0.1", 9090)
    assert s.idle_timeout_s == 300
    assert s.hold_timeout_s == 120
    assert s.max_held_per_project == 1000
    assert s.projects_file == Path("/tmp/projects.yaml")
    assert s.client_keepalive_timeout_s == 75
    assert s.client_header_timeout_s == 30


def test_issue_flags_exist() -> None:
    for flag in ("--backend", "--projects", "--domain", "--listen", "--admin-listen", "--idle-timeout",
                 "--hold-timeout", "--max-held-per-project", "--reap-interval"):
        assert flag in config.option_names()


def test_every_option_has_a_sample() -> None:
    assert set(GOOD) == {o.flag for o in OPTIONS}


@pytest.mark.parametrize("flag", sorted(GOOD))
def test_every_option_from_flag(flag: str) -> None:
    opt = _option(flag)
    raw, expected = GOOD[flag]
    parser = argparse.ArgumentParser()
    config.add_arguments(parser)
    argv = [flag, raw]
    if flag != "--projects":
        argv += ["--projects", "/tmp/p.yaml"]
    if flag == "--max-held-total":
        argv += ["--max-held-per-project", "5"]
    s = load_settings(parser.parse_args(argv), environ={})
    assert getattr(s, opt.field) == expected


@pytest.mark.parametrize("flag", sorted(GOOD))
def test_every_option_from_environment(flag: str) -> None:
    opt = _option(flag)
    raw, expected = GOOD[flag]
    assert opt.env == "WAKEGATE_" + flag[2:].upper().replace("-", "_")
    environ = {opt.env: raw, "WAKEGATE_PROJECTS": "/tmp/p.yaml"} if flag != "--projects" else {opt.env: raw}
    if flag == "--max-held-total":
        environ["WAKEGATE_MAX_HELD_PER_PROJECT"] = "5"
    s = load_settings({}, environ=environ)
    assert getattr(s, opt.field) == expected


def test_flag_wins_over_environment() -> None:
    environ = {"WAKEGATE_IDLE_TIMEOUT": "5", "WAKEGATE_DOMAIN": "env.test", "WAKEGATE_PROJECTS": "/env.yaml"}
    s = load_settings({"idle_timeout_s": "7", "projects_file": "/flag.yaml"}, environ=environ)
    assert s.idle_timeout_s == 7
    assert s.projects_file == Path("/flag.yaml")
    assert s.domain == "env.test"  # no flag given: the environment applies


def test_environment_wins_over_base() -> None:
    base = Settings(idle_timeout_s=30, domain="localhost", projects_file=Path("/base.yaml"))
    s = load_settings({}, environ={"WAKEGATE_IDLE_TIMEOUT": "9"}, base=base)
    assert s.idle_timeout_s == 9
    assert s.domain == "localhost"
    assert s.projects_file == Path("/base.yaml")


def test_unrelated_environment_is_ignored() -> None:
    s = load_settings(PROJECTS, environ={"IDLE_TIMEOUT": "1", "WAKEGATE_NOT_AN_OPTION": "x"})
    assert s.idle_timeout_s == 300


@pytest.mark.parametrize(("flag", "raw"), [(f, v) for f, values in sorted(BAD.items()) for v in values])
def test_bad_flag_value_names_the_flag(flag: str, raw: str) -> None:
    opt = _option(flag)
    with pytest.raises(ConfigError) as err:
        load_settings({opt.field: raw, **PROJECTS}, environ={})
    assert str(err.value).startswith(flag + ":")


@pytest.mark.parametrize(("flag", "raw"), [(f, v) for f, values in sorted(BAD.items()) for v in values[:1]])
def test_bad_environment_value_names_the_variable(flag: str, raw: str) -> None:
    opt = _option(flag)
    with pytest.raises(ConfigError) as err:
        load_settings(PROJECTS, environ={opt.env: raw})
    assert str(err.value).startswith(opt.env + ":")


def test_local_backend_needs_a_projects_file() -> None:
    with pytest.raises(ConfigError, match=r"^--projects: "):
        load_settings({}, environ={})
    # Kubernetes does not.
    assert load_settings({"backend": "kubernetes"}, environ={}).projects_file is None


def test_held_limits_must_be_consistent() -> None:
    with pytest.raises(ConfigError, match=r"^--max-held-per-project: .*--max-held-total"):
        load_settings({"max_held_per_project": "20", "max_held_total": "10", **PROJECTS}, environ={})


@pytest.mark.parametrize(
    "domain", ["", ".", "exa mple.com", "-x.com", "x_y.com", "ü.com", "ex..com", "a.-b.com", "a-.com"]
)
def test_bad_domain(domain: str) -> None:
    with pytest.raises(ConfigError, match=r"^--domain: "):
        load_settings({"domain": domain, **PROJECTS}, environ={})


@pytest.mark.parametrize("domain", ["localhost", "env.example.com", "EXAMPLE.com", "example.com."])
def test_good_domain(domain: str) -> None:
    assert load_settings({"domain": domain, **PROJECTS}, environ={}).domain == domain


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:80", HostPort("127.0.0.1", 80)),
        (":8080", HostPort("0.0.0.0", 8080)),
        ("localhost:0", HostPort("localhost", 0)),
        ("[::]:9090", HostPort("::", 9090)),
        (" 0.0.0.0:65535 ", HostPort("0.0.0.0", 65535)),
    ],
)
def test_parse_host_port(text: str, expected: HostPort) -> None:
    assert parse_host_port(text) == expected


def test_host_port_str_round_trips() -> None:
    for hp in (HostPort("::1", 80), HostPort("127.0.0.1", 8080)):
        assert parse_host_port(str(hp)) == hp
    assert str(HostPort("::1", 80)) == "[::1]:80"


def test_admin_api_defaults_to_loopback_without_a_token_and_all_interfaces_with_one() -> None:
    without = load_settings(PROJECTS, environ={})
    assert without.admin_address == HostPort("127.0.0.1", 9090)
    with_token = load_settings({**PROJECTS, "admin_token_file": "/run/token"}, environ={})
    assert with_token.admin_address == HostPort("0.0.0.0", 9090)
    from_env = load_settings(PROJECTS, environ={"WAKEGATE_ADMIN_TOKEN_FILE": "/run/token"})
    assert from_env.admin_address == HostPort("0.0.0.0", 9090)
    # an explicit address is kept as given, token or not
    explicit = load_settings({**PROJECTS, "admin_listen": "127.0.0.1:9191"}, environ={})
    assert explicit.admin_address == HostPort("127.0.0.1", 9191)
    assert Settings(admin_listen=HostPort("10.0.0.5", 1), admin_token_file=Path("/t")).admin_address == \
        HostPort("10.0.0.5", 1)


@pytest.mark.parametrize("listen", ["127.0.0.1:0", "127.0.0.2:9090", "[::1]:9090", "localhost:9090",
                                    "LOCALHOST:1"])
def test_admin_api_may_listen_on_loopback_without_a_token(listen: str) -> None:
    s = load_settings({**PROJECTS, "admin_listen": listen}, environ={})
    assert s.admin_address == parse_host_port(listen)


@pytest.mark.parametrize("listen", [":9090", "0.0.0.0:0", "[::]:9090", "192.0.2.1:9090", "[2001:db8::1]:9090",
                                    "[::ffff:127.0.0.1]:9090", "admin.example.com:9090", "127.0.0.1.nip.io:1"])
def test_non_loopback_admin_api_without_a_token_is_refused(listen: str) -> None:
    for args, environ in (({**PROJECTS, "admin_listen": listen}, {}),
                          (PROJECTS, {"WAKEGATE_ADMIN_LISTEN": listen})):
        with pytest.raises(ConfigError) as info:
            load_settings(args, environ=environ)
        message = str(info.value)
        assert "\n" not in message
        assert message.startswith(f"--admin-listen: {parse_host_port(listen)} is not a loopback address")
        assert "--admin-token-file is not set" in message
    # the same address with a token is fine
    s = load_settings({**PROJECTS, "admin_listen": listen, "admin_token_file": "/run/token"}, environ={})
    assert s.admin_address == parse_host_port(listen)


def test_url_for() -> None:
    s = Settings(domain="env.test", public_url="https://{project}.{domain}/")
    assert s.url_for("hello") == "https://hello.env.test/"


def test_help_mentions_environment_variables() -> None:
    parser = argparse.ArgumentParser()
    config.add_arguments(parser)
    text = parser.format_help()
    for opt in OPTIONS:
        assert opt.env in text


def test_client_timeouts_from_environment_and_their_errors() -> None:
    env = {"WAKEGATE_CLIENT_KEEPALIVE_TIMEOUT": "5", "WAKEGATE_CLIENT_HEADER_TIMEOUT": "2.5"}
    s = load_settings(PROJECTS, environ=env)
    assert (s.client_keepalive_timeout_s, s.client_header_timeout_s) == (5.0, 2.5)
    with pytest.raises(ConfigError) as info:
        load_settings(PROJECTS, environ={"WAKEGATE_CLIENT_HEADER_TIMEOUT": "-1"})
    assert str(info.value) == "WAKEGATE_CLIENT_HEADER_TIMEOUT: expected a positive number of seconds, got '-1'"
    with pytest.raises(ConfigError) as info:
        load_settings({**PROJECTS, "client_keepalive_timeout_s": "never"}, environ={})
    assert "--client-keepalive-timeout" in str(info.value)
    assert "never" in str(info.value)


DURATION_FLAGS = sorted(opt.flag for opt in OPTIONS if opt.field.endswith("_s"))


@pytest.mark.parametrize("flag", DURATION_FLAGS)
@pytest.mark.parametrize(("raw", "seconds"), [("90", 90.0), ("90s", 90.0), ("15m", 900.0), ("1h", 3600.0),
                                              ("1h30m", 5400.0), ("2.5", 2.5), ("250ms", 0.25)])
def test_every_duration_flag_takes_the_same_forms(flag: str, raw: str, seconds: float) -> None:
    opt = next(o for o in OPTIONS if o.flag == flag)
    assert opt.metavar == "DURATION"
    s = load_settings({**PROJECTS, opt.field: raw}, environ={})
    assert getattr(s, opt.field) == seconds


def test_help_shows_defaults_and_choices() -> None:
    parser = argparse.ArgumentParser()
    config.add_arguments(parser)
    text = " ".join(parser.format_help().split())
    assert "--backend local|kubernetes" in text and "one of local, kubernetes; default local" in text
    assert "one of auto, block, page; default auto" in text
    assert "default 300s; env WAKEGATE_IDLE_TIMEOUT" in text
    assert "default 0.0.0.0:8080" in text
    assert "default false; env WAKEGATE_TRUST_FORWARDED" in text
