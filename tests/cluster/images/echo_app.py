"""The program behind the test images ``wakegate.test/{echo,slow,crash}:1``.

Run by the node agent inside a pod's network namespace with ``PORT`` and ``POD_IP`` set.

* every path: JSON ``{"method", "path", "headers", "env", "pod", "image"}`` (``path`` is the raw
  path with query, ``env`` the sorted names of the environment variables);
* ``/healthz``: ``ok``;
* ``/events``: server-sent events ``data: <n>`` every ``interval`` s (default 0.1), ``count``
  times (default 5);
* ``/ws``: WebSocket echo of text and binary messages; a client close code is echoed back.

``--mode slow`` waits ``BOOT_SECONDS`` (default 3) before it listens; ``--mode crash`` prints a
message on stderr and exits with status 1 at once.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import sys

from aiohttp import WSCloseCode, WSMsgType, web


def pod_info() -> dict[str, str]:
    return {
        "name": os.environ.get("HOSTNAME", socket.gethostname()),
        "ip": os.environ.get("POD_IP", ""),
    }


async def echo(request: web.Request) -> web.Response:
    return web.json_response(
        {
            "method": request.method,
            "path": request.raw_path,
            "headers": dict(request.headers),
            "body_bytes": len(await request.read()),
            "env": sorted(os.environ),
            "pod": pod_info(),
            "image": request.app["image"],
        }
    )


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def events(request: web.Request) -> web.StreamResponse:
    interval = float(request.query.get("interval", "0.1"))
    count = int(request.query.get("count", "5"))
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await resp.prepare(request)
    for n in range(count):
        await resp.write(f"data: {n}\n\n".encode())
        if n + 1 < count:
            await asyncio.sleep(interval)
    await resp.write_eof()
    return resp


async def websocket(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(autoclose=False)
    await ws.prepare(request)
    while True:  # not `async for`: it stops before yielding the CLOSE message and its code
        msg = await ws.receive()
        if msg.type == WSMsgType.TEXT:
            await ws.send_str(msg.data)
        elif msg.type == WSMsgType.BINARY:
            await ws.send_bytes(msg.data)
        elif msg.type == WSMsgType.CLOSE:
            await ws.close(code=int(msg.data or WSCloseCode.OK))
            return ws
        elif msg.type in (WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
            return ws


def make_app(image: str) -> web.Application:
    app = web.Application()
    app["image"] = image
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/events", events)
    app.router.add_get("/ws", websocket)
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


async def serve(image: str, boot_seconds: float) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if boot_seconds > 0:
        print(f"booting for {boot_seconds}s", flush=True)
        try:
            await asyncio.wait_for(stop.wait(), boot_seconds)
            return
        except TimeoutError:
            pass
    host = os.environ.get("POD_IP") or "127.0.0.1"
    port = int(os.environ.get("PORT", "8080"))
    runner = web.AppRunner(make_app(image), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    print(f"listening on {host}:{port}", flush=True)
    await stop.wait()
    print("SIGTERM: shutting down", flush=True)
    await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=["echo", "slow", "crash"], default="echo")
    parser.add_argument("--image", default="wakegate.test/echo:1")
    args = parser.parse_args()
    if args.mode == "crash":
        print(f"{args.image}: crashing on purpose (exit 1)", file=sys.stderr, flush=True)
        sys.exit(1)
    boot = float(os.environ.get("BOOT_SECONDS", "3")) if args.mode == "slow" else 0.0
    asyncio.run(serve(args.image, boot))


if __name__ == "__main__":
    main()
