"""A strict, pure ``.env`` parser with per-line error reports.

Accepted syntax, one entry per line::

    # comment
    KEY=value                 unquoted: surrounding blanks and a trailing ' # comment' are dropped
    export KEY=value
    KEY='literal value'       no escapes
    KEY="line\\nbreak"        escapes: \\n \\t \\r \\" \\\\

Nothing is ever expanded: ``${VAR}`` stays ``${VAR}`` (the provisioner's own environment must never
leak into a project); such values produce a warning. Anything else is an error naming the line.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from .errors import SpecError

MAX_FILE_BYTES = 1024 * 1024  # a ConfigMap or Secret holds at most 1 MiB
MAX_REPORTED = 10

_KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_EXPORT_RE = re.compile(r"export\s+")
_INLINE_COMMENT_RE = re.compile(r"\s#")
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\"}

#: Names the kubelet or the dynamic loader owns; setting them breaks or subverts the container.
_FORBIDDEN_EXACT = frozenset({"PATH"})


class EnvFileError(SpecError):
    """One or more problems in a ``.env`` file; ``problems`` lists them as ``line N: ...``."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        shown = "; ".join(problems[:MAX_REPORTED])
        more = f" (and {len(problems) - MAX_REPORTED} more)" if len(problems) > MAX_REPORTED else ""
        super().__init__(f"{source}: {shown}{more}")


@dataclass(frozen=True, slots=True)
class EnvEntry:
    """One ``KEY=value`` line."""

    key: str
    value: str
    line: int


@dataclass(frozen=True, slots=True)
class EnvFile:
    """The entries of a parsed file, in file order, and warnings worth showing."""

    entries: tuple[EnvEntry, ...] = ()
    warnings: tuple[str, ...] = ()

    def items(self) -> tuple[tuple[str, str], ...]:
        """``(key, value)`` pairs in file order."""
        return tuple((e.key, e.value) for e in self.entries)


def env_key_problem(key: str) -> str | None:
    """Why ``key`` may not be set in a project's environment, or ``None`` if it may."""
    if not _KEY_RE.fullmatch(key):
        return f"invalid key {_show(key)} (letters, digits and '_', not starting with a digit)"
    upper = key.upper()
    if upper.startswith("KUBERNETES_"):
        return f"key {key} is reserved (KUBERNETES_* is set by the kubelet)"
    if re.search(r"_SERVICE_(HOST|PORT)(_|$)", upper) or re.search(r"_PORT_\d+_(TCP|UDP|SCTP)", upper):
        return f"key {key} is reserved (*_SERVICE_HOST / *_SERVICE_PORT look like Kubernetes service links)"
    if upper in _FORBIDDEN_EXACT:
        return f"key {key} is reserved (PATH belongs to the image)"
    if upper.startswith("LD_"):
        return f"key {key} is reserved (LD_PRELOAD and other LD_* variables subvert the dynamic loader)"
    return None


#: What a config key refused as a secret should do instead.
SECRET_ADVICE = "move it to the --secret-env-file file (or, if it is no secret, pass --allow-key KEY)"

# --- secret detection --------------------------------------------------------------------------------

