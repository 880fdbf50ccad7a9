"""Node agent: plays kubelet (and, as there is none, the scheduler) for fake nodes of a test cluster.

It registers Ready Nodes (with ``spec.podCIDR`` and a renewed Lease), binds pending pods to them,
and runs each pod the way kubelet plus a CNI plugin would, with local processes instead of
containers:

* every pod gets a network namespace ``wgp<slot>-<uid>``, a veth pair on the pod bridge of the
  node's namespace ``wgn<slot>`` (:mod:`tests.cluster.netalloc`) and an IP from its node's
  ``podCIDR`` (default route via the host's address on that bridge);
* each container's image is looked up in :mod:`tests.cluster.images`; an unknown image is reported
  as ``ErrImagePull``/``ImagePullBackOff``; ``command``/``args`` replace its ENTRYPOINT/CMD;
* the environment comes from ``env``/``envFrom`` (ConfigMaps and Secrets read through the API,
  ``fieldRef``, ``$(VAR)`` expansion); a missing object or key is a ``CreateContainerConfigError``
  that is retried, like kubelet does; ``PORT`` (first containerPort) and ``POD_IP`` are added, and
  ``KUBERNETES_SERVICE_HOST``/``_PORT`` name the API server's endpoint (no kube-proxy serves the
  ``kubernetes`` Service's ClusterIP here, so its endpoint stands in for it);
* volumes (:mod:`tests.cluster.volumes`): emptyDir, secret, configMap, downwardAPI and projected,
  including the ServiceAccount token at ``/var/run/secrets/kubernetes.io/serviceaccount/``, are
  bind-mounted in a private mount namespace; a missing Secret or ConfigMap keeps the container in
  ``ContainerCreating`` and is retried;
* the process runs as the pod's ``runAsUser``/``runAsGroup`` (else the image's uid, 65532), with
  ``fsGroup`` and ``supplementalGroups`` as supplementary groups;
* readiness probes (httpGet, tcpSocket, exec; grpc is probed as tcpSocket) run every 0.1 s until
  the first success, then every ``periodSeconds``; httpGet and tcpSocket connect from the node's
  namespace, as kubelet's do from the node; pod status (phase, podIP, conditions,
  containerStatuses) is patched so the real EndpointSlice controller publishes the pod;
* a container that exits is restarted per ``restartPolicy`` with a CrashLoopBackOff back-off
  (1 s doubling to 20 s — shorter than kubelet's 10 s..5 min), ``lastState.terminated`` carrying the
  exit code and the tail of its stderr;
* deletion: SIGTERM, ``deletionGracePeriodSeconds``, SIGKILL, then the pod is deleted with grace 0.

Not emulated: persistent and host volumes, init containers (reported as completed without
running), liveness and startup probes, lifecycle hooks, service-link env vars other than the API
server's, ``kubectl logs/exec`` (logs are files under ``<state>/pods/``; :func:`pod_netns` names a
pod's network namespace for ``nsenter``), resource limits. NetworkPolicies are enforced by a real
engine in the node's namespace when the cluster runs one (:mod:`tests.cluster.controlplane`).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import ctypes
import ipaddress
import json
import logging
import os
import re
import signal
import socket
import ssl
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
from kubernetes_asyncio import config as kconfig
from kubernetes_asyncio.client import ApiClient, Configuration

from tests.cluster import images
from tests.cluster.netalloc import NETNS_PREFIX, NODE_BRIDGE, remove_netns, slot_netns
from tests.cluster.volumes import PodVolumes, VolumeError

log = logging.getLogger("node-agent")

Obj = dict[str, Any]
T = TypeVar("T")

KUBELET_VERSION = "v1.37.2"
CRASH_BACKOFF_BASE = 1.0
CRASH_BACKOFF_MAX = 20.0
FAST_PROBE_INTERVAL = 0.1
NODE_CAPACITY = {"cpu": "8", "memory": "32Gi", "pods": "110", "ephemeral-storage": "100Gi"}


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def now_micro() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# --- API access -------------------------------------------------------------------------------


class ApiError(Exception):
    def __init__(self, status: int, body: Obj) -> None:
        super().__init__(f"HTTP {status}: {body.get('message', body)}")
        self.status = status
        self.body = body


class Kube:
    """Raw-JSON requests over kubernetes_asyncio's configured (TLS, auth) REST client."""

    def __init__(self, api: ApiClient) -> None:
        self.api = api
        self.host: str = api.configuration.host or ""

    @classmethod
    async def from_kubeconfig(cls, path: str) -> Kube:
        cfg = Configuration()
        await kconfig.load_kube_config(config_file=path, client_configuration=cfg)
        return cls(ApiClient(cfg))

    async def close(self) -> None:
        await self.api.close()

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        query: dict[str, str] | None = None,
        content_type: str = "application/json",
        request_timeout: float = 15.0,
    ) -> Obj:
        resp = await self.api.rest_client.request(
            method,
            self.host + path,
            query_params=query,
            headers={"Content-Type": content_type, "Accept": "application/json"},
            body=body,
            _preload_content=False,
            _request_timeout=request_timeout,
        )
        try:
            raw = await resp.read()
        finally:
            resp.release()
        data: Obj = json.loads(raw) if raw else {}
        if not 200 <= resp.status < 300:
            raise ApiError(resp.status, data)
        return data

    async def get(self, path: str, **query: str) -> Obj:
        return await self.request("GET", path, query=query or None)

    async def merge_patch(self, path: str, body: Obj) -> Obj:
        return await self.request("PATCH", path, body, content_type="application/merge-patch+json")

    async def watch(self, path: str, resource_version: str) -> AsyncIterator[Obj]:
        """Watch events (with bookmarks) from ``resource_version``; ends when the server closes."""
        query = {
            "watch": "1",
            "resourceVersion": resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": "240",
        }
        resp = await self.api.rest_client.request(
            "GET",
            self.host + path,
            query_params=query,
            headers={"Accept": "application/json"},
            _preload_content=False,
            _request_timeout=aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=300),
        )
        try:
            if resp.status != 200:
                raise ApiError(resp.status, json.loads(await resp.read() or b"{}"))
            buf = b""
            async for chunk in resp.content.iter_any():
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    if line.strip():
                        yield json.loads(line)
        finally:
            resp.release()


