"""The image table: which local command a container image runs as on a fake node.

There is no container runtime here: an image name is mapped to an argv run in the pod's network
namespace. Unknown images are reported like kubelet reports an image it cannot pull.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

_ECHO = str(Path(__file__).with_name("echo_app.py"))
#: The uid an image runs as unless the pod's securityContext says otherwise (like distroless'
#: ``nonroot`` user), so pods pass ``runAsNonRoot: true`` without setting ``runAsUser``.
NONROOT = 65532


@dataclass(frozen=True)
class Image:
    """What running a container of this image means: argv, extra env (like an image's ENV), uid."""

    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()
    user: int = NONROOT
    group: int = NONROOT


def _echo(mode: str, image: str) -> Image:
    # -I: ignore PYTHON* variables and the user site, so the app only sees the pod's environment.
    # -B: the app runs as an unprivileged uid and must not try to write bytecode.
    return Image(
        argv=(sys.executable, "-I", "-B", _ECHO, "--mode", mode, "--image", image),
        env=(("LANG", "C.UTF-8"),),  # like the python base images (and no locale coercion)
    )


IMAGES: dict[str, Image] = {
    "wakegate.test/echo:1": _echo("echo", "wakegate.test/echo:1"),
    "wakegate.test/slow:1": _echo("slow", "wakegate.test/slow:1"),
    "wakegate.test/crash:1": _echo("crash", "wakegate.test/crash:1"),
}


def resolve(image: str) -> Image | None:
    """The table entry for an image reference (``docker.io/`` style prefixes are not expanded)."""
    return IMAGES.get(image)
