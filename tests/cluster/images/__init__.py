"""The image table: which local command a container image runs as on a fake node.

There is no container runtime here: an image name is mapped to an ENTRYPOINT and CMD run in the
pod's network namespace (a container's ``command`` replaces the entrypoint, its ``args`` the CMD, as
in Kubernetes). Unknown images are reported like kubelet reports an image it cannot pull.

``wakegate.test/wakegate:1`` is the gateway's image: the ``wakegate`` command of the environment
running the tests (the package built by ``make``, compiled data path included), with the
Dockerfile's ENTRYPOINT, CMD, user and environment.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

_ECHO = str(Path(__file__).with_name("echo_app.py"))
_REPO = Path(__file__).resolve().parents[3]


def _own_files() -> tuple[str, ...]:
    """What an image here runs from — the checkout and the Python environment — outermost paths only
    (a volume mounted over one of them, e.g. an emptyDir at /tmp, must not hide them)."""
    paths = sorted({str(_REPO), sys.prefix, sys.base_prefix, str(Path(sys.executable).resolve().parent)})
    return tuple(p for p in paths if not any(p != q and p.startswith(q.rstrip("/") + "/") for q in paths))
#: The uid an image runs as unless the pod's securityContext says otherwise (like distroless'
#: ``nonroot`` user), so pods pass ``runAsNonRoot: true`` without setting ``runAsUser``.
NONROOT = 65532


@dataclass(frozen=True)
class Image:
    """What running a container of this image means: ENTRYPOINT, CMD, ENV, USER."""

    entrypoint: tuple[str, ...]
    cmd: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    user: int = NONROOT
    group: int = NONROOT
    #: The image's own files (its "root file system" on this machine).
    files: tuple[str, ...] = ()

    def argv(self, command: list[str] | None, args: list[str] | None) -> list[str]:
        """The process argv for a container's ``command`` and ``args`` (Kubernetes' rules)."""
        if command:
            return [*command, *(args or [])]
        return [*self.entrypoint, *(self.cmd if args is None else args)]


def _echo(mode: str, image: str) -> Image:
    # -I: ignore PYTHON* variables and the user site, so the app only sees the pod's environment.
    # -B: the app runs as an unprivileged uid and must not try to write bytecode.
    return Image(
        entrypoint=(sys.executable, "-I", "-B", _ECHO),
        cmd=("--mode", mode, "--image", image),
        env=(("LANG", "C.UTF-8"),),  # like the python base images (and no locale coercion)
        files=_own_files(),
    )


#: The Dockerfile's ENTRYPOINT ["wakegate"], CMD, ENV and USER 65532:65532.
GATEWAY = Image(
    entrypoint=(str(Path(sys.executable).with_name("wakegate")),),
    cmd=("serve", "--backend=kubernetes"),
    env=(("LANG", "C.UTF-8"), ("PYTHONDONTWRITEBYTECODE", "1"), ("PYTHONUNBUFFERED", "1")),
    files=_own_files(),
)


IMAGES: dict[str, Image] = {
    "wakegate.test/echo:1": _echo("echo", "wakegate.test/echo:1"),
    "wakegate.test/slow:1": _echo("slow", "wakegate.test/slow:1"),
    "wakegate.test/crash:1": _echo("crash", "wakegate.test/crash:1"),
    "wakegate.test/wakegate:1": GATEWAY,
}


def resolve(image: str) -> Image | None:
    """The table entry for an image reference (``docker.io/`` style prefixes are not expanded)."""
    return IMAGES.get(image)
