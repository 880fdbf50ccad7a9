"""Pure helpers: durations on the command line (``10s``, ``250ms``), percentiles, error tallies."""

from __future__ import annotations

import re

_UNITS_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def parse_duration(text: str) -> float:
    """Seconds in ``text``: a bare number of seconds (``2.5``) or a duration with units (``300ms``, ``1m30s``)."""
    s = text.strip()
    if not s:
        raise ValueError("empty duration")
    try:
        value = float(s)
    except ValueError:
        pos, value = 0, 0.0
        for m in _PART.finditer(s):
            if m.start() != pos:
                break
            value += float(m.group(1)) * _UNITS_S[m.group(2)]
            pos = m.end()
        if pos != len(s) or pos == 0:
            raise ValueError(f"invalid duration {text!r} (want e.g. 10s, 250ms, 1m30s or seconds)") from None
    if value < 0 or value != value or value == float("inf"):
        raise ValueError(f"invalid duration {text!r}: must be a finite number of seconds, not negative")
    return value


def percentiles_ms(samples_ns: list[int]) -> dict[str, float]:
    """p50, p90, p99, p99.9, max and mean in milliseconds (nearest rank);
    {} without samples. Sorts ``samples_ns`` in place."""
    if not samples_ns:
        return {}
    samples_ns.sort()
    n = len(samples_ns)

    def at(q: float) -> float:
        i = min(n - 1, max(0, int(q * n + 0.5) - 1))
        return samples_ns[i] / 1e6

    return {"p50": at(0.50), "p90": at(0.90), "p99": at(0.99), "p99_9": at(0.999),
            "max": samples_ns[-1] / 1e6, "mean": sum(samples_ns) / n / 1e6}


class ErrorCounts:
    """Failures by kind: the message after its last ': ' (addresses and ports dropped, the cause kept)."""

    def __init__(self) -> None:
        self.kinds: dict[str, int] = {}

    def add(self, message: str, count: int = 1) -> None:
        kind = message.rsplit(": ", 1)[-1] or "error"
        self.kinds[kind] = self.kinds.get(kind, 0) + count

    def add_exc(self, exc: BaseException) -> None:
        if isinstance(exc, OSError) and exc.strerror:
            self.add(exc.strerror.lower())
        elif isinstance(exc, TimeoutError):
            self.add("i/o timeout")
        else:
            self.add(str(exc) or type(exc).__name__)

    def total(self) -> int:
        return sum(self.kinds.values())

    def as_json(self) -> dict[str, int] | None:
        """The tally, or None when nothing failed (reported as null)."""
        return dict(self.kinds) if self.kinds else None
