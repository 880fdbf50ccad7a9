"""Command line of ``python -m bench.loadgen`` (``--addr 127.0.0.1:8080`` or ``--addr=...``; durations
as ``10s``, ``250ms``, ``1m30s`` or plain seconds)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from bench.loadgen.conn import parse_addr
from bench.loadgen.stats import parse_duration

COMMANDS = ("rate", "burst", "stream", "serve", "watch")


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _addr(text: str) -> tuple[str, int]:
    try:
        return parse_addr(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"want a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"want a positive integer, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"want a positive number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"want a positive number, got {text}")
    return value


def _client(p: argparse.ArgumentParser) -> None:
    p.add_argument("--addr", type=_addr, required=True, help="HOST:PORT to connect to")
    p.add_argument("--host", default="localhost", help="Host header")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="|".join(COMMANDS))

    p = sub.add_parser("rate", help="open-loop load at a constant rate")
    _client(p)
    p.add_argument("--path", default="/", help="request path")
    p.add_argument("-c", "--c", dest="connections", type=_positive_int, default=50, help="connections")
    p.add_argument("--rate", type=_positive_float, default=1000.0, help="requests/s, all connections together")
    p.add_argument("--duration", type=_duration, default=10.0, help="measured time")
    p.add_argument("--warmup", type=_duration, default=1.0, help="time sent at the same rate before measuring")
    p.add_argument("--timeout", type=_duration, default=10.0, help="per-request timeout")
    p.add_argument("--scrape-url", default="", help="GET this URL periodically during the measured time")
    p.add_argument("--scrape-interval", type=_duration, default=1.0, help="time between scrape starts")

    p = sub.add_parser("burst", help="N connections, then N requests released at once")
    _client(p)
    p.add_argument("--path", default="/", help="request path")
    p.add_argument("-n", "--n", dest="n", type=_positive_int, default=1, help="concurrent requests")
    p.add_argument("--dial-concurrency", type=_positive_int, default=256, help="connections being opened at once")
    p.add_argument("--timeout", type=_duration, default=120.0, help="time for the whole burst")
    p.add_argument("--progress-file", default="", help="append 'connected N' and 'sent N' lines here")

    p = sub.add_parser("stream", help="one large download or upload")
    _client(p)
    p.add_argument("--mode", choices=("download", "upload"), default="download")
    p.add_argument("--bytes", dest="size", type=_positive_int, default=1 << 30, help="bytes to transfer")
    p.add_argument("--timeout", type=_duration, default=300.0, help="time for the transfer")

    p = sub.add_parser("serve", help="the upstream")
    p.add_argument("--listen", default="", help="HOST:PORT (default 127.0.0.1:$PORT)")
    p.add_argument("--delay", type=_duration, default=0.0, help="time to wait before listening")
    p.add_argument("--wait-file", default="", help="listen only once this file exists")
    p.add_argument("--wait-timeout", type=_duration, default=300.0, help="give up waiting for --wait-file")
    p.add_argument("--ready-file", default="", help="append the Unix ns time of listening here")
    p.add_argument("--body-size", type=int, default=1024, help="bytes of the / response")

    p = sub.add_parser("watch", help="when an EndpointSlice collection first has a ready endpoint")
    p.add_argument("--url", required=True, action="append",
                   help="https://HOST:PORT/apis/discovery.k8s.io/v1/namespaces/NS/endpointslices (repeatable; "
                        "a query such as ?labelSelector=... is kept)")
    p.add_argument("--ca", required=True, help="cluster CA (PEM)")
    p.add_argument("--cert", required=True, help="client certificate (PEM)")
    p.add_argument("--key", required=True, help="client key (PEM)")
    p.add_argument("--timeout", type=_duration, default=180.0, help="give up after")
    p.add_argument("--progress-file", default="", help="write 'watching' here once every watch is open")
    p.add_argument("--connections", type=int, default=3,
                   help="watch connections per --url; the earliest arrival counts (default 3)")
    return parser


def _rate(a: argparse.Namespace) -> dict[str, Any]:
    from bench.loadgen import rate

    return rate.run(rate.RateOptions(a.addr, a.host, a.path, a.connections, a.rate, a.duration, a.warmup, a.timeout,
                                     a.scrape_url or None, a.scrape_interval))


def _burst(a: argparse.Namespace) -> dict[str, Any]:
    from bench.loadgen import burst

    return burst.run(burst.BurstOptions(a.addr, a.host, a.path, a.n, a.dial_concurrency, a.timeout,
                                        a.progress_file or None))


def _stream(a: argparse.Namespace) -> dict[str, Any]:
    from bench.loadgen import stream

    return stream.run(a.addr, a.host, a.mode, a.size, a.timeout)


def _serve(a: argparse.Namespace) -> None:
    from bench.loadgen import serve

    serve.run(serve.ServeOptions(a.listen or None, a.delay, a.wait_file or None, a.wait_timeout,
                                 a.ready_file or None, a.body_size))


def _watch(a: argparse.Namespace) -> dict[str, Any]:
    from bench.loadgen import watch

    return watch.run(a.url, a.ca, a.cert, a.key, a.timeout, a.progress_file or None, a.connections)


_RUN: dict[str, Callable[[argparse.Namespace], dict[str, Any] | None]] = {
    "rate": _rate, "burst": _burst, "stream": _stream, "serve": _serve, "watch": _watch,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        out = _RUN[args.command](args)
    except KeyboardInterrupt:
        return 130
    except (OSError, ValueError, RuntimeError) as exc:
        print(f"loadgen {args.command}: {exc}", file=sys.stderr)
        return 1
    if out is not None:
        sys.stdout.write(json.dumps(out) + "\n")
        sys.stdout.flush()
    return 0