async def retrying(what: str, call: Callable[[], Awaitable[T]], attempts: int = 0) -> T:
    """Run ``call`` until it succeeds (or ``attempts`` are used up), backing off on errors.

    ApiErrors other than 429/5xx are raised at once: they are answers, not outages.
    """
    delay = 0.1
    n = 0
    while True:
        try:
            return await call()
        except ApiError as exc:
            if exc.status != 429 and exc.status < 500:
                raise
            err: Exception = exc
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            err = exc
        n += 1
        if attempts and n >= attempts:
            raise err
        log.debug("%s failed (%s), retrying in %.1fs", what, err, delay)
        await asyncio.sleep(delay)
        delay = min(delay * 2, 2.0)


# --- environment ------------------------------------------------------------------------------


class ConfigError(Exception):
    """A container cannot be configured yet (CreateContainerConfigError)."""


_VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")
_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")


def expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes ``$(VAR)`` expansion: known references are replaced, ``$$`` escapes ``$``."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1)
        return env.get(name, m.group(0))

    return _VAR_REF.sub(sub, value)


class EnvResolver:
    """Builds a container's environment the way kubelet's makeEnvironmentVariables does."""

    def __init__(self, kube: Kube, pod: Obj) -> None:
        self.kube = kube
        self.pod = pod
        self.ns = pod["metadata"]["namespace"]
        self._cache: dict[tuple[str, str], Obj | None] = {}

    async def _object(self, kind: str, name: str) -> Obj | None:
        key = (kind, name)
        if key not in self._cache:
            path = f"/api/v1/namespaces/{self.ns}/{kind}s/{name}"
            try:
                self._cache[key] = await retrying(f"get {kind} {name}", lambda: self.kube.get(path), 20)
            except ApiError as exc:
                if exc.status != 404:
                    raise ConfigError(f"{kind} {name!r}: {exc}") from exc
                self._cache[key] = None
        return self._cache[key]

    async def _data(self, kind: str, name: str, optional: bool) -> dict[str, str] | None:
        obj = await self._object(kind, name)
        if obj is None:
            if optional:
                return None
            raise ConfigError(f'{kind} "{name}" not found')
        if kind == "secret":
            return {k: base64.b64decode(v).decode(errors="replace") for k, v in obj.get("data", {}).items()}
        return dict(obj.get("data") or {})

    async def _key_ref(self, kind: str, ref: Obj) -> str | None:
        name, key, optional = ref.get("name", ""), ref["key"], bool(ref.get("optional"))
        data = await self._data(kind, name, optional)
        if data is None:
            return None
        if key not in data:
            if optional:
                return None
            label = "ConfigMap" if kind == "configmap" else "Secret"
            raise ConfigError(f"couldn't find key {key} in {label} {self.ns}/{name}")
        return data[key]

    def field(self, path: str) -> str:
        """The value of a downward API ``fieldRef`` path."""
        meta, spec, status = self.pod["metadata"], self.pod["spec"], self.pod.get("status", {})
        simple = {
            "metadata.name": meta.get("name", ""),
            "metadata.namespace": meta.get("namespace", ""),
            "metadata.uid": meta.get("uid", ""),
            "spec.nodeName": spec.get("nodeName", ""),
            "spec.serviceAccountName": spec.get("serviceAccountName", ""),
            "status.hostIP": status.get("hostIP", ""),
            "status.hostIPs": ",".join(i["ip"] for i in status.get("hostIPs", [])),
            "status.podIP": status.get("podIP", ""),
            "status.podIPs": ",".join(i["ip"] for i in status.get("podIPs", [])),
        }
        if path in simple:
            return str(simple[path])
        m = re.fullmatch(r"metadata\.(labels|annotations)\['([^']*)'\]", path)
        if m:
            return str((meta.get(m.group(1)) or {}).get(m.group(2), ""))
        raise ConfigError(f"unsupported fieldRef {path!r}")

    def _resource(self, container: Obj, ref: Obj) -> str:
        kind, _, res = ref["resource"].partition(".")
        value = ((container.get("resources") or {}).get(kind) or {}).get(res)
        return str(value if value is not None else NODE_CAPACITY.get(res, "0"))

    async def environment(self, container: Obj, base: dict[str, str]) -> dict[str, str]:
        env = dict(base)
        for source in container.get("envFrom") or []:
            prefix = source.get("prefix", "")
            if "configMapRef" in source:
                ref = source["configMapRef"]
                data = await self._data("configmap", ref.get("name", ""), bool(ref.get("optional")))
            else:
                ref = source["secretRef"]
                data = await self._data("secret", ref.get("name", ""), bool(ref.get("optional")))
            for key, text in (data or {}).items():
                if _ENV_NAME.match(prefix + key):
                    env[prefix + key] = text
        for var in container.get("env") or []:
            name = var["name"]
            if "valueFrom" not in var:
                env[name] = expand(var.get("value", ""), env)
                continue
            src = var["valueFrom"]
            value: str | None
            if "configMapKeyRef" in src:
                value = await self._key_ref("configmap", src["configMapKeyRef"])
            elif "secretKeyRef" in src:
                value = await self._key_ref("secret", src["secretKeyRef"])
            elif "fieldRef" in src:
                value = self.field(src["fieldRef"]["fieldPath"])
            elif "resourceFieldRef" in src:
                value = self._resource(container, src["resourceFieldRef"])
            else:
                raise ConfigError(f"unsupported valueFrom for {name}")
            if value is not None:
                env[name] = value
        return env


# --- pod sandbox (network namespace) ----------------------------------------------------------


async def run_cmd(*argv: str, stdin: str | None = None) -> str:
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await proc.communicate(stdin.encode() if stdin is not None else None)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {err.decode().strip()}")
    return out.decode()


_libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET = 0x40000000


def enter_netns(path: str) -> None:
    """Move the calling thread into the network namespace at ``path``."""
    fd = os.open(path, os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns {path}: {os.strerror(err)}")
    finally:
        os.close(fd)


def announce(netns: str, ip: str) -> None:
    """Gratuitous ARP from a pod's eth0, as CNI's bridge plugin sends: whoever still maps the pod's IP
    to the MAC of an earlier pod that had it (this machine, the node, other pods) learns the new one.
    Runs in a thread of its own, which it moves into the pod's network namespace."""
    enter_netns(f"/run/netns/{netns}")
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as raw:
        raw.bind(("eth0", 0))
        mac, addr = raw.getsockname()[4], socket.inet_aton(ip)
        for op, target_mac in ((1, b"\x00" * 6), (2, b"\xff" * 6)):  # request and reply forms
            arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, op) + mac + addr + target_mac + addr
            raw.send(b"\xff" * 6 + mac + b"\x08\x06" + arp)


