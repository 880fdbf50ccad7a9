"""How many wakes anonymous public traffic may start: token buckets, in all and per client address.

Pure: no I/O, no event loop, no clock of its own (every call is given ``now``, in seconds of a
monotonic clock). A wake takes one token from the global bucket and one from its client's bucket;
it is refused (and takes nothing) when either is empty.

- A bucket holds one minute's worth of tokens (at least one, so a rate below one per minute still
  allows a wake now and then) and refills continuously at ``per_min / 60`` tokens per second.
- Client buckets live in a table bounded to ``max_clients`` entries, least recently used first
  out, so random source addresses cannot grow memory. A client pushed out simply starts again
  with a full bucket; the global bucket still bounds everyone together.
- IPv6 clients are keyed by their /64 network (one host usually holds a whole /64), IPv4-mapped
  IPv6 addresses by their IPv4 address.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from dataclasses import dataclass

SCOPE_GLOBAL = "global"
SCOPE_CLIENT = "client"
DEFAULT_MAX_CLIENTS = 16384


class TokenBucket:
    """``capacity`` tokens at most, refilled at ``rate_per_s``; starts full."""

    __slots__ = ("capacity", "rate_per_s", "stamp", "tokens")

    def __init__(self, per_min: float, now: float) -> None:
        if not per_min > 0 or per_min == float("inf"):
            raise ValueError(f"a wake rate must be a positive number per minute, got {per_min!r}")
        self.capacity = max(1.0, per_min)
        self.rate_per_s = per_min / 60.0
        self.tokens = self.capacity
        self.stamp = now

    def refill(self, now: float) -> float:
        """Bring the bucket up to ``now`` and return its tokens. A clock that goes backwards adds
        nothing (and does not move the stamp back)."""
        if now > self.stamp:
            self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate_per_s)
            self.stamp = now
        return self.tokens

    def wait_s(self, now: float) -> float:
        """Seconds from ``now`` until one token is available (0 when there is one)."""
        missing = 1.0 - self.refill(now)
        return 0.0 if missing <= 0 else missing / self.rate_per_s


@dataclass(frozen=True, slots=True)
class Limited:
    """A refused wake: which limit (``global`` or ``client``) and when to retry."""

    scope: str
    retry_after_s: float


def client_key(ip: bytes) -> bytes:
    """The per-client table's key for a peer address (textual, as the listener gives it)."""
    if b":" not in ip:
        return ip
    try:
        addr = ipaddress.IPv6Address(ip.decode("ascii").split("%", 1)[0])
    except (ValueError, UnicodeDecodeError):
        return ip
    mapped = addr.ipv4_mapped
    if mapped is not None:
        return str(mapped).encode()
    return addr.packed[:8] + b"/64"


class WakeLimiter:
    """The global bucket plus a bounded table of per-client buckets."""

    __slots__ = ("_clients", "_per_client_min", "global_bucket", "max_clients")

    def __init__(self, per_min: float, per_client_per_min: float, now: float,
                 max_clients: int = DEFAULT_MAX_CLIENTS) -> None:
        if max_clients < 1:
            raise ValueError(f"max_clients must be at least 1, got {max_clients}")
        self.global_bucket = TokenBucket(per_min, now)
        TokenBucket(per_client_per_min, now)  # validates the rate now, not at the first client
        self._per_client_min = per_client_per_min
        self.max_clients = max_clients
        self._clients: OrderedDict[bytes, TokenBucket] = OrderedDict()

    def __len__(self) -> int:
        """Client buckets held."""
        return len(self._clients)

    def take(self, client: bytes, now: float) -> Limited | None:
        """Take a token for one wake by ``client``: ``None`` when allowed, else why not. A refused
        wake takes nothing from either bucket. When both are empty the client limit is named (the
        one the caller can do something about) and the retry time is when both have a token."""
        key = client_key(client)
        bucket = self._clients.get(key)
        if bucket is not None:
            self._clients.move_to_end(key)
        g_wait = self.global_bucket.wait_s(now)
        c_wait = bucket.wait_s(now) if bucket is not None else 0.0
        if g_wait > 0 or c_wait > 0:
            return Limited(SCOPE_CLIENT if c_wait > 0 else SCOPE_GLOBAL, max(g_wait, c_wait))
        if bucket is None:
            bucket = TokenBucket(self._per_client_min, now)
            self._clients[key] = bucket
            if len(self._clients) > self.max_clients:
                self._clients.popitem(last=False)
        self.global_bucket.tokens -= 1.0
        bucket.tokens -= 1.0
        return None
