"""A gateway in its own process for tests that measure it from outside (memory).

``python -m tests.forward.gateway_proc PROJECT HOST:PORT`` serves ``PROJECT.<test domain>`` from the
endpoint HOST:PORT (found running), prints ``PORT <n>`` once listening, and exits when stdin closes.
"""

from __future__ import annotations

import asyncio
import sys

import uvloop

from gateway.backends.base import Endpoint
from gateway.config import parse_host_port
from tests.support import StaticUpstream, TableBackend, running_gateway


async def main(project: str, address: str) -> None:
    hp = parse_host_port(address)
    backend = TableBackend({project: StaticUpstream(Endpoint(hp.host, hp.port))}, running=(project,))
    async with running_gateway(backend) as gw:
        print(f"PORT {gw.port}", flush=True)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, sys.stdin.read)


if __name__ == "__main__":
    uvloop.run(main(sys.argv[1], sys.argv[2]))
