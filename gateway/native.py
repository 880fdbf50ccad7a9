"""The data path compiled to C with mypyc, and the check that what runs matches its source.

``python -m gateway.native build`` compiles :data:`NATIVE_MODULES` in place: a C extension next to
each source file, one shared library ``gateway/_native__mypyc.*.so`` for the group, and a manifest
(``gateway/_native.json``) with the SHA-256 of each source compiled. The same typed source runs
about a fifth faster per proxied request. Without the extensions everything runs as plain Python,
unchanged.

Python imports an extension before the ``.py`` of the same name, so a source edited after compiling
would silently not run: :func:`stale` names such modules, ``wakegate serve`` refuses to start with
them, and ``build --if-needed`` recompiles them.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib
import importlib.machinery
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

# The modules every proxied request runs through (profiled: these hold most of the gateway's own
# Python time per request). Compiled classes cannot be subclassed by interpreted ones, so a module
# whose classes are meant to be extended (gateway.lifecycle: tests observe it by subclassing) stays
# plain Python.
NATIVE_MODULES = (
    "gateway.headers",
    "gateway.forward.client",
    "gateway.forward.memo",
    "gateway.forward.upstream",
    "gateway.server",
    "gateway.metrics",
)
GROUP = "gateway._native"  # the shared library: gateway/_native__mypyc.<suffix>
MANIFEST = "_native.json"
# Packages the compiled modules' imports reach, copied beside the package for the type check.
_ALSO_COPIED = ("provisioner",)
# The type check mypyc runs before compiling (the lint's settings in pyproject.toml are stricter):
# libraries without type information are taken as Any.
_MYPY_INI = """[mypy]
python_version = 3.11

[mypy-kubernetes_asyncio.*,httptools.*,uvloop.*,prometheus_client.*]
ignore_missing_imports = True
"""
PACKAGE_DIR = Path(__file__).resolve().parent


class NativeError(Exception):
    """Compiling failed, or compiled modules do not match their source."""


def source_path(module: str, package_dir: Path = PACKAGE_DIR) -> Path:
    """The ``.py`` file of ``module`` (a ``gateway.*`` name)."""
    parts = module.split(".")
    if parts[0] != package_dir.name or len(parts) < 2:
        raise ValueError(f"{module!r} is not a module of the {package_dir.name} package")
    return package_dir.joinpath(*parts[1:]).with_suffix(".py")


def _module_of(extension: Path, package_dir: Path) -> str | None:
    """``gateway.x.y`` for ``gateway/x/y.<suffix>``; ``None`` for the group's shared library."""
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        if extension.name.endswith(suffix):
            stem = extension.name[:-len(suffix)]
            if stem.endswith("__mypyc"):
                return None
            rel = extension.with_name(stem).relative_to(package_dir)
            return ".".join((package_dir.name, *rel.parts))
    return None


