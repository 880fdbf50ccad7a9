"""``watch``: list an EndpointSlice collection (none may be ready yet), watch it, and print the
Unix-ns time (``time.time_ns()``) at which the line of an event with a ready endpoint was read.
A process of its own, so the arrival is stamped as promptly as the gateway's informer receives it."""

from __future__ import annotations

import http.client
import json
import ssl
import time
import urllib.parse
from pathlib import Path
from typing import Any


def _ready(slice_: Any) -> bool:
    if not isinstance(slice_, dict):
        return False
    for ep in slice_.get("endpoints") or ():
        if isinstance(ep, dict) and (ep.get("conditions") or {}).get("ready") is True:
            return True
    return False


def run(url: str, ca: str, cert: str, key: str, timeout_s: float, progress_file: str | None) -> dict[str, Any]:
    """List, check, watch; the JSON object ``watch`` prints."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise ValueError(f"--url: want an https:// URL, got {url!r}")
    try:
        ctx = ssl.create_default_context(cafile=ca)
        ctx.load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as exc:
        raise ValueError(f"--ca/--cert/--key: {exc}") from exc
    conn = http.client.HTTPSConnection(parts.hostname, parts.port or 443, context=ctx, timeout=timeout_s)
    path = parts.path or "/"
    try:
        conn.request("GET", path + (f"?{parts.query}" if parts.query else ""))
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"list: status {resp.status}")
        try:
            listing = json.loads(body)
        except ValueError as exc:
            raise RuntimeError(f"list: {exc}") from exc
        if any(_ready(item) for item in listing.get("items") or ()):
            raise RuntimeError("an endpoint is ready already")
        version = (listing.get("metadata") or {}).get("resourceVersion", "")
        query = urllib.parse.urlencode({"watch": "1", "resourceVersion": version,
                                        "timeoutSeconds": int(timeout_s)})
        conn.request("GET", f"{path}?{query}")
        resp = conn.getresponse()
        if resp.status != 200:
            raise RuntimeError(f"watch: status {resp.status}")
        if progress_file:
            Path(progress_file).write_text("watching\n")
        while True:
            line = resp.readline()
            at = time.time_ns()
            if not line:
                raise RuntimeError("watch ended before an endpoint was ready")
            if not line.strip():
                continue
            try:
                event = json.loads(line)
            except ValueError as exc:
                raise RuntimeError(f"watch: malformed event: {exc}") from exc
            if event.get("type") in ("ADDED", "MODIFIED") and _ready(event.get("object")):
                return {"ready_unix_ns": at}
    finally:
        conn.close()
