"""Structured logging: one line per event with project, request id and event name.

Callers pass only fields that are safe to log. Header values and bodies are never logged; the
formatter drops any field whose name looks like it could carry a credential, as a second guard.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

LOGGER_NAME = "wakegate"
log = logging.getLogger(LOGGER_NAME)

_FORBIDDEN = ("authorization", "cookie", "token", "password", "secret", "body")
_STD_ATTRS = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


def event(name: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log one structured event, e.g. ``event("wake", project="foo", duration_s=1.2)``."""
    if log.isEnabledFor(level):
        log.log(level, name, extra={"event": name, **{k: v for k, v in fields.items() if v is not None}})


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
