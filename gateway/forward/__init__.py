"""The data path: a protocol-level HTTP/1.1 reverse proxy on uvloop with llhttp parsing.

- :mod:`gateway.forward.client` — client connections, exchanges, WebSocket tunnels, the listener.
- :mod:`gateway.forward.upstream` — upstream connections and their keep-alive pool.

The policy (routing, waking, holding) lives in :mod:`gateway.server`, which implements
:class:`~gateway.forward.client.Handler`.
"""

from gateway.forward.client import ClientConnection, Exchange, Handler, Listener
from gateway.forward.upstream import UpstreamConnection, UpstreamPool

__all__ = ["ClientConnection", "Exchange", "Handler", "Listener", "UpstreamConnection", "UpstreamPool"]
