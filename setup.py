"""Build hook: the wheel carries the data path compiled with mypyc.

``pip wheel .`` / ``pip install .`` run :func:`gateway.native.build` on the copy of the package in
the build directory, so the wheel holds a C extension for every module of
``gateway.native.NATIVE_MODULES`` (the list is read from gateway/native.py, loaded on its own: it
needs only the standard library), the group's shared library and the ``_native.json`` manifest that
``wakegate serve`` checks them against. Such a wheel is tagged for this interpreter and platform.

Without mypy or a C compiler (or if compiling fails) the wheel is pure Python and runs the same
code, slower; a warning says why (on stderr, and as a Python warning, which pip shows without ``-v``).
``WAKEGATE_BUILD_NATIVE=require`` turns that into an error (the Dockerfile sets it),
``WAKEGATE_BUILD_NATIVE=off`` skips compiling. Editable installs are never compiled here:
``make native`` compiles the checkout in place. Everything else is in pyproject.toml.
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import shutil
import sys
import sysconfig
import warnings
from pathlib import Path
from types import ModuleType

from setuptools import Distribution, setup
from setuptools.command.bdist_wheel import bdist_wheel
from setuptools.command.build_py import build_py
from setuptools.errors import SetupError

ROOT = Path(__file__).resolve().parent
MODE_VARIABLE = "WAKEGATE_BUILD_NATIVE"
MODES = ("auto", "require", "off")


def load_native() -> ModuleType:
    """gateway/native.py as a module of its own, without importing the gateway package."""
    spec = importlib.util.spec_from_file_location("_wakegate_build_native", ROOT / "gateway" / "native.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def missing_tool() -> str | None:
    """Why compiling cannot start in this build environment, or None."""
    if importlib.util.find_spec("mypyc") is None:
        return "mypy (mypyc) is not installed in the build environment"
    cc = shlex.split(os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc")
    if not cc or shutil.which(cc[0]) is None:
        return f"no C compiler ({cc[0] if cc else 'CC is empty'} not found)"
    if not (Path(sysconfig.get_paths()["include"]) / "Python.h").is_file():
        return f"the Python headers are missing (no Python.h in {sysconfig.get_paths()['include']})"
    return None


class WakegateDistribution(Distribution):
    compiled = False  # set once the data path is compiled into the build directory

    def has_ext_modules(self) -> bool:
        return self.compiled or bool(super().has_ext_modules())


class BuildPy(build_py):
    """Copies the package into the build directory (as usual), then compiles the data path there."""

    def run(self) -> None:
        super().run()
        if not self.editable_mode:
            compile_data_path(self.distribution, Path(self.build_lib) / "gateway")


def compile_data_path(dist: Distribution, package_dir: Path) -> None:
    mode = os.environ.get(MODE_VARIABLE) or "auto"
    if mode not in MODES:
        raise SetupError(f"{MODE_VARIABLE}={mode!r}: expected one of {', '.join(MODES)}")
    native = load_native()
    native.clean(package_dir)  # whatever an earlier build left in the build directory
    why = f"{MODE_VARIABLE}=off" if mode == "off" else missing_tool()
    if why is None:
        try:
            native.build(package_dir)
        except native.NativeError as exc:
            why = str(exc)
        else:
            assert isinstance(dist, WakegateDistribution)
            dist.compiled = True
            print(f"wakegate: compiled the data path with mypyc: {', '.join(native.NATIVE_MODULES)}", file=sys.stderr)
            return
    if mode == "require":
        raise SetupError(f"the data path was not compiled ({MODE_VARIABLE}=require): {why}")
    message = (f"wakegate: the data path is NOT compiled, this build runs it as plain Python "
               f"(same behaviour, slower): {why}")
    print(f"WARNING: {message}", file=sys.stderr)
    warnings.warn(message, stacklevel=1)  # pip shows a backend's warnings when it builds a directory


class BdistWheel(bdist_wheel):
    """Tags the wheel for this interpreter and platform when it carries compiled modules (known only
    after the build), as pure Python otherwise."""

    def run(self) -> None:
        if not self.skip_build:
            self.run_command("build")
        self.root_is_pure = not self.distribution.has_ext_modules()
        super().run()


if __name__ == "__main__":
    setup(distclass=WakegateDistribution, cmdclass={"build_py": BuildPy, "bdist_wheel": BdistWheel})