#: A whole word of the key (split at '_' and camelCase) that marks it as secret.
_SECRET_WORDS = frozenset({
    "PASSWORD", "PASSWD", "PASS", "PASSPHRASE", "TOKEN", "SECRET", "SECRETS", "KEY", "APIKEY",
    "CREDENTIAL", "CREDENTIALS", "CREDS", "DSN", "SAS", "SALT", "PRIVATE", "CONNSTR", "CONNSTRING",
})
#: Anywhere in the key with '_' removed.
_SECRET_PARTS = (
    "PASSWORD", "PASSWD", "SECRET", "CREDENTIAL", "APIKEY", "ACCESSKEY", "PRIVATEKEY",
    "CONNECTIONSTRING", "AUTHTOKEN", "ACCESSTOKEN", "BEARER",
)
_SECRET_VALUES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"://[^/\s:@]*:[^/\s@]+@"), "a URL with a password"),
    (re.compile(r"(?i)(?:^|;)\s*(?:password|pwd|accountkey|sharedaccesskey|sharedaccesssignature|clientsecret)"
                r"\s*=\s*[^;\s]"), "a connection string with a password or key"),
    (re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"), "a PEM private key"),
    (re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,})"), "a GitHub token"),
    (re.compile(r"\bsk-(?:ant-|proj-)?[A-Za-z0-9_-]{20,}"), "an API key (sk-...)"),
    (re.compile(r"\b(?:sk|rk)_live_[A-Za-z0-9]{16,}"), "a Stripe key"),
    (re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"), "an AWS access key"),
    (re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}"), "a Slack token"),
    (re.compile(r"\bAIza[0-9A-Za-z_-]{35}"), "a Google API key"),
    (re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\."), "a JSON Web Token"),
    (re.compile(r"[?&]sig=[A-Za-z0-9%+/=]{16,}"), "a URL with a SAS signature"),
    (re.compile(r"(?i)^bearer\s+\S{16,}"), "a bearer token"),
)


def _words(key: str) -> list[str]:
    return [w.upper() for w in re.findall(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+", key)]


#: A word of the key saying it is a setting *about* a secret (``PASSWORD_MIN_LENGTH``,
#: ``TOKEN_EXPIRY_SECONDS``, ``CACHE_KEY_PREFIX``): with a plain value such a key is no credential.
_SETTING_WORDS = frozenset({
    "PREFIX", "SUFFIX", "EXPIRY", "EXPIRES", "EXPIRATION", "TTL", "LIFETIME", "SECONDS", "SECS", "MINUTES",
    "HOURS", "DAYS", "MS", "TIMEOUT", "MIN", "MAX", "LENGTH", "LEN", "SIZE", "BITS", "COUNT", "LIMIT",
    "ROUNDS", "ITERATIONS", "ENABLED", "DISABLED", "REQUIRED", "ENABLE", "DISABLE", "ALGORITHM", "ALG",
    "TYPE", "HEADER", "NAME", "FILE", "PATH", "DIR", "FORMAT", "VERSION", "LOCATION", "POLICY",
})
_PLAIN_VALUE = re.compile(r"(?i)(?:[0-9]+(?:\.[0-9]+)?[a-z]{0,3}|true|false|yes|no|on|off|[a-z][a-z0-9_.:/-]{0,31})?")


def _plain(value: str) -> bool:
    """A value no credential looks like: a number (with a unit), a boolean, or a short word that
    is not a random mix of upper case, lower case and digits."""
    if not _PLAIN_VALUE.fullmatch(value):
        return False
    random_looking = len(value) >= 16 and any(c.isupper() for c in value) and any(c.islower() for c in value) \
        and any(c.isdigit() for c in value)
    return not random_looking


def secret_reason(key: str, value: str, allowed: Collection[str] = ()) -> str | None:
    """Why ``key=value`` looks like a credential (never quoting the value), or ``None``.

    The name is judged with the value: a secret-sounding name that says it is a setting about a
    secret (a prefix, an expiry, a length…) passes when its value is plain (a number, a boolean, a
    short word). ``allowed`` names keys the operator vouches for (``--allow-key``); their values
    are still checked for credentials."""
    if key not in allowed:
        words = _words(key)
        reason = _name_reason(key, words)
        if reason and not (_SETTING_WORDS.intersection(words) and _plain(value)):
            return reason
    for pattern, what in _SECRET_VALUES:
        if pattern.search(value):
            return f"the value looks like {what}"
    return None


def _name_reason(key: str, words: list[str]) -> str | None:
    for word in words:
        if word in _SECRET_WORDS or word.endswith("TOKEN"):
            return f"the name contains {word!r}"
    if any(a == "CONNECTION" and b == "STRING" for a, b in itertools.pairwise(words)):
        return "the name says it is a connection string"
    squashed = key.upper().replace("_", "")
    for part in _SECRET_PARTS:
        if part in squashed:
            return f"the name contains {part!r}"
    return None


# --- parsing -----------------------------------------------------------------------------------------


def _show(text: str, limit: int = 40) -> str:
    shown = text if len(text) <= limit else text[:limit] + "..."
    return repr(shown)


def _parse_value(rest: str) -> tuple[str, str | None]:
    """Parse what follows ``=``. Returns ``(value, problem)``."""
    if rest.startswith("'"):
        end = rest.find("'", 1)
        if end < 0:
            return "", "unterminated single-quoted value"
        value, after = rest[1:end], rest[end + 1:]
    elif rest.startswith('"'):
        out: list[str] = []
        i = 1
        while True:
            if i >= len(rest):
                return "", "unterminated double-quoted value (values end on the same line; write \\n)"
            ch = rest[i]
            if ch == '"':
                break
            if ch == "\\":
                nxt = rest[i + 1:i + 2]
                if nxt not in _ESCAPES:
                    return "", (f"unknown escape '\\{nxt}' in double-quoted value "
                                "(allowed: \\n \\t \\r \\\" \\\\)")
                out.append(_ESCAPES[nxt])
                i += 2
                continue
            out.append(ch)
            i += 1
        value, after = "".join(out), rest[i + 1:]
    else:  # linear-time scans only: values may be ~1 MiB
        comment = _INLINE_COMMENT_RE.search(rest)
        return (rest[:comment.start()] if comment else rest).rstrip(), None
    if after.strip() and not re.match(r"\s+#", after):
        return "", "unexpected text after the closing quote"
    return value, None


def parse_env(data: bytes | str, *, source: str = ".env", secret: bool = False,
              allowed: Collection[str] = ()) -> EnvFile:
    """Parse ``.env`` content; raise :class:`EnvFileError` listing every bad line.

    With ``secret=False`` (a ConfigMap), keys or values that look like credentials are refused
    (:func:`secret_reason`; ``allowed``: keys whose names the operator vouches for).
    """
    raw = data.encode() if isinstance(data, str) else data
    if len(raw) > MAX_FILE_BYTES:
        raise EnvFileError(source, [f"file is {len(raw)} bytes, over the 1 MiB a ConfigMap or Secret can hold"])
    raw = raw.removeprefix(b"\xef\xbb\xbf")
    problems: list[str] = []
    warnings: list[str] = []
    entries: list[EnvEntry] = []
    first_line: dict[str, int] = {}
    for number, raw_line in enumerate(raw.split(b"\n"), start=1):
        where = f"line {number}"
        if b"\x00" in raw_line:
            problems.append(f"{where}: contains a NUL byte")
            continue
        try:
            line = raw_line.decode("utf-8")
        except UnicodeDecodeError:
            problems.append(f"{where}: not valid UTF-8")
            continue
        line = line.removesuffix("\r").strip()
        if not line or line.startswith("#"):
            continue
        export = _EXPORT_RE.match(line)
        if export:
            line = line[export.end():]
        key, eq, rest = line.partition("=")
        if not eq:
            problems.append(f"{where}: expected KEY=value")
            continue
        key = key.rstrip()
        problem = env_key_problem(key)
        if problem:
            problems.append(f"{where}: {problem}")
            continue
        value, problem = _parse_value(rest.lstrip())
        if problem:
            problems.append(f"{where}: {key}: {problem}")
            continue
        if key in first_line:
            problems.append(f"{where}: duplicate key {key} (first set on line {first_line[key]})")
            continue
        first_line[key] = number
        if not secret:
            reason = secret_reason(key, value, allowed)
            if reason:
                problems.append(f"{where}: {key} looks like a secret ({reason}); {SECRET_ADVICE}")
                continue
        if "${" in value:
            warnings.append(f"{source}: {where}: {key}: '${{...}}' is passed literally, nothing is expanded")
        entries.append(EnvEntry(key, value, number))
    if problems:
        raise EnvFileError(source, problems)
    return EnvFile(tuple(entries), tuple(warnings))


def load_env_file(path: str | Path, *, secret: bool = False, allowed: Collection[str] = ()) -> EnvFile:
    """Read and parse a ``.env`` file (see :func:`parse_env`). Unreadable files are a :class:`SpecError`."""
    p = Path(path)
    try:
        size = p.stat().st_size
        if size > MAX_FILE_BYTES:
            raise EnvFileError(str(p), [f"file is {size} bytes, over the 1 MiB a ConfigMap or Secret can hold"])
        data = p.read_bytes()
    except OSError as exc:
        raise SpecError(f"cannot read {p}: {exc.strerror or exc}") from None
    return parse_env(data, source=str(p), secret=secret, allowed=allowed)
