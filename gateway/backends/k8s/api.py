"""The I/O layer: raw JSON requests and resumable watches over one kubernetes-asyncio ``ApiClient``.

Objects stay plain dicts (no model deserialisation: the pure modules read them directly). Every
request carries a timeout; watches use server-side ``timeoutSeconds``, bookmarks, resume from the
last resourceVersion, re-list on 410 Gone and reconnect with capped exponential backoff.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote

import aiohttp

from gateway import logs
from gateway.backends.k8s.objects import key_of, meta

log = logging.getLogger(__name__)
Obj = dict[str, Any]
Key = tuple[str, str]
MERGE_PATCH = "application/merge-patch+json"


class ApiError(Exception):
    """The API server answered with an error status."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}" if message else f"{status} {reason}")
        self.status = status
        self.reason = reason
        self.message = message


class ApiUnreachable(Exception):
    """The API server could not be reached (connection refused, timeout, TLS failure, 5xx)."""


def path_quote(part: str) -> str:
    return quote(part, safe="")


def deployment_path(namespace: str, name: str, subresource: str = "") -> str:
    """``/apis/apps/v1/namespaces/{namespace}/deployments/{name}`` (``subresource``: e.g. ``/scale``)."""
    return f"/apis/apps/v1/namespaces/{path_quote(namespace)}/deployments/{path_quote(name)}{subresource}"


class Kube:
    """JSON requests over a shared ``ApiClient`` (authentication, TLS and token refresh are its job)."""

    def __init__(self, api_client: Any, timeout_s: float = 10.0) -> None:
        self.api_client = api_client
        self.timeout_s = timeout_s
        #: Set by every request: whether the last one reached the API server.
        self.reachable = False
        self.on_reachability: Callable[[bool, str], None] | None = None

    def mark(self, ok: bool, error: str = "") -> None:
        """Record whether the API server answered; transitions go to ``on_reachability``."""
        if ok != self.reachable:
            self.reachable = ok
            if self.on_reachability:
                self.on_reachability(ok, error)

    async def open(self, method: str, path: str, *, query: Mapping[str, Any] | None = None,
                   body: Any = None, content_type: str = "application/json",
                   limit: aiohttp.ClientTimeout | float | None = None) -> aiohttp.ClientResponse:
        """Send a request; the caller reads and releases the response. Raises ApiUnreachable."""
        params = [(k, str(v).lower() if isinstance(v, bool) else str(v)) for k, v in (query or {}).items()
                  if v is not None]
        try:
            resp: aiohttp.ClientResponse = await self.api_client.call_api(
                path, method, query_params=params,
                header_params={"Accept": "application/json", "Content-Type": content_type},
                body=body, auth_settings=["BearerToken"], _preload_content=False,
                _request_timeout=limit if limit is not None else self.timeout_s,
            )
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            self.mark(False, _describe(exc))
            raise ApiUnreachable(_describe(exc)) from exc
        if resp.status >= 500:
            text = await _read_text(resp)
            error = f"API server answered {resp.status}: {_status_message(text)}"
            self.mark(False, error)
            raise ApiUnreachable(error)
        self.mark(True)
        return resp

    async def request(self, method: str, path: str, *, query: Mapping[str, Any] | None = None,
                      body: Any = None, content_type: str = "application/json",
                      timeout_s: float | None = None) -> Obj:
        """One request with a JSON answer. Raises ApiError (4xx) or ApiUnreachable."""
        resp = await self.open(method, path, query=query, body=body, content_type=content_type,
                               limit=timeout_s)
        try:
            raw = await asyncio.wait_for(resp.read(), timeout_s or self.timeout_s)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            self.mark(False, _describe(exc))
            raise ApiUnreachable(_describe(exc)) from exc
        finally:
            resp.release()
        if resp.status >= 400:
            text = raw.decode("utf-8", "replace")
            raise ApiError(resp.status, resp.reason or "", _status_message(text))
        try:
            data = json.loads(raw) if raw else {}
        except ValueError as exc:
            raise ApiUnreachable(f"API server sent invalid JSON: {exc}") from exc
        return data if isinstance(data, dict) else {}


async def _read_text(resp: aiohttp.ClientResponse) -> str:
    try:
        return (await asyncio.wait_for(resp.read(), 5)).decode("utf-8", "replace")
    except (aiohttp.ClientError, OSError, TimeoutError):
        return ""
    finally:
        resp.release()


def _status_message(text: str) -> str:
    try:
        data = json.loads(text)
    except ValueError:
        return text.strip()[:300]
    if isinstance(data, dict) and data.get("message"):
        return str(data["message"])
    return text.strip()[:300]


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "request timed out"
    return str(exc) or type(exc).__name__


ChangeHandler = Callable[[Key, Obj | None, Obj | None], None]