def _extensions(package_dir: Path) -> list[Path]:
    """Every C extension in the package tree (the package has none but the ones built here)."""
    suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    return sorted(p for p in package_dir.rglob("*") if p.name.endswith(suffixes) and p.is_file())


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _manifest(package_dir: Path) -> dict[str, str]:
    try:
        data = json.loads((package_dir / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}
    sources = data.get("sources") if isinstance(data, dict) else None
    return {str(k): str(v) for k, v in sources.items()} if isinstance(sources, dict) else {}


def compiled(package_dir: Path = PACKAGE_DIR) -> list[str]:
    """The modules of the package that have a compiled extension (whatever built it)."""
    return [m for p in _extensions(package_dir) if (m := _module_of(p, package_dir)) is not None]


def stale(package_dir: Path = PACKAGE_DIR) -> list[str]:
    """Modules with a compiled extension whose source is not the one compiled (edited since,
    no longer in :data:`NATIVE_MODULES`, or compiled without a manifest): importing them would run
    other code than their source."""
    manifest = _manifest(package_dir)
    out = []
    for m in compiled(package_dir):
        src = source_path(m, package_dir)
        if m not in NATIVE_MODULES or not src.exists() or manifest.get(m) != digest(src):
            out.append(m)
    return out


def check() -> None:
    """Raise :class:`NativeError` naming every stale compiled module."""
    if bad := stale():
        raise NativeError(
            f"compiled module(s) {', '.join(bad)} do not match their source (edited, or no longer "
            f"compiled, since `python -m gateway.native build`): run `make native` to compile them again, "
            f"or `python -m gateway.native clean` to run the source as plain Python")


def clean(package_dir: Path = PACKAGE_DIR) -> list[Path]:
    """Remove every compiled extension in the package and the manifest; the paths removed."""
    removed = _extensions(package_dir)
    if (package_dir / MANIFEST).exists():
        removed.append(package_dir / MANIFEST)
    for path in removed:
        path.unlink()
    return removed


def build(package_dir: Path = PACKAGE_DIR, if_needed: bool = False, verbose: bool = False) -> bool:
    """Compile :data:`NATIVE_MODULES` in place with mypyc; False when ``if_needed`` and every module
    is compiled from its current source already. Nothing is left half-built: a failure removes
    what this build wrote."""
    if if_needed and set(compiled(package_dir)) == set(NATIVE_MODULES) and not stale(package_dir):
        return False
    try:
        from mypyc.build import mypycify
        # Untyped in some setuptools releases and typed in others: keep mypy out of it.
        distribution: Any = importlib.import_module("setuptools").Distribution
    except ImportError as exc:
        raise NativeError(f"compiling needs mypy (mypyc) and setuptools: {exc}") from exc
    sources = {m: source_path(m, package_dir) for m in NATIVE_MODULES}
    digests = {m: digest(p) for m, p in sources.items()}
    clean(package_dir)
    try:
        with tempfile.TemporaryDirectory(prefix="wakegate-native-") as tmp:
            # Compiled from a copy: mypy treats the directory holding the package as a source root,
            # which must not be site-packages (an installed copy) and must hold our mypy settings.
            src = Path(tmp) / "src"
            for pkg in (package_dir, *[d for d in (package_dir.parent / name for name in _ALSO_COPIED) if d.is_dir()]):
                shutil.copytree(pkg, src / pkg.name, ignore=shutil.ignore_patterns("__pycache__", "*.so", MANIFEST))
            (src / "mypy.ini").write_text(_MYPY_INI)
            with contextlib.chdir(src), _quiet(not verbose), _environ("MYPY_CACHE_DIR", os.path.join(tmp, "cache")):
                extensions = mypycify([str(p.relative_to(package_dir.parent)) for p in sources.values()],
                                      group_name=GROUP, target_dir=os.path.join(tmp, "c"), opt_level="3")
                dist = distribution({"name": "wakegate-native", "ext_modules": extensions})
                dist.script_args = []
                cmd = dist.get_command_obj("build_ext")
                cmd.inplace = True
                cmd.build_temp = os.path.join(tmp, "temp")
                cmd.build_lib = os.path.join(tmp, "lib")
                dist.run_command("build_ext")
            for ext in _extensions(src / package_dir.name):
                shutil.copy2(ext, package_dir / ext.relative_to(src / package_dir.name))
    except (Exception, SystemExit) as exc:
        clean(package_dir)
        raise NativeError(f"compiling {', '.join(NATIVE_MODULES)} failed: {exc} (it needs a C compiler and "
                          f"the Python headers; without it the gateway runs as plain Python)") from exc
    if missing := sorted(set(NATIVE_MODULES) - set(compiled(package_dir))):
        clean(package_dir)
        raise NativeError(f"compiling produced no extension for {', '.join(missing)}")
    (package_dir / MANIFEST).write_text(json.dumps({"sources": digests}, indent=2) + "\n")
    return True


@contextlib.contextmanager
def _environ(name: str, value: str) -> Iterator[None]:
    """``name=value`` in the environment meanwhile (mypy's cache goes to the build's temp dir, not
    into the tree or site-packages)."""
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


@contextlib.contextmanager
def _quiet(quiet: bool) -> Iterator[None]:
    """Send the compilers' chatter (file descriptors 1 and 2) to a buffer, shown if they fail."""
    if not quiet:
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    with tempfile.TemporaryFile() as log:
        saved = os.dup(1), os.dup(2)
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        except BaseException:
            _restore(saved)
            log.seek(0)
            sys.stderr.write(log.read().decode(errors="replace")[-4000:])
            raise
        else:
            _restore(saved)


def _restore(saved: tuple[int, int]) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(saved[0], 1)
    os.dup2(saved[1], 2)
    os.close(saved[0])
    os.close(saved[1])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.native", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("build", help="compile the data path in place")
    p.add_argument("--if-needed", action="store_true", help="only if a module is missing or stale")
    p.add_argument("--verbose", action="store_true", help="show the compilers' output")
    sub.add_parser("status", help="which modules run compiled")
    sub.add_parser("check", help="fail if a compiled module does not match its source")
    sub.add_parser("clean", help="remove the compiled modules (plain Python from then on)")
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            built = build(if_needed=args.if_needed, verbose=args.verbose)
            print(f"compiled {len(NATIVE_MODULES)} modules with mypyc" if built else
                  "compiled modules are up to date")
        elif args.command == "status":
            done, old = set(compiled()), set(stale())
            for m in [*NATIVE_MODULES, *sorted(done - set(NATIVE_MODULES))]:
                print(f"{m}: {'stale' if m in old else 'compiled' if m in done else 'source'}")
        elif args.command == "check":
            check()
        else:
            for path in clean():
                print(f"removed {path}")
    except NativeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