def pod_netns(slot: int, pod_uid: str) -> str:
    """The network namespace of a pod (``nsenter --net=/run/netns/NAME`` runs a command in it)."""
    return f"{NETNS_PREFIX}{slot}-{pod_uid[:13]}"


@dataclass
class Network:
    """The cluster's pod network: a bridge in the node's namespace; the host's address is the gateway."""

    slot: int
    node_netns: str
    subnet: ipaddress.IPv4Network
    veth_counter: int = 0
    _node_thread: ThreadPoolExecutor | None = None

    @property
    def gateway(self) -> ipaddress.IPv4Address:
        return self.subnet.network_address + 1

    @property
    def node_address(self) -> ipaddress.IPv4Address:
        return self.subnet.broadcast_address - 1

    async def node_connect(
        self, host: str, port: int, timeout_s: float, tls: ssl.SSLContext | None = None
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A TCP connection from the node's namespace (where kubelet's probes come from)."""
        if self._node_thread is None:
            self._node_thread = ThreadPoolExecutor(
                1, "node-netns", initializer=enter_netns, initargs=(f"/run/netns/{self.node_netns}",)
            )
        loop = asyncio.get_running_loop()
        sock = await loop.run_in_executor(self._node_thread, socket.socket)
        sock.setblocking(False)
        try:
            await asyncio.wait_for(loop.sock_connect(sock, (host, port)), timeout_s)
            return await asyncio.wait_for(
                asyncio.open_connection(sock=sock, ssl=tls, server_hostname=host if tls else None), timeout_s
            )
        except BaseException:
            sock.close()
            raise

    async def create_sandbox(self, netns: str, ip: ipaddress.IPv4Address) -> None:
        self.veth_counter += 1
        host_if = f"wgv{self.slot}x{self.veth_counter}"
        await run_cmd("ip", "netns", "add", netns)
        await run_cmd(
            "ip",
            "-n",
            self.node_netns,
            "-batch",
            "-",
            stdin=(
                f"link add {host_if} type veth peer name eth0 netns {netns}\n"
                f"link set {host_if} master {NODE_BRIDGE}\n"
                f"link set {host_if} up\n"
            ),
        )
        await run_cmd(
            "ip",
            "-n",
            netns,
            "-batch",
            "-",
            stdin=(
                "link set lo up\n"
                f"addr add {ip}/{self.subnet.prefixlen} dev eth0\n"
                "link set eth0 up\n"
                f"route add default via {self.gateway}\n"
            ),
        )
        # Like containerd: any user may bind any port inside a pod.
        await run_cmd(
            "nsenter",
            f"--net=/run/netns/{netns}",
            "sh",
            "-c",
            "echo 0 > /proc/sys/net/ipv4/ip_unprivileged_port_start",
        )
        with ThreadPoolExecutor(1, "announce") as thread:  # a thread that ends in the pod's namespace
            await asyncio.get_running_loop().run_in_executor(thread, announce, netns, str(ip))

    async def remove_sandbox(self, netns: str) -> None:
        await asyncio.to_thread(remove_netns, netns)


# --- containers -------------------------------------------------------------------------------


@dataclass
class ContainerState:
    """What kubelet would report for one container."""

    name: str
    image: str
    restart_count: int = 0
    state: Obj = field(default_factory=lambda: {"waiting": {"reason": "ContainerCreating"}})
    last_state: Obj = field(default_factory=dict)
    ready: bool = False
    started: bool = False
    container_id: str = ""
    ran: bool = False  # has ever started (for the pod phase)
    done: bool = False  # terminated and will not be restarted

    def to_status(self) -> Obj:
        status: Obj = {
            "name": self.name,
            "image": self.image,
            "imageID": f"{self.image.split(':')[0]}@sha256:{uuid.uuid5(uuid.NAMESPACE_URL, self.image).hex}",
            "ready": self.ready,
            "started": self.started,
            "restartCount": self.restart_count,
            "state": self.state,
            "lastState": self.last_state,
        }
        if self.container_id:
            status["containerID"] = self.container_id
        return status


class Container:
    """Runs one container of a pod as a local process, restarting it per the pod's restartPolicy."""

    def __init__(self, pod: PodWorker, spec: Obj) -> None:
        self.pod = pod
        self.spec = spec
        self.name: str = spec["name"]
        self.status = ContainerState(name=self.name, image=spec.get("image", ""))
        self.proc: asyncio.subprocess.Process | None = None
        self.stopping = False
        self._stop = asyncio.Event()
        self.log_path = pod.log_dir / f"{self.name}.log"

    def changed(self) -> None:
        self.pod.status_changed()

    async def _wait_or_stop(self, seconds: float) -> bool:
        """Sleep, unless asked to stop first (then return True)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)
        return self._stop.is_set()

    def _set_waiting(self, reason: str, message: str = "") -> None:
        waiting: Obj = {"reason": reason}
        if message:
            waiting["message"] = message
        self.status.state = {"waiting": waiting}
        self.status.ready = self.status.started = False
        self.changed()

    async def run(self) -> None:
        try:
            await self._run()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a harness bug must show up on the pod, not vanish in a task
            log.exception("pod %s/%s container %s failed", self.pod.namespace, self.pod.name, self.name)
            self._set_waiting("CreateContainerError", f"node agent error: {exc!r}")

    async def _run(self) -> None:
        backoff = CRASH_BACKOFF_BASE
        restart_policy = self.pod.spec.get("restartPolicy", "Always")
        while not self._stop.is_set():
            image = images.resolve(self.status.image)
            if image is None:
                self._set_waiting(
                    "ErrImagePull",
                    f'failed to pull image "{self.status.image}": not found in the wakegate test image '
                    f"table (known: {', '.join(sorted(images.IMAGES))})",
                )
                if await self._wait_or_stop(1.0):
                    break
                self._set_waiting("ImagePullBackOff", f'Back-off pulling image "{self.status.image}"')
                if await self._wait_or_stop(backoff):
                    break
                backoff = min(backoff * 2, CRASH_BACKOFF_MAX)
                continue
            try:
                mounts = await self.pod.volumes.mounts(self.spec)
                env = await self.pod.environment(self.spec, image)
            except (ConfigError, VolumeError) as exc:
                if isinstance(exc, VolumeError):
                    self._set_waiting("ContainerCreating", f"MountVolume.SetUp failed: {exc}")
                else:
                    self._set_waiting("CreateContainerConfigError", str(exc))
                if await self._wait_or_stop(backoff):
                    break
                backoff = min(backoff * 2, 5.0)
                continue
            started = time.monotonic()
            code, message, started_at = await self._run_once(image, env, mounts)
            if self._stop.is_set():
                break
            failed = code != 0
            terminated: Obj = {
                "exitCode": code,
                "reason": "Error" if failed else "Completed",
                "startedAt": started_at,
                "finishedAt": now(),
                "containerID": self.status.container_id,
            }
            if message:
                terminated["message"] = message
            if restart_policy == "Never" or (restart_policy == "OnFailure" and not failed):
                self.status.state = {"terminated": terminated}
                self.status.ready = self.status.started = False
                self.status.done = True
                self.changed()
                return
            if time.monotonic() - started > 2 * CRASH_BACKOFF_MAX:
                backoff = CRASH_BACKOFF_BASE
            self.status.last_state = {"terminated": terminated}
            pod_ref = f"{self.pod.name}_{self.pod.namespace}({self.pod.uid})"
            self._set_waiting(
                "CrashLoopBackOff",
                f"back-off {backoff:g}s restarting failed container={self.name} pod={pod_ref}",
            )
            if await self._wait_or_stop(backoff):
                break
            backoff = min(backoff * 2, CRASH_BACKOFF_MAX)
            self.status.restart_count += 1

    async def _run_once(
        self, image: images.Image, env: dict[str, str], mounts: list[Any]
    ) -> tuple[int, str, str]:
        """Start the process, probe it, wait for it to exit; return (exit code, stderr tail, start)."""
        uid, gid = self.pod.identity(self.spec, image) if self.pod.agent.can_drop_privileges else (0, 0)
        groups = self.pod.supplementary_groups() if uid != 0 else []
        drop = ["--reuid", str(uid), "--regid", str(gid)] if uid != 0 else []
        if drop:
            drop += ["--groups", ",".join(map(str, groups))] if groups else ["--clear-groups"]
        command = [expand(str(w), env) for w in self.spec["command"]] if self.spec.get("command") else None
        args = [expand(str(w), env) for w in self.spec["args"]] if self.spec.get("args") is not None else None
        process = ["setpriv", "--pdeathsig", "KILL", *drop, "--", *image.argv(command, args)]
        wrapped = self.pod.volumes.mount_argv(mounts, process, keep=image.files)
        argv = ["nsenter", f"--net=/run/netns/{self.pod.netns}", "--", *wrapped]
        workdir = self.spec.get("workingDir") or "/"
        log_file = open(self.log_path, "ab")  # noqa: SIM115, ASYNC230 - handed to the child, closed below
        try:
            self.proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.PIPE,
                env=env,
                cwd=workdir if os.path.isdir(workdir) else "/",  # noqa: ASYNC240
                start_new_session=True,
            )
        finally:
            log_file.close()
        started_at = now()
        self.status.container_id = f"wakegate://{self.pod.uid[:8]}-{self.name}-{self.proc.pid}"
        self.status.state = {"running": {"startedAt": started_at}}
        self.status.started = True
        self.status.ran = True
        self.status.ready = "readinessProbe" not in self.spec
        self.changed()
        if self._stop.is_set():  # deleted while we were starting it
            self.kill()
        tail = bytearray()
        stderr = self.proc.stderr
        assert stderr is not None
        probe = asyncio.create_task(self._probe_loop()) if "readinessProbe" in self.spec else None
        try:
            with open(self.log_path, "ab") as sink:  # noqa: ASYNC230 - appends to a local file
                while chunk := await stderr.read(65536):
                    sink.write(chunk)
                    sink.flush()
                    tail = (tail + chunk)[-4096:]
            code = await self.proc.wait()
        finally:
            if probe:
                probe.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await probe
        self.status.ready = False
        message = tail.decode(errors="replace").strip()[-2048:]
        return (code if code >= 0 else 128 - code), message, started_at

    async def _probe_loop(self) -> None:
        spec = self.spec["readinessProbe"]
        period = float(spec.get("periodSeconds", 10))
        success_threshold = int(spec.get("successThreshold", 1))
        failure_threshold = int(spec.get("failureThreshold", 3))
        await asyncio.sleep(float(spec.get("initialDelaySeconds", 0)))
        successes = failures = 0
        ever_ready = False
        while True:
            ok = await self.pod.probe(self.spec, spec)
            if ok:
                successes, failures = successes + 1, 0
                if not self.status.ready and (successes >= success_threshold or not ever_ready):
                    self.status.ready = ever_ready = True
                    self.changed()
            else:
                successes, failures = 0, failures + 1
                if self.status.ready and failures >= failure_threshold:
                    self.status.ready = False
                    self.changed()
            await asyncio.sleep(period if ever_ready else FAST_PROBE_INTERVAL)

    async def stop(self, grace: float) -> None:
        """SIGTERM, wait up to ``grace`` seconds, SIGKILL; record the container as terminated."""
        self.stopping = True
        self._stop.set()
        proc = self.proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), grace)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
            rc = await proc.wait()
            code = rc if rc >= 0 else 128 - rc
            self.status.state = {
                "terminated": {
                    "exitCode": code,
                    "reason": "Completed" if code == 0 else "Error",
                    "finishedAt": now(),
                    "containerID": self.status.container_id,
                }
            }
        self.status.ready = self.status.started = False

    def kill(self) -> None:
        self._stop.set()
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)


# --- pods -------------------------------------------------------------------------------------


class PodWorker:
    """Owns one pod bound to one of our nodes: sandbox, containers, status, deletion."""

    def __init__(self, agent: Agent, node: Node, pod: Obj) -> None:
        self.agent = agent
        self.node = node
        self.pod = pod
        meta = pod["metadata"]
        self.uid: str = meta["uid"]
        self.name: str = meta["name"]
        self.namespace: str = meta["namespace"]
        self.spec: Obj = pod["spec"]
        self.netns = pod_netns(agent.network.slot, self.uid)
        self.log_dir = agent.state_dir / "pods" / f"{self.namespace}_{self.name}_{self.uid[:8]}"
        self.volumes = PodVolumes(
            self.log_dir / "volumes", pod, self._fetch, self._service_account_token, self._field_ref
        )
        self.ip: ipaddress.IPv4Address | None = None
        self.start_time = now()
        self.containers = [Container(self, c) for c in self.spec["containers"]]
        self.sandbox_ready = False
        self.terminating = False
        self._dirty = asyncio.Event()
        self._transitions: dict[str, tuple[str, str]] = {}
        self._last_sent: Obj | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._run_task: asyncio.Task[None] | None = None
        self._deleted = False

    @property
    def path(self) -> str:
        return f"/api/v1/namespaces/{self.namespace}/pods/{self.name}"

    def start(self) -> None:
        self._run_task = asyncio.create_task(self._run())
        self._tasks += [asyncio.create_task(self._status_loop()), self._run_task]

    def update(self, pod: Obj) -> None:
        self.pod = pod
        if pod["metadata"].get("deletionTimestamp") and not self.terminating:
            self.terminating = True
            grace = pod["metadata"].get("deletionGracePeriodSeconds")
            if grace is None:
                grace = self.spec.get("terminationGracePeriodSeconds", 30)
            self._tasks.append(asyncio.create_task(self._terminate(float(grace))))

    def status_changed(self) -> None:
        self._dirty.set()

    async def _run(self) -> None:
        if self.terminating or self.pod.get("status", {}).get("phase") in ("Succeeded", "Failed"):
            return
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.ip = self.node.allocate_ip()
        try:
            await self.agent.network.create_sandbox(self.netns, self.ip)
        except RuntimeError as exc:
            log.error("pod %s/%s: sandbox failed: %s", self.namespace, self.name, exc)
            for c in self.containers:
                c._set_waiting("ContainerCreating", f"failed to create pod sandbox: {exc}")
            return
        self.sandbox_ready = True
        self.status_changed()
        if self.terminating:
            return
        await asyncio.gather(*(c.run() for c in self.containers))

    async def _terminate(self, grace: float) -> None:
        log.info("pod %s/%s: terminating (grace %ss)", self.namespace, self.name, grace)
        await asyncio.gather(*(c.stop(grace) for c in self.containers))
        if self._run_task is not None:
            await asyncio.wait({self._run_task}, timeout=10)
        await self._flush_status()
        await self._release()
        body = {"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0}
        body["preconditions"] = {"uid": self.uid}
        try:
            await retrying("delete pod", lambda: self.agent.kube.request("DELETE", self.path, body))
        except ApiError as exc:
            if exc.status not in (404, 409):
                log.warning("pod %s/%s: final delete failed: %s", self.namespace, self.name, exc)
        self.agent.forget(self.uid, finished=True)
        for task in self._tasks:
            if task is not asyncio.current_task():
                task.cancel()

    async def _release(self) -> None:
        if self.ip is not None:  # allocated just before the sandbox is created
            await self.agent.network.remove_sandbox(self.netns)
            self.sandbox_ready = False
            self.node.release_ip(self.ip)
            self.ip = None

    async def kill(self) -> None:
        """The pod object is gone (or the agent stops): kill everything at once."""
        self._deleted = True
        for c in self.containers:
            c.kill()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._release()

    # -- configuration --

    async def _fetch(self, kind: str, name: str) -> Obj | None:
        path = f"/api/v1/namespaces/{self.namespace}/{kind}s/{name}"
        try:
            return await retrying(f"get {kind} {name}", lambda: self.agent.kube.get(path), 20)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise VolumeError(f"{kind} {name!r}: {exc}") from exc

    async def _service_account_token(self, audience: str, expiration_s: int) -> str:
        account = self.spec.get("serviceAccountName") or "default"
        spec: Obj = {
            "expirationSeconds": expiration_s,
            "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": self.name, "uid": self.uid},
        }
        if audience:
            spec["audiences"] = [audience]
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec}
        path = f"/api/v1/namespaces/{self.namespace}/serviceaccounts/{account}/token"
        try:
            answer = await retrying("token request", lambda: self.agent.kube.request("POST", path, body), 20)
        except ApiError as exc:
            raise VolumeError(f"token for ServiceAccount {account}: {exc}") from exc
        return str(answer["status"]["token"])

    def _field_ref(self, path: str) -> str:
        pod = {**self.pod, "status": {**self.pod.get("status", {}), **self._ips()}}
        return EnvResolver(self.agent.kube, pod).field(path)

    def supplementary_groups(self) -> list[int]:
        """The pod's ``fsGroup`` and ``supplementalGroups`` (kubelet adds both to every container)."""
        sc = self.spec.get("securityContext") or {}
        groups = [sc["fsGroup"]] if sc.get("fsGroup") is not None else []
        return [int(g) for g in [*groups, *(sc.get("supplementalGroups") or [])]]

    def identity(self, container: Obj, image: images.Image) -> tuple[int, int]:
        """(uid, gid) to run as: container securityContext, then the pod's, then the image's user."""
        pod_sc = self.spec.get("securityContext") or {}
        sc = container.get("securityContext") or {}
        uid = sc.get("runAsUser", pod_sc.get("runAsUser", image.user))
        gid = sc.get("runAsGroup", pod_sc.get("runAsGroup", image.group if uid == image.user else uid))
        return int(uid), int(gid)

    async def environment(self, container: Obj, image: images.Image) -> dict[str, str]:
        uid, _ = self.identity(container, image)
        if uid == 0 and (container.get("securityContext") or {}).get(
            "runAsNonRoot", (self.spec.get("securityContext") or {}).get("runAsNonRoot")
        ):
            raise ConfigError("container has runAsNonRoot and image will run as root")
        ports = container.get("ports") or []
        base = {
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOSTNAME": self.name,
            "HOME": "/",
            **dict(image.env),
            "POD_IP": str(self.ip),
            **self.agent.api_service_env,
        }
        if ports:
            base["PORT"] = str(ports[0]["containerPort"])
        pod = {**self.pod, "status": {**self.pod.get("status", {}), **self._ips()}}
        return await EnvResolver(self.agent.kube, pod).environment(container, base)

    # -- probes --

    async def probe(self, container: Obj, spec: Obj) -> bool:
        timeout = float(spec.get("timeoutSeconds", 1))
        host = str(self.ip)

        def port_of(value: Any) -> int:
            if isinstance(value, int) or str(value).isdigit():
                return int(value)
            for p in container.get("ports") or []:
                if p.get("name") == value:
                    return int(p["containerPort"])
            raise ValueError(f"unknown port name {value!r}")

        try:
            if "httpGet" in spec:
                http = spec["httpGet"]
                tls = None
                if str(http.get("scheme", "HTTP")).upper() == "HTTPS":
                    tls = ssl.create_default_context()
                    tls.check_hostname, tls.verify_mode = False, ssl.CERT_NONE
                target, port = http.get("host") or host, port_of(http["port"])
                network = self.agent.network
                reader, writer = await network.node_connect(target, port, timeout, tls)
                try:
                    headers = "".join(f"{h['name']}: {h['value']}\r\n" for h in http.get("httpHeaders") or [])
                    writer.write(
                        f"GET {http.get('path', '/')} HTTP/1.1\r\nHost: {target}:{port}\r\n"
                        f"User-Agent: kube-probe/1.37\r\nAccept: */*\r\nConnection: close\r\n{headers}\r\n".encode()
                    )
                    status_line = await asyncio.wait_for(reader.readline(), timeout)
                finally:
                    writer.close()
                parts = status_line.split()
                return len(parts) >= 2 and parts[1].isdigit() and 200 <= int(parts[1]) < 400
            if "tcpSocket" in spec or "grpc" in spec:
                tcp = spec.get("tcpSocket") or spec["grpc"]
                network = self.agent.network
                _, writer = await network.node_connect(tcp.get("host") or host, port_of(tcp["port"]), timeout)
                writer.close()
                return True
            if "exec" in spec:
                proc = await asyncio.create_subprocess_exec(
                    "nsenter",
                    f"--net=/run/netns/{self.netns}",
                    "--",
                    *spec["exec"]["command"],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                try:
                    return await asyncio.wait_for(proc.wait(), timeout) == 0
                except TimeoutError:
                    proc.kill()
                    return False
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError):
            return False
        return True

    # -- status --

    def _ips(self) -> Obj:
        node_ip = str(self.agent.network.node_address)
        out: Obj = {"hostIP": node_ip, "hostIPs": [{"ip": node_ip}]}
        if self.ip is not None and self.sandbox_ready:
            out["podIP"] = str(self.ip)
            out["podIPs"] = [{"ip": str(self.ip)}]
        return out

    def _condition(self, kind: str, ok: bool, reason: str = "", message: str = "") -> Obj:
        value = "True" if ok else "False"
        prev = self._transitions.get(kind)
        if prev is None or prev[0] != value:
            self._transitions[kind] = (value, now())
        cond: Obj = {"type": kind, "status": value, "lastTransitionTime": self._transitions[kind][1]}
        if not ok and reason:
            cond["reason"] = reason
            if message:
                cond["message"] = message
        return cond

    def build_status(self) -> Obj:
        states = [c.status for c in self.containers]
        ready = all(s.ready for s in states)
        not_ready = [s.name for s in states if not s.ready]
        why = f"containers with unready status: [{' '.join(not_ready)}]"
        if all(s.done for s in states):
            phase = "Succeeded" if all(s.state["terminated"]["exitCode"] == 0 for s in states) else "Failed"
        elif any(not s.ran for s in states) or not self.sandbox_ready:
            phase = "Pending"
        else:
            phase = "Running"
        status: Obj = {
            "phase": phase,
            "startTime": self.start_time,
            "conditions": [
                self._condition("PodReadyToStartContainers", self.sandbox_ready),
                self._condition("Initialized", True),
                self._condition("Ready", ready, "ContainersNotReady", why),
                self._condition("ContainersReady", ready, "ContainersNotReady", why),
                self._condition("PodScheduled", True),
            ],
            "containerStatuses": [s.to_status() for s in states],
            **self._ips(),
        }
        if self.spec.get("initContainers"):
            status["initContainerStatuses"] = [
                {
                    "name": c["name"],
                    "image": c.get("image", ""),
                    "imageID": "",
                    "ready": True,
                    "restartCount": 0,
                    "state": {"terminated": {"exitCode": 0, "reason": "Completed"}},
                }
                for c in self.spec["initContainers"]
            ]
        return status

    async def _flush_status(self) -> None:
        if self._deleted:
            return
        self._dirty.clear()
        status = self.build_status()
        if status == self._last_sent:
            return
        try:
            await retrying(
                "patch pod status",
                lambda: self.agent.kube.merge_patch(self.path + "/status", {"status": status}),
            )
            self._last_sent = status
        except ApiError as exc:
            if exc.status == 404:
                self._deleted = True
            else:
                log.warning("pod %s/%s: status patch failed: %s", self.namespace, self.name, exc)

    async def _status_loop(self) -> None:
        self._dirty.set()
        while not self._deleted:
            await self._dirty.wait()
            await self._flush_status()


