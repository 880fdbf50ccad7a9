"""A client run inside a pod's network namespace (the test cluster's ``kubectl exec``).

``python -m tests.cluster.pod_client connect HOST PORT`` tries one TCP connection and prints
``{"result": "open" | "refused" | "unreachable" | "timeout" | "error", "detail": ...}``;
``http URL [--host H] [--header K:V]`` prints ``{"status", "headers", "body"}`` (or ``{"error"}``);
``websocket URL [--host H] --send TEXT`` sends one message and prints ``{"status", "echo"}``.
Traffic leaves from the pod's own address, so a NetworkPolicy engine judges it as the pod's.
:func:`run_in_pod` runs it there (``nsenter --net`` into the pod's namespace) and returns the JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import json
import os
import subprocess
import sys
from typing import Any

import aiohttp

Obj = dict[str, Any]


async def connect(host: str, port: int, timeout_s: float) -> Obj:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout_s)
    except TimeoutError:
        return {"result": "timeout", "detail": f"no answer within {timeout_s:g}s"}
    except ConnectionRefusedError as exc:
        return {"result": "refused", "detail": str(exc)}
    except OSError as exc:
        if exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EACCES, errno.EPERM):
            return {"result": "unreachable", "detail": str(exc)}
        return {"result": "error", "detail": str(exc)}
    writer.close()
    return {"result": "open", "detail": ""}


def _headers(host: str | None, extra: list[str]) -> dict[str, str]:
    headers = dict(h.split(":", 1) for h in extra)
    if host:
        headers["Host"] = host
    return {k.strip(): v.strip() for k, v in headers.items()}


async def http(url: str, host: str | None, extra: list[str], timeout_s: float) -> Obj:
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout, auto_decompress=False) as session,
            session.get(url, headers=_headers(host, extra), allow_redirects=False) as resp,
        ):
            body = await resp.read()
            return {"status": resp.status, "headers": dict(resp.headers), "body": body.decode(errors="replace")}
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}


async def websocket(url: str, host: str | None, extra: list[str], send: str, timeout_s: float) -> Obj:
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.ws_connect(url, headers=_headers(host, extra)) as ws,
        ):
            await ws.send_str(send)
            msg = await ws.receive(timeout=timeout_s)
            return {"status": 101, "echo": msg.data if msg.type == aiohttp.WSMsgType.TEXT else None}
    except aiohttp.WSServerHandshakeError as exc:
        return {"status": exc.status, "error": str(exc)}
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("connect")
    c.add_argument("host")
    c.add_argument("port", type=int)
    for name in ("http", "websocket"):
        p = sub.add_parser(name)
        p.add_argument("url")
        p.add_argument("--host")
        p.add_argument("--header", action="append", default=[])
        if name == "websocket":
            p.add_argument("--send", required=True)
    parser.add_argument("--timeout", type=float, default=5.0)
    args = parser.parse_args()
    if args.command == "connect":
        out = asyncio.run(connect(args.host, args.port, args.timeout))
    elif args.command == "http":
        out = asyncio.run(http(args.url, args.host, args.header, args.timeout))
    else:
        out = asyncio.run(websocket(args.url, args.host, args.header, args.send, args.timeout))
    json.dump(out, sys.stdout)


def run_in_pod(netns: str, *args: str, timeout_s: float = 5.0) -> Obj:
    """Run this client with ``args`` in the network namespace ``netns``; its JSON answer."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.run(
        ["nsenter", f"--net=/run/netns/{netns}", "--", sys.executable, "-m", "tests.cluster.pod_client",
         "--timeout", str(timeout_s), *args],
        capture_output=True, text=True, cwd=root, timeout=timeout_s + 60,
        env={**os.environ, "PYTHONPATH": root},
    )  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"pod client failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    answer: Obj = json.loads(proc.stdout)
    return answer


if __name__ == "__main__":
    main()
