"""Demo project "hello": a plain HTTP greeting that shows GREETING and when this process woke."""

from __future__ import annotations

import html
import os
import time

from aiohttp import web

WOKE_AT = time.strftime("%H:%M:%S")
GREETING = os.environ.get("GREETING", "Hello")


async def index(request: web.Request) -> web.Response:
    body = (
        "<!doctype html><title>hello</title>"
        f"<h1>{html.escape(GREETING)}</h1>"
        f"<p>This project woke at {WOKE_AT} (pid {os.getpid()}). Leave it alone and it goes back to sleep.</p>\n"
    )
    return web.Response(text=body, content_type="text/html")


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


def main() -> None:
    app = web.Application()
    app.router.add_get("/", index)
    app.router.add_get("/healthz", healthz)
    print(f"hello: listening on 127.0.0.1:{os.environ['PORT']}")
    web.run_app(app, host="127.0.0.1", port=int(os.environ["PORT"]), print=None, access_log=None)


if __name__ == "__main__":
    main()
