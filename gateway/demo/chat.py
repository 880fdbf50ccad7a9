"""Demo project "chat": server-sent events at /events, a WebSocket echo at /ws, a page using both."""

from __future__ import annotations

import asyncio
import os
import time

from aiohttp import WSMsgType, web

PAGE = """<!doctype html>
<meta charset="utf-8"><title>chat</title>
<h1>chat</h1>
<p>Server-sent events (one a second): <code id="tick">waiting…</code></p>
<form id="f"><input id="msg" placeholder="say something" autofocus> <button>send over WebSocket</button></form>
<pre id="log"></pre>
<script>
const log = (line) => { document.getElementById("log").textContent += line + "\\n"; };
const events = new EventSource("/events");
events.onmessage = (e) => { document.getElementById("tick").textContent = e.data; };
const ws = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws");
ws.onopen = () => log("websocket open");
ws.onmessage = (e) => log("echo: " + e.data);
ws.onclose = () => log("websocket closed");
document.getElementById("f").onsubmit = (e) => {
  e.preventDefault();
  const input = document.getElementById("msg");
  ws.send(input.value);
  input.value = "";
};
</script>
"""


async def index(request: web.Request) -> web.Response:
    return web.Response(text=PAGE, content_type="text/html")


async def events(request: web.Request) -> web.StreamResponse:
    """One event per ``interval`` seconds (query parameter, default 1), ``count`` events (default: forever)."""
    interval = float(request.query.get("interval", "1"))
    count = int(request.query["count"]) if "count" in request.query else None
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await resp.prepare(request)
    n = 0
    try:
        while count is None or n < count:
            n += 1
            await resp.write(f"id: {n}\ndata: tick {n} at {time.strftime('%H:%M:%S')}\n\n".encode())
            if count is None or n < count:
                await asyncio.sleep(interval)
        await resp.write_eof()
    except ConnectionError:  # the client went away: the normal end of an event stream
        print(f"chat: event stream closed by the client after {n} event(s)", flush=True)
    return resp


async def ws_echo(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(heartbeat=None)
    await ws.prepare(request)
    async for msg in ws:
        if msg.type is WSMsgType.TEXT:
            await ws.send_str(msg.data)
        elif msg.type is WSMsgType.BINARY:
            await ws.send_bytes(msg.data)
    return ws


def main() -> None:
    app = web.Application()
    app.router.add_get("/", index)
    app.router.add_get("/events", events)
    app.router.add_get("/ws", ws_echo)
    port = int(os.environ["PORT"])
    # run_app calls ``print`` once the socket is bound: the line means "connect now".
    web.run_app(app, host="127.0.0.1", port=port, access_log=None,
                print=lambda _: print(f"chat: listening on 127.0.0.1:{port}", flush=True))


if __name__ == "__main__":
    main()
