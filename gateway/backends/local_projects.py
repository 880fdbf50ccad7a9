"""The local backend's projects file: YAML → :class:`LocalProject` entries, strictly validated (pure
apart from reading the file; :mod:`gateway.backends.local` runs the processes).

Projects file format::

    projects:
      hello:                                   # a project name (DNS-1035 label)
        command: ["{python}", "{here}/app.py"] # argv; required, non-empty list of strings
        env: {GREETING: hi}                    # optional extra environment
        ready_path: /healthz                   # optional HTTP probe (2xx/3xx = ready); default: TCP connect
        cwd: .                                 # optional working directory; default: the file's directory
        idle_timeout_s: 300                    # optional per-project overrides of the gateway's settings
        hold_timeout_s: 120
        strategy: auto                         # optional: auto | block | page
        mode: Auto                             # optional: Auto | Running (kept up) | Suspended (never woken)

In ``command`` and ``cwd`` the placeholders ``{python}`` (the gateway's own interpreter) and
``{here}`` (the directory of the projects file) are substituted; ``{{``/``}}`` are literal braces.

Memory: a projects file may name tens of thousands of projects. It is parsed with libyaml when
PyYAML has it, identical commands, environments and settings are shared between projects, and
the names are allocated afresh once the parse's garbage is gone (:func:`_compacted`).

Every error is a :class:`ProjectsFileError` naming the file, the project and the field.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar

import yaml

from gateway.backends.base import ProjectSettings
from gateway.config import ConfigError
from gateway.contract import mode, positive_seconds, strategy
from gateway.routing import is_project_name

PROJECT_KEYS = ("command", "env", "ready_path", "cwd", "idle_timeout_s", "hold_timeout_s", "strategy", "mode")
# libyaml's parser when PyYAML was built with it: several times faster on a large projects file, and
# it leaves far less garbage behind (whose freed memory the allocator would keep).
_YAML_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_NO_ENV: Mapping[str, str] = MappingProxyType({})
_T = TypeVar("_T")


class ProjectsFileError(ConfigError):
    """The projects file is missing or invalid; the message names the file, project and field."""


@dataclass(frozen=True, slots=True)
class LocalProject:
    """One project of the projects file, placeholders already substituted."""

    name: str
    command: tuple[str, ...]
    cwd: Path
    env: Mapping[str, str] = field(default_factory=lambda: _NO_ENV)
    ready_path: str | None = None
    settings: ProjectSettings = field(default_factory=ProjectSettings)


# --- the projects file -------------------------------------------------------------------------


def load_projects_file(path: Path) -> dict[str, LocalProject]:
    """Read and strictly validate a projects file. Raises :class:`ProjectsFileError`."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ProjectsFileError(f"{path}: cannot read the projects file: {exc.strerror or exc}") from None
    try:
        doc = yaml.load(text, Loader=_YAML_LOADER)  # a safe loader (CSafeLoader or SafeLoader)
    except yaml.YAMLError as exc:
        raise ProjectsFileError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None
    del text
    table = parse_projects(doc, path)
    del doc
    return _compacted(table)


def _compacted(table: dict[str, LocalProject]) -> dict[str, LocalProject]:
    """``table`` with its entries and names allocated afresh. The parse's garbage is free now; the
    survivors it left scattered among it (every project's name) would keep most of that memory
    from going back to the system, while new objects fill the gaps of the busiest memory first."""
    out = {}
    for name, proj in table.items():
        own = name.encode().decode()  # a new str object (str(name) would return the same one)
        out[own] = dataclasses.replace(proj, name=own)
    return out


def parse_projects(doc: Any, path: Path) -> dict[str, LocalProject]:
    """Validate a parsed projects document (see the module docstring for the format)."""
    if not isinstance(doc, dict) or "projects" not in doc:
        raise ProjectsFileError(f"{path}: expected a mapping with a 'projects' key")
    extra = sorted(str(k) for k in doc if k != "projects")
    if extra:
        raise ProjectsFileError(f"{path}: unknown top-level key(s) {', '.join(extra)}; only 'projects' is allowed")
    table = doc["projects"]
    if not isinstance(table, dict):
        raise ProjectsFileError(f"{path}: projects: expected a mapping of project name to settings")
    here = path.resolve().parent
    out: dict[str, LocalProject] = {}
    shared: dict[Hashable, Any] = {}
    for name, spec in table.items():
        if not isinstance(name, str) or not is_project_name(name):
            raise ProjectsFileError(
                f"{path}: project {name!r}: invalid project name (lower-case letters, digits and '-', "
                "starting with a letter, at most 63 characters)"
            )
        out[name] = _parse_project(name, spec, path, here, shared.setdefault)
    return out


