"""Pod volumes for the node agent: what kubelet's volume plugins put on disk, and how it is mounted.

Supported: ``emptyDir``, ``secret``, ``configMap``, ``downwardAPI`` and ``projected`` (its
``serviceAccountToken``, ``configMap``, ``secret`` and ``downwardAPI`` sources) — which covers the
``kube-api-access-*`` volume the ServiceAccount admission plugin adds to every pod that mounts its
token. The files are written under the pod's state directory; a container that mounts any of them
runs in a private mount namespace where each is bind-mounted at its ``mountPath`` (a path missing on
this machine is created inside an overlay, so the host's file system never changes). Other volume
types (persistentVolumeClaim, hostPath, ...) are not emulated: their mounts are left out.

Ownership follows kubelet: files are root's, in the pod's ``fsGroup`` (group-readable) when it has
one, with the volume's ``defaultMode`` (or an item's ``mode``); emptyDir directories are 0777.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Obj = dict[str, Any]

#: Fetches an object of the pod's namespace ("secret"/"configmap", name): None when it is missing.
Fetch = Callable[[str, str], Awaitable[Obj | None]]
#: Requests a token for the pod's ServiceAccount (audience or "", expirationSeconds).
TokenRequest = Callable[[str, int], Awaitable[str]]
#: Resolves a downward API fieldRef path of the pod.
FieldRef = Callable[[str], str]

DEFAULT_MODE = 0o644
SUPPORTED = ("emptyDir", "secret", "configMap", "downwardAPI", "projected")

#: Run as root in the container's new mount namespace, then exec's the container's argv:
#: ``sh -c MOUNT_SCRIPT sh ROOT KEEP... -- SRC DST ro|rw KEY ... -- ARGV...``. ROOT (the pod's
#: volume directory; SRC and the overlays' scratch space are relative to it) and each KEEP path (the
#: image's own files: the checkout and the Python environment) are opened first, since a volume
#: (an emptyDir at /tmp, say) may hide their paths: ROOT is used through /proc/self/fd/3, and a KEEP
#: path a mount hid is bound back in place afterwards, as an image's files stay visible in a container.
MOUNT_SCRIPT = r"""set -eu
exec 3< "$1"
root=/proc/self/fd/3
shift
fd=4 keep=""
while [ "$1" != "--" ]; do
  eval "exec $fd< \"\$1\""
  keep="$keep $fd:$1"
  fd=$((fd + 1))
  shift
done
shift
while [ "$1" != "--" ]; do
  src=$root/$1 dst=$2 access=$3 scratch=$root/.overlay/$4
  shift 4
  if [ ! -e "$dst" ]; then
    base=$dst
    while [ ! -d "$base" ]; do base=$(dirname "$base"); done
    mkdir -p "$scratch/upper" "$scratch/work"
    mount -t overlay overlay -o "lowerdir=$base,upperdir=$scratch/upper,workdir=$scratch/work" "$base"
    if [ -d "$src" ]; then mkdir -p "$dst"; else mkdir -p "$(dirname "$dst")" && : > "$dst"; fi
  fi
  mount --no-canonicalize --bind "$src" "$dst"
  if [ "$access" = ro ]; then mount -o remount,bind,ro "$dst"; fi
