"""``wakegate project activate|deactivate``: thin command-line clients of the admin API.

Exit codes: 0 done; 1 the gateway refused or could not do it (unknown project, 409 in flight,
504 not ready in time, unreachable admin API, bad token); 2 usage or configuration errors.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from gateway.contract import parse_duration

DEFAULT_ADMIN_URL = "http://127.0.0.1:9090"
# How long the client waits for an answer; with --wait the gateway answers within the hold timeout.
REQUEST_TIMEOUT_S = 30.0
WAIT_MARGIN_S = 30.0
WAIT_DEFAULT_TIMEOUT_S = 900.0


class AdminError(Exception):
    """The admin API could not be reached or refused the call; ``exit_code`` is 1 or 2."""

    def __init__(self, message: str, exit_code: int = 1, body: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.body = body


def add_project_commands(actions: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``activate`` and ``deactivate`` to ``wakegate project``."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--admin-url", default=os.environ.get("WAKEGATE_ADMIN_URL", DEFAULT_ADMIN_URL),
                        metavar="URL", help=f"the gateway's admin listener (env WAKEGATE_ADMIN_URL; "
                        f"default {DEFAULT_ADMIN_URL})")
    common.add_argument("--admin-token-file", default=os.environ.get("WAKEGATE_ADMIN_TOKEN_FILE"), type=Path,
                        metavar="FILE", help="bearer token for the admin API (env WAKEGATE_ADMIN_TOKEN_FILE)")
    common.add_argument("--json", action="store_true", help="print the project's JSON instead of a summary")

    activate = actions.add_parser("activate", parents=[common], help="wake a project through the gateway",
                                  description="Wake a project. With --wait, return once it is ready.")
    activate.add_argument("name", metavar="NAME", help="the project")
    activate.add_argument("--wait", action="store_true", help="wait until it is ready (exit 1 on timeout)")
    activate.add_argument("--timeout", type=_seconds, metavar="DURATION",
                          help="with --wait: seconds to wait (default: the project's hold timeout)")
    activate.set_defaults(func=cmd_activate)

    deactivate = actions.add_parser("deactivate", parents=[common], help="scale a project to zero now",
                                    description="Scale a project to zero. Refused while requests are in "
                                    "flight unless --force.")
    deactivate.add_argument("name", metavar="NAME", help="the project")
    deactivate.add_argument("--force", action="store_true", help="even while requests are in flight")
    deactivate.set_defaults(func=cmd_deactivate)


def _seconds(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def cmd_activate(args: argparse.Namespace) -> int:
    """``wakegate project activate NAME [--wait] [--timeout S]``."""
    query: dict[str, str] = {}
    timeout_s = REQUEST_TIMEOUT_S
    if args.wait:
        query["wait"] = "true"
        timeout_s = WAIT_DEFAULT_TIMEOUT_S
        if args.timeout is not None:
            query["timeout"] = f"{args.timeout:g}"
            timeout_s = args.timeout + WAIT_MARGIN_S
    return _run(args, "activate", query, timeout_s)


def cmd_deactivate(args: argparse.Namespace) -> int:
    """``wakegate project deactivate NAME [--force]``."""
    return _run(args, "deactivate", {"force": "true"} if args.force else {}, REQUEST_TIMEOUT_S)


def _run(args: argparse.Namespace, action: str, query: dict[str, str], timeout_s: float) -> int:
    try:
        status, body = call(args.admin_url, f"/api/v1/projects/{urllib.parse.quote(args.name, safe='')}/{action}",
                            query=query, token_file=args.admin_token_file, timeout_s=timeout_s)
    except AdminError as exc:
        if args.json and exc.body is not None:
            print(json.dumps(exc.body, indent=2))
        print(f"wakegate: {exc}", file=sys.stderr)
        return exc.exit_code
    print(json.dumps(body, indent=2) if args.json else summary(body, status))
    return 0


def summary(project: dict[str, Any], status: int) -> str:
    """One line for people: ``alpha: ready, 1 endpoint, https://alpha.example.com/``."""
    state = project.get("state", "?")
    parts = [f"{project.get('name', '?')}: {state}"]
    if state == "ready":
        n = project.get("ready_endpoints", 0)
        parts.append(f"{n} endpoint{'s' if n != 1 else ''}")
    elif status == 202:
        parts.append("wake started")
    if project.get("url"):
        parts.append(str(project["url"]))
    return ", ".join(parts)


def call(admin_url: str, path: str, *, method: str = "POST", query: dict[str, str] | None = None,
         token_file: Path | None = None, timeout_s: float = REQUEST_TIMEOUT_S) -> tuple[int, dict[str, Any]]:
    """Call the admin API; returns (status, JSON body) for 2xx answers, raises :class:`AdminError`."""
    parsed = urllib.parse.urlsplit(admin_url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise AdminError(f"--admin-url: expected http://HOST:PORT, got {admin_url!r}", exit_code=2)
    url = admin_url.rstrip("/") + path + ("?" + urllib.parse.urlencode(query) if query else "")
    headers = {"Accept": "application/json"}
    if token_file is not None:
        from gateway.config import read_token  # ConfigError (exit 2) for a missing or empty file

        headers["Authorization"] = "Bearer " + read_token(token_file).decode()
    request = urllib.request.Request(url, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as resp:
            return resp.status, _decode(resp.read(), resp.status)
    except urllib.error.HTTPError as exc:
        body = _decode(exc.read(), exc.code)
        message = str(body.get("error") or f"HTTP {exc.code}")
        if exc.code == 401:
            message += " (check --admin-token-file / WAKEGATE_ADMIN_TOKEN_FILE)"
        raise AdminError(f"{message} [HTTP {exc.code}]", body=body) from None
    except urllib.error.URLError as exc:
        reason = exc.reason
        what = reason.strerror if isinstance(reason, OSError) and reason.strerror else str(reason)
        raise AdminError(f"cannot reach the admin API at {admin_url}: {what} (is the gateway running? "
                         "set --admin-url or WAKEGATE_ADMIN_URL)") from None
    except TimeoutError:
        raise AdminError(f"the admin API at {admin_url} did not answer within {timeout_s:g}s") from None
    except OSError as exc:
        raise AdminError(f"cannot talk to the admin API at {admin_url}: {exc}") from None


def _decode(raw: bytes, status: int) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except ValueError:
        return {"error": f"HTTP {status} with a non-JSON answer (is {status} from a wakegate admin listener?)"}
    return body if isinstance(body, dict) else {"error": f"unexpected answer: {raw[:200]!r}"}