def _parse_project(name: str, spec: Any, path: Path, here: Path,
                   share: Callable[[Hashable, Any], Any] | None = None) -> LocalProject:
    """One project's entry. ``share(key, value)`` returns the value first given for ``key``, so
    projects with equal commands, environments and settings hold one object each (10,000s of them)."""
    if share is None:
        share = _own

    def fail(key: str, problem: str) -> ProjectsFileError:
        return ProjectsFileError(f"{path}: project {name!r}: {key}: {problem}")

    if not isinstance(spec, dict):
        raise ProjectsFileError(f"{path}: project {name!r}: expected a mapping of settings, got {_kind(spec)}")
    unknown = sorted(str(k) for k in spec if k not in PROJECT_KEYS)
    if unknown:
        raise ProjectsFileError(
            f"{path}: project {name!r}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(PROJECT_KEYS)}"
        )
    if "command" not in spec:
        raise fail("command", "required (a list of strings, e.g. [\"python3\", \"-m\", \"myapp\"])")
    raw_cmd = spec["command"]
    if not isinstance(raw_cmd, list) or not all(isinstance(a, str) for a in raw_cmd):
        raise fail("command", f"expected a list of strings, got {_kind(raw_cmd)}")
    if not raw_cmd or not raw_cmd[0].strip():
        raise fail("command", "must not be empty")
    command = tuple(_substitute(a, here, lambda p: fail("command", p)) for a in raw_cmd)
    command = share(command, command)

    env: Mapping[str, str] = _NO_ENV
    raw_env = spec.get("env")
    if raw_env is not None:
        if not isinstance(raw_env, dict):
            raise fail("env", f"expected a mapping of variable name to value, got {_kind(raw_env)}")
        variables: dict[str, str] = {}
        for key, value in raw_env.items():
            if not isinstance(key, str) or not key or "=" in key or "\0" in key:
                raise fail("env", f"invalid variable name {key!r}")
            if key == "PORT":
                raise fail("env", "PORT is set by the gateway and cannot be overridden")
            if isinstance(value, bool) or not isinstance(value, str | int | float):
                raise fail(f"env.{key}", f"expected a string or number, got {_kind(value)}")
            variables[key] = str(value)
        if variables:
            env = share(frozenset(variables.items()), MappingProxyType(variables))

    ready_path = spec.get("ready_path")
    if ready_path is not None and (
        not isinstance(ready_path, str) or not ready_path.startswith("/") or any(c in ready_path for c in " \r\n\t")
    ):
        raise fail("ready_path", f"expected a URL path starting with '/', got {ready_path!r}")

    cwd = here
    if spec.get("cwd") is not None:
        if not isinstance(spec["cwd"], str) or not spec["cwd"]:
            raise fail("cwd", f"expected a directory path, got {spec['cwd']!r}")
        cwd = here / _substitute(spec["cwd"], here, lambda p: fail("cwd", p))

    overrides: dict[str, Any] = {}
    for key, check in (("idle_timeout_s", positive_seconds), ("hold_timeout_s", positive_seconds),
                       ("strategy", strategy), ("mode", mode)):
        if spec.get(key) is not None:
            try:
                overrides[key] = check(spec[key])
            except ValueError as exc:
                raise fail(key, str(exc)) from None
    settings = ProjectSettings(**overrides)
    return LocalProject(
        name=name,
        command=command,
        cwd=share(cwd, cwd),
        env=env,
        ready_path=ready_path,
        settings=share(settings, settings),
    )


def _own(key: Hashable, value: _T) -> _T:
    return value


def _substitute(text: str, here: Path, fail: Any) -> str:
    try:
        return text.format(python=sys.executable, here=str(here))
    except (KeyError, IndexError, ValueError) as exc:
        raise fail(f"bad placeholder in {text!r} ({exc}); use {{python}}, {{here}}, or {{{{ }}}} for braces") from None


def _kind(value: Any) -> str:
    return "nothing" if value is None else f"{type(value).__name__} {value!r}"[:80]