# --- nodes ------------------------------------------------------------------------------------


@dataclass
class Node:
    name: str
    pod_cidr: ipaddress.IPv4Network
    reserved: set[ipaddress.IPv4Address] = field(default_factory=set)
    used: set[ipaddress.IPv4Address] = field(default_factory=set)
    pods: int = 0

    def allocate_ip(self) -> ipaddress.IPv4Address:
        for ip in self.pod_cidr.hosts():
            if ip not in self.used and ip not in self.reserved:
                self.used.add(ip)
                return ip
        raise RuntimeError(f"node {self.name}: no free pod IP in {self.pod_cidr}")

    def release_ip(self, ip: ipaddress.IPv4Address) -> None:
        self.used.discard(ip)

    @property
    def labels(self) -> dict[str, str]:
        return {
            "kubernetes.io/hostname": self.name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            "beta.kubernetes.io/os": "linux",
            "beta.kubernetes.io/arch": "amd64",
            "wakegate.test/fake-node": "true",
        }

    def manifest(self, address: str) -> Obj:
        conditions = [
            ("Ready", "True", "KubeletReady", "kubelet is posting ready status"),
            ("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory"),
            ("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
            ("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
        ]
        ts = now()
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": self.name, "labels": self.labels},
            "spec": {"podCIDR": str(self.pod_cidr), "podCIDRs": [str(self.pod_cidr)]},
            "status": {
                "capacity": NODE_CAPACITY,
                "allocatable": NODE_CAPACITY,
                "conditions": [
                    {
                        "type": t,
                        "status": s,
                        "reason": r,
                        "message": m,
                        "lastHeartbeatTime": ts,
                        "lastTransitionTime": ts,
                    }
                    for t, s, r, m in conditions
                ],
                "addresses": [
                    {"type": "InternalIP", "address": address},
                    {"type": "Hostname", "address": self.name},
                ],
                "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
                "nodeInfo": {
                    "machineID": uuid.uuid5(uuid.NAMESPACE_DNS, self.name).hex,
                    "systemUUID": str(uuid.uuid5(uuid.NAMESPACE_DNS, self.name)),
                    "bootID": str(uuid.uuid4()),
                    "kernelVersion": os.uname().release,
                    "osImage": "wakegate fake node",
                    "containerRuntimeVersion": "wakegate://0.1.0",
                    "kubeletVersion": KUBELET_VERSION,
                    "kubeProxyVersion": "",
                    "operatingSystem": "linux",
                    "architecture": "amd64",
                },
            },
        }


# --- the agent --------------------------------------------------------------------------------


class Agent:
    def __init__(self, kube: Kube, network: Network, nodes: list[Node], state_dir: Path) -> None:
        self.kube = kube
        self.network = network
        self.nodes = {n.name: n for n in nodes}
        self.state_dir = state_dir
        self.workers: dict[str, PodWorker] = {}
        self.can_drop_privileges = True
        #: KUBERNETES_SERVICE_HOST/_PORT for every container (see :meth:`find_api_server`).
        self.api_service_env: dict[str, str] = {}
        self._next_node = 0
        self._binding: set[str] = set()
        self.finished: set[str] = set()
        self._background: set[asyncio.Task[None]] = set()

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def forget(self, uid: str, finished: bool = False) -> None:
        """Drop a worker; ``finished`` pods are ignored until their DELETED event arrives."""
        worker = self.workers.pop(uid, None)
        if worker is not None:
            worker.node.pods -= 1
        if finished:
            self.finished.add(uid)

    async def check_privilege_drop(self) -> None:
        """Images run as an unprivileged uid; that needs the work tree readable by it."""
        image = images.IMAGES["wakegate.test/echo:1"]
        proc = await asyncio.create_subprocess_exec(
            "setpriv",
            "--reuid",
            str(image.user),
            "--regid",
            str(image.group),
            "--clear-groups",
            "--",
            image.entrypoint[0],
            "-I",
            "-B",
            "-c",
            f"import aiohttp; open({image.entrypoint[3]!r}).close()",
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            cwd="/",
        )
        _, err = await proc.communicate()
        if proc.returncode != 0:
            self.can_drop_privileges = False
            log.warning("images cannot run as uid %s here, running them as root: %s", image.user, err.decode())

    async def register_nodes(self) -> None:
        address = str(self.network.node_address)
        for node in self.nodes.values():
            body = node.manifest(address)
            try:
                await retrying("create node", partial(self.kube.request, "POST", "/api/v1/nodes", body))
            except ApiError as exc:
                if exc.status != 409:
                    raise
            status_path = f"/api/v1/nodes/{node.name}/status"
            await retrying("node status", partial(self.kube.merge_patch, status_path, {"status": body["status"]}))
            log.info("node %s registered (podCIDR %s)", node.name, node.pod_cidr)

    async def heartbeat(self) -> None:
        """Renew each node's Lease every 10 s and its Ready condition every 40 s."""
        beats = 0
        while True:
            for node in self.nodes.values():
                with contextlib.suppress(ApiError, aiohttp.ClientError, OSError, TimeoutError):
                    await self._renew_lease(node)
                    if beats % 4 == 0:
                        ts = now()
                        conditions = node.manifest(str(self.network.node_address))["status"]["conditions"]
                        for c in conditions:
                            c["lastHeartbeatTime"] = ts
                        await self.kube.request(
                            "PATCH",
                            f"/api/v1/nodes/{node.name}/status",
                            {"status": {"conditions": conditions}},
                            content_type="application/strategic-merge-patch+json",
                        )
            beats += 1
            await asyncio.sleep(10)

    async def _renew_lease(self, node: Node) -> None:
        path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{node.name}"
        spec = {"holderIdentity": node.name, "leaseDurationSeconds": 40, "renewTime": now_micro()}
        try:
            await self.kube.merge_patch(path, {"spec": spec})
        except ApiError as exc:
            if exc.status != 404:
                raise
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": node.name, "namespace": "kube-node-lease"},
                "spec": spec,
            }
            await self.kube.request("POST", "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases", body)

    # -- scheduling --

    def _pick_node(self, pod: Obj) -> Node | None:
        selector: dict[str, str] = pod["spec"].get("nodeSelector") or {}
        candidates = [n for n in self.nodes.values() if all(n.labels.get(k) == v for k, v in selector.items())]
        if not candidates:
            return None
        return min(candidates, key=lambda n: n.pods)

    async def bind(self, pod: Obj) -> None:
        meta = pod["metadata"]
        uid = meta["uid"]
        if uid in self._binding:
            return
        self._binding.add(uid)
        try:
            node = self._pick_node(pod)
            ns, name = meta["namespace"], meta["name"]
            if node is None:
                cond = {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": f"0/{len(self.nodes)} nodes are available: node(s) didn't match Pod's node "
                    "affinity/selector.",
                    "lastTransitionTime": now(),
                }
                await retrying(
                    "mark unschedulable",
                    lambda: self.kube.request(
                        "PATCH",
                        f"/api/v1/namespaces/{ns}/pods/{name}/status",
                        {"status": {"conditions": [cond]}},
                        content_type="application/strategic-merge-patch+json",
                    ),
                )
                return
            binding = {
                "apiVersion": "v1",
                "kind": "Binding",
                "metadata": {"name": name, "namespace": ns, "uid": uid},
                "target": {"apiVersion": "v1", "kind": "Node", "name": node.name},
            }
            await retrying(
                "bind", lambda: self.kube.request("POST", f"/api/v1/namespaces/{ns}/pods/{name}/binding", binding)
            )
            log.info("bound %s/%s to %s", ns, name, node.name)
        except ApiError as exc:
            if exc.status not in (404, 409):
                log.warning("binding %s/%s failed: %s", meta["namespace"], meta["name"], exc)
        finally:
            self._binding.discard(uid)

    # -- pod events --

    def handle(self, kind: str, pod: Obj) -> None:
        meta, spec = pod["metadata"], pod["spec"]
        uid = meta["uid"]
        node_name = spec.get("nodeName")
        if kind == "DELETED":
            self.finished.discard(uid)
            worker = self.workers.get(uid)
            if worker is not None:
                self.forget(uid)
                self.spawn(worker.kill())
            return
        if not node_name:
            if not meta.get("deletionTimestamp") and spec.get("schedulerName", "default-scheduler") == (
                "default-scheduler"
            ):
                self.spawn(self.bind(pod))
            return
        node = self.nodes.get(node_name)
        if node is None or uid in self.finished:
            return
        worker = self.workers.get(uid)
        if worker is None:
            if pod.get("status", {}).get("phase") in ("Succeeded", "Failed") and not meta.get("deletionTimestamp"):
                return
            worker = PodWorker(self, node, pod)
            self.workers[uid] = worker
            node.pods += 1
            worker.start()
        worker.update(pod)

    def _handle_logged(self, kind: str, pod: Obj) -> None:
        try:
            self.handle(kind, pod)
        except Exception:
            log.exception("cannot handle %s of pod %s", kind, pod.get("metadata", {}).get("name"))

    async def find_api_server(self) -> None:
        """The API server's endpoint from the ``kubernetes`` Service's Endpoints in ``default``."""
        path = "/api/v1/namespaces/default/endpoints/kubernetes"
        while True:
            try:
                subsets = (await retrying("get the kubernetes endpoints", lambda: self.kube.get(path))).get("subsets")
            except ApiError as exc:
                if exc.status != 404:
                    raise
                subsets = None
            if subsets and subsets[0].get("addresses"):
                host, port = subsets[0]["addresses"][0]["ip"], str(subsets[0]["ports"][0]["port"])
                self.api_service_env = {
                    "KUBERNETES_SERVICE_HOST": host,
                    "KUBERNETES_SERVICE_PORT": port,
                    "KUBERNETES_SERVICE_PORT_HTTPS": port,
                }
                log.info("pods reach the API server at %s:%s", host, port)
                return
            await asyncio.sleep(0.2)

    async def run(self) -> None:
        await self.check_privilege_drop()
        await self.find_api_server()
        await self.register_nodes()
        heartbeat = asyncio.create_task(self.heartbeat())
        try:
            await self.watch_pods()
        finally:
            heartbeat.cancel()

    async def watch_pods(self) -> None:
        """List, then watch from the list's resourceVersion; re-list only on 410 Gone."""
        rv = ""
        while True:
            if not rv:
                listing = await retrying("list pods", lambda: self.kube.get("/api/v1/pods"))
                rv = listing["metadata"]["resourceVersion"]
                seen = set()
                for pod in listing.get("items", []):
                    seen.add(pod["metadata"]["uid"])
                    self._handle_logged("ADDED", pod)
                for uid in set(self.workers) - seen:
                    worker = self.workers[uid]
                    self.forget(uid)
                    self.spawn(worker.kill())
            try:
                async for event in self.kube.watch("/api/v1/pods", rv):
                    kind, obj = event["type"], event["object"]
                    if kind == "ERROR":
                        if obj.get("code") == 410:
                            log.info("watch: resourceVersion %s is gone, re-listing", rv)
                            rv = ""
                            break
                        raise ApiError(int(obj.get("code", 500)), obj)
                    rv = obj["metadata"]["resourceVersion"]
                    if kind != "BOOKMARK":
                        self._handle_logged(kind, obj)
            except ApiError as exc:
                if exc.status == 410:
                    rv = ""
                else:
                    log.warning("watch failed: %s", exc)
                    await asyncio.sleep(0.5)
            except (aiohttp.ClientError, OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
                log.info("watch interrupted (%s), resuming from %s", type(exc).__name__, rv)
                await asyncio.sleep(0.2)

    async def shutdown(self) -> None:
        await asyncio.gather(*(w.kill() for w in list(self.workers.values())), return_exceptions=True)
        await self.kube.close()


def node_cidrs(subnet: ipaddress.IPv4Network, count: int) -> list[ipaddress.IPv4Network]:
    """Pod CIDRs for ``count`` nodes: the whole subnet for one node, else equal power-of-two slices."""
    if count == 1:
        return [subnet]
    bits = max(1, (count - 1).bit_length())
    return list(subnet.subnets(prefixlen_diff=bits))[:count]


async def amain(args: argparse.Namespace) -> None:
    subnet = ipaddress.IPv4Network(args.subnet)
    network = Network(slot=args.slot, node_netns=args.node_netns, subnet=subnet)
    for stale in slot_netns(await asyncio.to_thread(_netns_names), args.slot):
        await asyncio.to_thread(remove_netns, stale)
    nodes = []
    for name, cidr in zip(args.node, node_cidrs(subnet, len(args.node)), strict=True):
        node = Node(name=name, pod_cidr=cidr)
        node.reserved = {network.gateway, network.node_address, subnet.network_address, subnet.broadcast_address}
        nodes.append(node)
    agent = Agent(await Kube.from_kubeconfig(args.kubeconfig), network, nodes, Path(args.state_dir))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    runner = asyncio.create_task(agent.run())
    stopper = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait({runner, stopper}, return_when=asyncio.FIRST_COMPLETED)
    runner.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await runner
    await agent.shutdown()
    if runner in done and runner.exception():
        raise runner.exception()  # type: ignore[misc]


def _netns_names() -> list[str]:
    out = subprocess.run(["ip", "-j", "netns", "list"], capture_output=True, text=True).stdout
    return [str(n["name"]) for n in json.loads(out)] if out.strip() else []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--node", action="append", required=True, help="node name (repeat for more)")
    parser.add_argument("--subnet", required=True, help="the cluster's pod subnet, e.g. 198.18.3.0/24")
    parser.add_argument("--node-netns", required=True, help="the node's network namespace (holds the pod bridge)")
    parser.add_argument("--slot", type=int, required=True)
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    asyncio.run(amain(args))


if __name__ == "__main__":
    main()
