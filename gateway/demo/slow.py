"""Demo project "slow": boots in about BOOT_DELAY_S seconds (default 3) before it listens."""

from __future__ import annotations

import os
import time

from aiohttp import web

BOOT_DELAY_S = float(os.environ.get("BOOT_DELAY_S", "3"))


async def index(request: web.Request) -> web.Response:
    return web.Response(text=f"slow: ready after a {BOOT_DELAY_S:g}s boot (pid {os.getpid()})\n")


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


def main() -> None:
    print(f"slow: booting for {BOOT_DELAY_S:g}s")
    time.sleep(BOOT_DELAY_S)  # the point of this demo: a slow start-up the gateway holds requests through
    app = web.Application()
    app.router.add_get("/", index)
    app.router.add_get("/healthz", healthz)
    print(f"slow: listening on 127.0.0.1:{os.environ['PORT']}")
    web.run_app(app, host="127.0.0.1", port=int(os.environ["PORT"]), print=None, access_log=None)


if __name__ == "__main__":
    main()
