"""The .env parser: accepted syntax, and every refusal naming its line and problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from provisioner.envfile import MAX_FILE_BYTES, EnvFileError, load_env_file, parse_env, secret_reason
from provisioner.errors import SpecError


def items(text: str | bytes, *, secret: bool = False) -> dict[str, str]:
    return dict(parse_env(text, secret=secret).items())


def problems(text: str | bytes, *, secret: bool = False, allowed: tuple[str, ...] = ()) -> list[str]:
    with pytest.raises(EnvFileError) as info:
        parse_env(text, secret=secret, allowed=allowed)
    assert "\n" not in str(info.value)
    return info.value.problems


# --- accepted syntax -------------------------------------------------------------------------------


def test_plain_export_comments_and_blank_lines() -> None:
    text = "# a comment\n\nA=1\nexport B=two\n   C = spaced   \n\t# indented comment\nD=\n"
    assert items(text) == {"A": "1", "B": "two", "C": "spaced", "D": ""}


def test_order_and_line_numbers_are_kept() -> None:
    env = parse_env("B=1\n\nA=2\n")
    assert [(e.key, e.line) for e in env.entries] == [("B", 1), ("A", 3)]


def test_unquoted_inline_comment_needs_a_space() -> None:
    assert items("URL=http://x/#frag\nA=value # comment\nB=a#b\n") == {
        "URL": "http://x/#frag", "A": "value", "B": "a#b"}


def test_single_quotes_are_literal() -> None:
    assert items(r"A='a \n b # not a comment' # comment") == {"A": r"a \n b # not a comment"}


def test_double_quote_escapes() -> None:
    assert items(r'A="line1\nline2 \"q\" back\\slash\ttab"') == {"A": 'line1\nline2 "q" back\\slash\ttab'}


def test_unquoted_value_keeps_inner_spaces_and_quotes() -> None:
    assert items("A=hello world\nB=it's\n") == {"A": "hello world", "B": "it's"}


def test_crlf_and_bom() -> None:
    assert items(b"\xef\xbb\xbfA=1\r\nB='x'\r\n") == {"A": "1", "B": "x"}


def test_utf8_values() -> None:
    assert items("GREETING=grüß dich ✓\n") == {"GREETING": "grüß dich ✓"}


def test_dollar_braces_are_never_expanded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", "/root")
    monkeypatch.setenv("PROVISIONER_SECRET_THING", "leak")
    env = parse_env('A=${HOME}/x\nB="${PROVISIONER_SECRET_THING}"\nC=$HOME\n')
    assert dict(env.items()) == {"A": "${HOME}/x", "B": "${PROVISIONER_SECRET_THING}", "C": "$HOME"}
    assert len(env.warnings) == 2
    assert "line 1" in env.warnings[0] and "literally" in env.warnings[0]


# --- refusals --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("line", "expected"), [
    ("JUSTAKEY", "line 1: expected KEY=value"),
    ("export", "line 1: expected KEY=value"),
    ("=value", "line 1: invalid key ''"),
    ("1ABC=x", "line 1: invalid key '1ABC'"),
    ("MY-KEY=x", "line 1: invalid key 'MY-KEY'"),
    ("MY KEY=x", "line 1: invalid key 'MY KEY'"),
    ("A='unterminated", "line 1: A: unterminated single-quoted value"),
    ('A="unterminated', "line 1: A: unterminated double-quoted value"),
    ('A="bad \\q escape"', "line 1: A: unknown escape '\\q'"),
    ("A='x' trailing", "line 1: A: unexpected text after the closing quote"),
    ('A="x"trailing', "line 1: A: unexpected text after the closing quote"),
])
def test_syntax_errors(line: str, expected: str) -> None:
    assert any(p.startswith(expected) for p in problems(line)), problems(line)


@pytest.mark.parametrize(("key", "why"), [
    ("KUBERNETES_SERVICE_HOST", "KUBERNETES_*"),
    ("KUBERNETES_PORT", "KUBERNETES_*"),
    ("kubernetes_anything", "KUBERNETES_*"),
    ("REDIS_SERVICE_HOST", "*_SERVICE_HOST"),
    ("REDIS_SERVICE_PORT", "*_SERVICE_PORT"),
    ("REDIS_SERVICE_PORT_HTTP", "*_SERVICE_PORT"),
    ("REDIS_PORT_6379_TCP", "service links"),
    ("PATH", "PATH"),
    ("LD_PRELOAD", "LD_PRELOAD"),
    ("LD_LIBRARY_PATH", "LD_"),
])
def test_reserved_keys(key: str, why: str) -> None:
    (problem,) = problems(f"{key}=x\n")
    assert problem.startswith(f"line 1: key {key} is reserved") and why in problem


def test_duplicate_keys_name_both_lines() -> None:
    (problem,) = problems("A=1\nB=2\n\nA=3\n")
    assert problem == "line 4: duplicate key A (first set on line 1)"


def test_nul_byte() -> None:
    assert problems(b"A=1\nB=x\x00y\n") == ["line 2: contains a NUL byte"]


def test_invalid_utf8() -> None:
    assert problems(b"A=1\nB=\xff\xfe\n") == ["line 2: not valid UTF-8"]


def test_over_one_mebibyte() -> None:
    data = b"A=" + b"x" * MAX_FILE_BYTES
    (problem,) = problems(data)
    assert "over the 1 MiB" in problem


def test_every_bad_line_is_reported() -> None:
    found = problems("A=1\nbad line\nPATH=/x\nA=2\n")
    assert [p.split(":")[0] for p in found] == ["line 2", "line 3", "line 4"]


def test_error_message_is_one_line_and_capped() -> None:
    with pytest.raises(EnvFileError) as info:
        parse_env("\n".join(f"bad{i}" for i in range(25)), source="x.env")
    message = str(info.value)
    assert message.startswith("x.env: line 1: expected KEY=value")
    assert "(and 15 more)" in message and "\n" not in message


# --- secrets ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", [
    "DB_PASSWORD", "PASSWORD", "db_passwd", "SMTP_PASS", "GITHUB_TOKEN", "GITHUBTOKEN", "HF_TOKEN",
    "API_KEY", "apiKey", "OPENAI_APIKEY", "AWS_SECRET_ACCESS_KEY", "CLIENT_SECRET", "AZURE_CREDENTIALS",
    "GOOGLE_APPLICATION_CREDENTIAL", "DB_CONNECTION_STRING", "ConnectionString", "SENTRY_DSN",
    "STORAGE_SAS", "SIGNING_SALT", "PRIVATE_KEY", "ACCESSTOKEN", "MyAccessToken", "SSH_PASSPHRASE",
])
def test_secret_looking_keys_are_refused_from_config(key: str) -> None:
    (problem,) = problems(f"{key}=harmless\n")
    assert problem.startswith(f"line 1: {key} looks like a secret (the name")
    assert "--secret-env-file" in problem


@pytest.mark.parametrize(("value", "what"), [
    ("postgres://app:hunter2@db:5432/app", "a URL with a password"),
    ("redis://:hunter2@cache:6379", "a URL with a password"),
    ("Server=tcp:x;Database=y;User ID=u;Password=hunter2;", "a connection string"),
    ("DefaultEndpointsProtocol=https;AccountName=a;AccountKey=abc==;", "a connection string"),
    ("-----BEGIN RSA PRIVATE KEY-----", "a PEM private key"),
    ("ghp_" + "a" * 36, "a GitHub token"),
    ("github_pat_" + "A1" * 20, "a GitHub token"),
    ("sk-" + "x" * 40, "an API key"),
    ("sk-ant-api03-" + "x" * 40, "an API key"),
    ("AKIAIOSFODNN7EXAMPLE", "an AWS access key"),
    ("xoxb-123456789012-abcdef", "a Slack token"),
    ("AIza" + "b" * 35, "a Google API key"),
    ("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.sig", "a JSON Web Token"),
    ("https://acct.blob.core.windows.net/c?sv=2022&sig=abcdefghijklmnopqrstuv", "a SAS signature"),
    ("Bearer abcdefghijklmnopqrstuvwxyz", "a bearer token"),
])
def test_credential_looking_values_are_refused_without_echoing_them(value: str, what: str) -> None:
    (problem,) = problems(f"SETTING='{value}'\n")
    assert "looks like a secret" in problem and what in problem
    assert value not in problem


@pytest.mark.parametrize("key", [
    "TOKENIZERS_PARALLELISM", "MAX_TOKENS", "KEYBOARD_LAYOUT", "PWD", "PASSTHROUGH", "LOG_LEVEL", "PORT",
    "NODE_ENV", "DATABASE_HOST", "PUBLIC_URL",
])
def test_ordinary_keys_are_accepted(key: str) -> None:
    assert secret_reason(key, "http://example.com:8080/path") is None


@pytest.mark.parametrize(("key", "value"), [
    ("CACHE_KEY_PREFIX", "myapp:"), ("TOKEN_EXPIRY_SECONDS", "3600"), ("PASSWORD_MIN_LENGTH", "12"),
    ("SESSION_TOKEN_TTL", "15m"), ("JWT_SECRET_ALGORITHM", "HS256"), ("API_KEY_HEADER", "X-Api-Key"),
    ("PASSWORD_RESET_ENABLED", "true"), ("SECRET_NAME", "app-credentials"), ("MAX_TOKENS", "4096"),
])
def test_settings_about_secrets_with_plain_values_are_accepted(key: str, value: str) -> None:
    assert items(f"{key}={value}\n") == {key: value}


@pytest.mark.parametrize(("key", "value"), [
    ("CACHE_KEY_PREFIX", "q8Zr0vXw3LkPa9Yt6BnM2cDe5FgHj7Kl"),  # a long random value: a key after all
    ("TOKEN_EXPIRY_SECONDS", "sk-" + "x" * 40),  # the value is a credential, whatever the name says
    ("API_KEY", "12"), ("DB_PASSWORD", "hunter2"),  # no word saying it is a setting
])
def test_secret_sounding_settings_with_secret_looking_values_are_still_refused(key: str, value: str) -> None:
    (problem,) = problems(f"{key}={value}\n")
    assert problem.startswith(f"line 1: {key} looks like a secret") and value not in problem
    assert "--allow-key KEY" in problem


def test_allow_key_vouches_for_a_name_but_never_for_a_credential_value() -> None:
    assert parse_env("SIGNING_SALT_ROTATION=weekly\nAPI_KEY=abc\n", allowed=("API_KEY", "SIGNING_SALT_ROTATION")
                     ).items() == (("SIGNING_SALT_ROTATION", "weekly"), ("API_KEY", "abc"))
    (problem,) = problems("API_KEY=ghp_" + "a" * 36 + "\n", allowed=("API_KEY",))
    assert "a GitHub token" in problem


def test_secret_file_accepts_secrets() -> None:
    assert items("DB_PASSWORD=hunter2\nURL=postgres://a:b@c/d\n", secret=True) == {
        "DB_PASSWORD": "hunter2", "URL": "postgres://a:b@c/d"}


def test_secret_file_still_enforces_the_other_rules() -> None:
    assert problems("PATH=/bin\nA=1\nA=2\n", secret=True)[0].startswith("line 1: key PATH is reserved")


# --- files -----------------------------------------------------------------------------------------


def test_load_env_file(tmp_path: Path) -> None:
    path = tmp_path / "app.env"
    path.write_text("A=1\n")
    assert load_env_file(path).items() == (("A", "1"),)


def test_load_env_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "app.env"
    path.write_text("oops\n")
    with pytest.raises(EnvFileError, match=r"app\.env: line 1: expected KEY=value"):
        load_env_file(path)


def test_missing_file_is_a_spec_error(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"cannot read .*nope\.env"):
        load_env_file(tmp_path / "nope.env")


def test_oversized_file_is_refused_before_reading(tmp_path: Path) -> None:
    path = tmp_path / "big.env"
    with path.open("wb") as f:
        f.truncate(MAX_FILE_BYTES + 1)
    with pytest.raises(EnvFileError, match="over the 1 MiB"):
        load_env_file(path)


@pytest.mark.timeout(10)
@pytest.mark.parametrize("value", ["x" * 900_000, " " * 900_000 + "x", "a:" * 400_000, "://" + "a:" * 300_000,
                                   "eyJ" * 300_000, "-----BEGIN " + "A " * 400_000])
def test_large_values_parse_in_linear_time(value: str) -> None:
    assert parse_env(f"A={value}\n", secret=True).items()[0][1] == value.strip()
    secret_reason("SETTING", value)