done
shift
for entry in $keep; do
  fd=${entry%%:*} path=${entry#*:}
  if [ ! -e "$path" ]; then mkdir -p "$path" && mount --no-canonicalize --bind "/proc/self/fd/$fd" "$path"; fi
  eval "exec $fd<&-"
done
exec 3<&-
exec "$@"
"""
#: Redirections in ``sh`` (dash) take one digit: fds 4..9 are free for KEEP paths.
MAX_KEEP = 6


class VolumeError(Exception):
    """A volume cannot be set up yet (a missing Secret or ConfigMap, a refused token)."""


@dataclass(frozen=True)
class Mount:
    source: Path
    target: str
    read_only: bool


def _decoded(kind: str, obj: Obj) -> dict[str, bytes]:
    if kind == "secret":
        return {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}
    out = {k: str(v).encode() for k, v in (obj.get("data") or {}).items()}
    out.update({k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()})
    return out


class PodVolumes:
    """Writes one pod's volumes under ``root`` and answers which mounts a container gets."""

    def __init__(self, root: Path, pod: Obj, fetch: Fetch, token: TokenRequest, field_ref: FieldRef) -> None:
        self.root = root
        self.pod = pod
        self.fetch = fetch
        self.token = token
        self.field_ref = field_ref
        sc = pod["spec"].get("securityContext") or {}
        self.fs_group: int | None = sc.get("fsGroup")
        self.volumes: dict[str, Obj] = {v["name"]: v for v in pod["spec"].get("volumes") or []}
        self._ready: dict[str, Path] = {}

    # -- writing --

    def _write(self, directory: Path, files: dict[str, tuple[bytes, int]]) -> None:
        """Replace ``directory`` with exactly ``files`` (relative path -> (content, mode))."""
        staging = directory.with_name(directory.name + ".tmp")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        group = self.fs_group if self.fs_group is not None else 0
        for rel, (content, mode) in files.items():
            path = staging / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
            if self.fs_group is not None:
                mode |= 0o040  # kubelet makes fsGroup volumes group-readable
            os.chown(path, 0, group)
            path.chmod(mode)
        for sub in [staging, *(p for p in staging.rglob("*") if p.is_dir())]:
            os.chown(sub, 0, group)
            sub.chmod(0o755 if self.fs_group is None else 0o2755)
        shutil.rmtree(directory, ignore_errors=True)
        staging.rename(directory)

    def _items(self, data: dict[str, bytes], items: list[Obj] | None, default_mode: int, what: str,
               optional: bool) -> dict[str, tuple[bytes, int]]:
        if not items:
            return {key: (value, default_mode) for key, value in data.items()}
        out = {}
        for item in items:
            if item["key"] not in data:
                if optional:
                    continue
                raise VolumeError(f"{what}: no key {item['key']!r}")
            out[item["path"]] = (data[item["key"]], int(item.get("mode", default_mode)))
        return out

    async def _object_files(self, kind: str, source: Obj, default_mode: int) -> dict[str, tuple[bytes, int]]:
        name = source.get("secretName") or source.get("name", "")
        optional = bool(source.get("optional"))
        label = "Secret" if kind == "secret" else "ConfigMap"
        obj = await self.fetch(kind, name)
        if obj is None:
            if optional:
                return {}
            raise VolumeError(f'{label} "{name}" not found')
        return self._items(_decoded(kind, obj), source.get("items"), default_mode, f"{label} {name}", optional)

    def _downward_files(self, source: Obj, default_mode: int) -> dict[str, tuple[bytes, int]]:
        out = {}
        for item in source.get("items") or []:
            if "fieldRef" not in item:
                raise VolumeError(f"downwardAPI item {item['path']!r}: only fieldRef is emulated")
            value = self.field_ref(item["fieldRef"]["fieldPath"])
            out[item["path"]] = (value.encode(), int(item.get("mode", default_mode)))
        return out

    async def _files(self, volume: Obj) -> dict[str, tuple[bytes, int]]:
        if "secret" in volume:
            src = volume["secret"]
            return await self._object_files("secret", src, int(src.get("defaultMode", DEFAULT_MODE)))
        if "configMap" in volume:
            src = volume["configMap"]
            return await self._object_files("configmap", src, int(src.get("defaultMode", DEFAULT_MODE)))
        if "downwardAPI" in volume:
            src = volume["downwardAPI"]
            return self._downward_files(src, int(src.get("defaultMode", DEFAULT_MODE)))
        projected = volume["projected"]
        mode = int(projected.get("defaultMode", DEFAULT_MODE))
        files: dict[str, tuple[bytes, int]] = {}
        for source in projected.get("sources") or []:
            if "serviceAccountToken" in source:
                sat = source["serviceAccountToken"]
                token = await self.token(sat.get("audience", ""), int(sat.get("expirationSeconds", 3600)))
                files[sat["path"]] = (token.encode(), mode)
            elif "configMap" in source:
                files.update(await self._object_files("configmap", source["configMap"], mode))
            elif "secret" in source:
                files.update(await self._object_files("secret", source["secret"], mode))
            elif "downwardAPI" in source:
                files.update(self._downward_files(source["downwardAPI"], mode))
        return files

    async def prepare(self, name: str) -> Path | None:
        """The host directory holding volume ``name`` (written once), or None if not emulated."""
        if name in self._ready:
            return self._ready[name]
        volume = self.volumes.get(name)
        if volume is None or not any(kind in volume for kind in SUPPORTED):
            return None
        directory = self.root / name
        if "emptyDir" in volume:
            directory.mkdir(parents=True, exist_ok=True)
            directory.chmod(0o777)
        else:
            self._write(directory, await self._files(volume))
        self._ready[name] = directory
        return directory

    async def mounts(self, container: Obj) -> list[Mount]:
        """The container's emulated mounts, shallowest first (raises VolumeError while one cannot be made)."""
        out = []
        for vm in container.get("volumeMounts") or []:
            directory = await self.prepare(vm["name"])
            if directory is None:
                continue
            source = directory / vm["subPath"] if vm.get("subPath") else directory
            out.append(Mount(source, vm["mountPath"], bool(vm.get("readOnly"))))
        return sorted(out, key=lambda m: m.target.count("/"))

    def mount_argv(self, mounts: list[Mount], argv: list[str], keep: tuple[str, ...] = ()) -> list[str]:
        """``argv`` wrapped to run after the mounts, in a private mount namespace where the ``keep``
        paths (the image's files) stay visible whatever the mounts cover."""
        if not mounts:
            return argv
        assert len(keep) <= MAX_KEEP and not any(c.isspace() or c == ":" for k in keep for c in k), keep
        words: list[str] = [str(self.root), *keep, "--"]
        for m in mounts:
            key = hashlib.sha256(m.target.encode()).hexdigest()[:12]
            words += [str(m.source.relative_to(self.root)), m.target, "ro" if m.read_only else "rw", key]
        return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", MOUNT_SCRIPT, "sh",
                *words, "--", *argv]
