"""Structured logging: one line per event with project, request id and event name.

Callers pass only fields that are safe to log. Header values and bodies are never logged; the
formatter drops any field whose name looks like it could carry a credential, as a second guard.
Paths are logged through :func:`safe_path` (no query string: it may carry tokens).

Request ids: the data path takes a client's ``X-Request-Id`` through :func:`request_id` (which
generates one when it is missing or unsafe) and may bind it with ``request_id_var.set(...)`` in
the task that holds a request: every event logged from that task, and from tasks it starts (the
lifecycle's wake), then carries ``request_id`` without being passed it.
"""

from __future__ import annotations

import contextvars
import itertools
import json
import logging
import os
import sys
import time
from typing import Any

from gateway.headers import safe_request_id

LOGGER_NAME = "wakegate"
log = logging.getLogger(LOGGER_NAME)

_FORBIDDEN = ("authorization", "cookie", "token", "password", "secret", "body")
_STD_ATTRS = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("wakegate_request_id", default=None)

_ID_PREFIX = os.urandom(4).hex()
_ID_COUNTER = itertools.count(1)
MAX_PATH_CHARS = 200


def event(name: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log one structured event, e.g. ``event("wake", project="foo", duration_s=1.2)``."""
    if log.isEnabledFor(level):
        if "request_id" not in fields:
            fields["request_id"] = request_id_var.get()
        log.log(level, name, extra={"event": name, **{k: v for k, v in fields.items() if v is not None}})


def new_request_id() -> str:
    """A request id unique to this process: a random per-process prefix and a counter."""
    return f"{_ID_PREFIX}-{next(_ID_COUNTER):08x}"


def request_id(incoming: str | bytes | None) -> str:
    """The client's ``X-Request-Id`` when it is safe to log and propagate, else a new one."""
    if incoming is not None:
        raw = incoming if isinstance(incoming, bytes) else incoming.encode("latin-1", "replace")
        if safe_request_id(raw):
            return raw.decode("ascii")
    return new_request_id()


def safe_path(target: str | bytes) -> str:
    """A request-target fit for logs: the path without its query string, truncated."""
    text = target.decode("latin-1") if isinstance(target, bytes) else target
    path = text.split("?", 1)[0].split("#", 1)[0]
    return path if len(path) <= MAX_PATH_CHARS else path[:MAX_PATH_CHARS] + "…"


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {
        k: v
        for k, v in vars(record).items()
        if k not in _STD_ATTRS and not any(bad in k.lower() for bad in _FORBIDDEN)
    }


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, event/message and the event's fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
        }
        fields = _fields(record)
        out["event"] = fields.pop("event", None) or record.getMessage()
        out.update(fields)
        if record.exc_info:
            out["error"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    """``LEVEL event key=value ...`` for people at a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        fields = _fields(record)
        name = fields.pop("event", None) or record.getMessage()
        pairs = " ".join(f"{k}={v}" for k, v in fields.items())
        line = f"{record.levelname:<7} {name} {pairs}".rstrip()
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def configure(fmt: str = "json", level: int = logging.INFO) -> None:
    """Send wakegate's logs to stderr in ``json`` or ``text`` format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiohttp's access log is replaced by our own optional one.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