class Informer:
    """A cache of one resource kind (all namespaces, filtered by label selector) kept current by a
    watch. ``on_change(key, old, new)`` runs for every add/change/delete (``None`` for absent),
    including the differences found when a re-list replaces the cache."""

    def __init__(self, kube: Kube, kind: str, path: str, on_change: ChangeHandler, *,
                 label_selector: str | None = None, watch_timeout_s: int = 300, page_size: int = 500,
                 backoff_max_s: float = 10.0) -> None:
        self.kube = kube
        self.kind = kind
        self.path = path
        self.on_change = on_change
        self.label_selector = label_selector
        self.watch_timeout_s = watch_timeout_s
        self.page_size = page_size
        self.backoff_max_s = backoff_max_s
        self.store: dict[Key, Obj] = {}
        self.resource_version: str | None = None
        self.synced = asyncio.Event()
        self.last_error: str | None = None
        self.relists = 0

    async def run(self) -> None:
        """List, then watch forever (until cancelled). A second run resumes watching from where the
        first one stopped (and re-lists if the server no longer has that resourceVersion)."""
        failures = 0
        need_list = not self.resource_version
        while True:
            try:
                if need_list:
                    await self._list()
                    need_list = False
                await self._watch()
                failures = 0  # a watch that ended by its own timeout: resume at once
            except _Gone:
                logs.event("watch_expired", kind=self.kind, resource_version=self.resource_version)
                need_list = True
                failures = 0
            except Exception as exc:  # anything: the watch must come back (cancellation still ends it)
                failures += 1
                self.last_error = str(exc) or type(exc).__name__
                delay = min(self.backoff_max_s, 0.25 * 2 ** min(failures, 8)) * (0.5 + random.random() / 2)
                expected = isinstance(exc, (ApiUnreachable, ApiError, ValueError))
                logs.event("watch_error", logging.WARNING, kind=self.kind, error=self.last_error,
                           retry_in_s=round(delay, 2))
                if not expected:
                    log.exception("watch of %s failed unexpectedly", self.kind)
                if isinstance(exc, ApiError) and exc.status == 410:
                    need_list = True
                await asyncio.sleep(delay)

    async def _list(self) -> None:
        items: dict[Key, Obj] = {}
        cont: str | None = None
        while True:
            try:
                page = await self.kube.request("GET", self.path, query={
                    "labelSelector": self.label_selector, "limit": self.page_size, "continue": cont,
                })
            except ApiError as exc:
                if exc.status == 410 and cont:  # the continue token expired: start over
                    items.clear()
                    cont = None
                    continue
                raise
            for obj in page.get("items") or []:
                items[key_of(obj)] = obj
            cont = (page.get("metadata") or {}).get("continue") or None
            if not cont:
                self.resource_version = str((page.get("metadata") or {}).get("resourceVersion") or "")
                break
        old, self.store = self.store, items
        self.relists += 1
        for key in sorted(old.keys() - items.keys()):
            self.on_change(key, old[key], None)
        for key, obj in items.items():
            prev = old.get(key)
            if prev is None or meta(prev).get("resourceVersion") != meta(obj).get("resourceVersion"):
                self.on_change(key, prev, obj)
        self.last_error = None
        self.synced.set()

    async def _watch(self) -> None:
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.kube.timeout_s,
                                        sock_read=self.watch_timeout_s + 30)
        resp = await self.kube.open("GET", self.path, query={
            "watch": True, "labelSelector": self.label_selector, "resourceVersion": self.resource_version,
            "allowWatchBookmarks": True, "timeoutSeconds": self.watch_timeout_s,
        }, limit=timeout)
        try:
            if resp.status == 410:
                raise _Gone()
            if resp.status >= 400:
                text = (await resp.read()).decode("utf-8", "replace")
                raise ApiError(resp.status, resp.reason or "", _status_message(text))
            while True:
                try:
                    line = await resp.content.readline()
                except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                    error = f"watch of {self.kind} broke: {_describe(exc)}"
                    self.kube.mark(False, error)
                    raise ApiUnreachable(error) from exc
                if not line:
                    return
                if line.strip():
                    self._event(json.loads(line))
        finally:
            resp.release()

    def _event(self, ev: Mapping[str, Any]) -> None:
        kind = ev.get("type")
        obj = ev.get("object") or {}
        if kind == "ERROR":
            code = obj.get("code")
            if code == 410:
                raise _Gone()
            raise ApiError(int(code or 500), str(obj.get("reason") or "Error"), str(obj.get("message") or ""))
        rv = meta(obj).get("resourceVersion")
        if kind == "BOOKMARK":
            if rv:
                self.resource_version = str(rv)
            return
        key = key_of(obj)
        prev = self.store.get(key)
        if kind in ("ADDED", "MODIFIED"):
            self.store[key] = obj
            self.on_change(key, prev, obj)
        elif kind == "DELETED":
            self.store.pop(key, None)
            if prev is not None:
                self.on_change(key, prev, None)
        if rv:
            self.resource_version = str(rv)


class _Gone(Exception):
    """The watch's resourceVersion is too old (410 Gone): re-list."""
