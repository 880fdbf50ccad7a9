"""The data path: a protocol-level HTTP/1.1 reverse proxy on uvloop with llhttp parsing.

- :mod:`gateway.forward.client` — client connections, exchanges, WebSocket tunnels, the listener.
- :mod:`gateway.forward.upstream` — upstream connections and their keep-alive pool; they report to
  the client side through :class:`~gateway.forward.upstream.ResponseSink`.
- :mod:`gateway.forward.memo` — the warm path's shortcuts (remembered response heads, deferred
  writes and closes) and the invariants they keep.

The policy (routing, waking, holding) lives in :mod:`gateway.server`, which implements
:class:`~gateway.forward.client.Handler`.
"""

from gateway.forward.client import ClientConnection, Exchange, Handler, Listener
from gateway.forward.memo import Memo
from gateway.forward.upstream import ResponseSink, UpstreamConnection, UpstreamPool

__all__ = ["ClientConnection", "Exchange", "Handler", "Listener", "Memo", "ResponseSink", "UpstreamConnection",
           "UpstreamPool"]
