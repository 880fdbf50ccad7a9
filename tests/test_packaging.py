"""Packaging: the wheel carries the compiled data path, the Dockerfile builds and installs that wheel,
there is one version, and ``make run`` installs only what the gateway needs.

The image test runs the Dockerfile's build stage itself, step by step, under a temporary root (no
docker here): its COPY steps copy from the checkout, its RUN steps run in bash with their absolute
paths moved under that root. A step it cannot run fails the test, so the two cannot drift apart. The
venv it makes is the one the final stage copies; the tests install nothing else into it and run it from
a directory outside the checkout.
"""

from __future__ import annotations

import ast
import asyncio
import dataclasses
import email
import hashlib
import importlib.machinery
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

import gateway
from gateway import native
from tests.ops_support import GatewayProcess, assert_serves_web, write_projects

ROOT = Path(__file__).resolve().parent.parent
SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]
# Compiling takes 1-2 minutes on 2 cores; pip also fetches the build requirements when not cached.
BUILD_TIMEOUT_S = 900.0
WAIT_S = 60.0
# What a clone holds but a build must not see (caches, venvs, in-place build products).
NOT_COPIED = shutil.ignore_patterns(".git", ".venv", ".cluster", ".mypy_cache", ".ruff_cache", ".pytest_cache",
                                    ".hypothesis", "__pycache__", "*.egg-info", "build", "dist", "results",
                                    f"*{SUFFIX}", native.MANIFEST)
# The Dockerfile's step that installs Debian packages: not run here, the packages must be installed.
SYSTEM_PACKAGES = re.compile(r"apt-get update && apt-get install -y --no-install-recommends ([\w .+-]+?) "
                             r"&& rm -rf /var/lib/apt/lists/\*")
NOT_COMPILED = "wakegate: the data path is NOT compiled"


# --- the Dockerfile, read -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str


@dataclasses.dataclass(frozen=True)
class Dockerfile:
    args: dict[str, str]  # the ARGs declared before the first FROM, with their defaults
    stages: list[tuple[str, list[Instruction]]]  # (the FROM line's arguments, the instructions after it)

    def stage(self, name: str) -> list[Instruction]:
        (found,) = [ins for base, ins in self.stages if base.split()[-1] == name]
        return found


def read_dockerfile(path: Path = ROOT / "Dockerfile") -> Dockerfile:
    """Instructions with their continuation lines joined and comment lines dropped, as docker reads them."""
    logical: list[str] = []
    pending = ""
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("#") or (not line.strip() and not pending):
            continue
        if line.endswith("\\"):
            pending += line[:-1]
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, "the Dockerfile ends in a continuation line"
    args: dict[str, str] = {}
    stages: list[tuple[str, list[Instruction]]] = []
    for text in logical:
        keyword, _, rest = text.strip().partition(" ")
        ins = Instruction(keyword.upper(), rest.strip())
        if ins.keyword == "FROM":
            stages.append((ins.args, []))
        elif not stages:
            assert ins.keyword == "ARG", f"only ARG may precede FROM, not {ins}"
            name, _, default = ins.args.partition("=")
            args[name] = default
        else:
            stages[-1][1].append(ins)
    return Dockerfile(args, stages)


# --- running the build stage ----------------------------------------------------------------------------


def clean_environ(**extra: str) -> dict[str, str]:
    """This environment without the gateway's settings and anything that points Python at this checkout."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("WAKEGATE_", "PYTHON", "PIP_REQUIRE")) and k != "VIRTUAL_ENV"}
    env.update(extra)
    return env


def shims(directory: Path) -> Path:
    """``python`` and ``pip`` on PATH, as in the python:3.11 image: this interpreter."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, command in (("python", [sys.executable]), ("pip", [sys.executable, "-m", "pip"])):
        (directory / name).write_text(f"#!/bin/sh\nexec {shlex.join(command)} \"$@\"\n")
        (directory / name).chmod(0o755)
    return directory


@dataclasses.dataclass(frozen=True)
class BuildStage:
    root: Path  # stands for the image's /
    log: str

    def path(self, absolute: str) -> Path:
        return self.root / absolute.lstrip("/")


def run_build_stage(root: Path) -> BuildStage:
    dockerfile = read_dockerfile()
    rooted = re.compile(r"(?<=[\s=])/(?=\w)")  # an absolute path in a shell command
    env = clean_environ(PATH=f"{shims(root.parent / 'shims')}:{os.environ['PATH']}")
    cwd = root
    log: list[str] = []
    for ins in dockerfile.stage("build"):
        if ins.keyword == "ARG":
            name, has_default, default = ins.args.partition("=")
            env[name] = default if has_default else dockerfile.args[name]
        elif ins.keyword == "WORKDIR":
            cwd = root / ins.args.lstrip("/")
            cwd.mkdir(parents=True, exist_ok=True)
        elif ins.keyword == "COPY":
            *sources, dest = ins.args.split()
            target = root / dest.lstrip("/") if dest.startswith("/") else cwd / dest
            for source in sources:
                assert not source.startswith("--"), f"not run by this test: {ins}"
                if (ROOT / source).is_dir():  # its contents, into dest (.dockerignore: **/__pycache__)
                    shutil.copytree(ROOT / source, target, ignore=shutil.ignore_patterns("__pycache__"),
                                    dirs_exist_ok=True)
                else:
                    assert dest.endswith("/"), f"not run by this test (a file's destination ends in /): {ins}"
                    target.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(ROOT / source, target / Path(source).name)
        elif ins.keyword == "RUN" and (system := SYSTEM_PACKAGES.fullmatch(ins.args)):
            for package in system.group(1).split():
                assert subprocess.run(["dpkg", "-s", package], capture_output=True).returncode == 0, (
                    f"the Dockerfile's build stage installs {package}: `make system-deps` installs it here")
        elif ins.keyword == "RUN":
            command = rooted.sub(str(root) + "/", ins.args)
            log.append(f"$ {command}")
            done = subprocess.run(["bash", "-euo", "pipefail", "-c", command], cwd=cwd, env=env, text=True,
                                  stdin=subprocess.DEVNULL, capture_output=True, timeout=BUILD_TIMEOUT_S)
            log.append(done.stdout + done.stderr)
            assert done.returncode == 0, f"the Dockerfile's step failed: {ins.args}\n" + "\n".join(log)[-6000:]
        else:
            raise AssertionError(f"this test does not know how to run the build stage's {ins}: teach it")
    return BuildStage(root, "\n".join(log))


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BuildStage]:
    """The Dockerfile's build stage, run once for the tests of this module."""
    yield run_build_stage(tmp_path_factory.mktemp("image") / "root")


def only_wheel(directory: Path) -> Path:
    (wheel,) = directory.glob("*.whl")
    return wheel


def copy_checkout(dest: Path) -> Path:
    shutil.copytree(ROOT, dest, ignore=NOT_COPIED)
    return dest


# --- the image ------------------------------------------------------------------------------------------


def test_the_final_stage_runs_the_venv_of_the_build_stage_and_builds_nothing() -> None:
    dockerfile = read_dockerfile()
    assert [base for base, _ in dockerfile.stages] == ["python:3.11-slim AS build", "python:3.11-slim"]
    final = dockerfile.stages[-1][1]
    assert [ins.keyword for ins in final if ins.keyword in ("RUN", "COPY", "ADD")] == ["COPY"]
    assert Instruction("COPY", "--from=build /opt/wakegate /opt/wakegate") in final
    assert Instruction("ENTRYPOINT", '["wakegate"]') in final
    (env,) = [ins.args for ins in final if ins.keyword == "ENV"]
    assert "PATH=/opt/wakegate/bin:$PATH" in env.split()
    (build_run,) = [ins.args for ins in dockerfile.stage("build")
                    if ins.keyword == "RUN" and not SYSTEM_PACKAGES.fullmatch(ins.args)]
    assert "WAKEGATE_BUILD_NATIVE=require pip wheel" in build_run  # no silent plain-Python image
    assert "gateway.native build" not in build_run  # the wheel's build compiles


@pytest.mark.timeout(BUILD_TIMEOUT_S + 300)
def test_the_wheel_carries_the_compiled_data_path(image: BuildStage) -> None:
    wheel = only_wheel(image.path("/wheels"))
    tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
    assert re.fullmatch(rf"wakegate-{re.escape(gateway.__version__)}-{tag}-{tag}-linux_\w+\.whl", wheel.name)
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        for module in native.NATIVE_MODULES:
            source = native.source_path(module, Path("gateway")).as_posix()
            assert source in names and source.removesuffix(".py") + SUFFIX in names, module
        assert f"gateway/_native__mypyc{SUFFIX}" in names
        extensions = sorted(n for n in names if n.endswith(SUFFIX))
        assert len(extensions) == len(native.NATIVE_MODULES) + 1, extensions
        # The manifest `wakegate serve` checks: the digest of each compiled source, as shipped.
        manifest = json.loads(zf.read(f"gateway/{native.MANIFEST}"))["sources"]
        assert manifest == {m: hashlib.sha256(zf.read(native.source_path(m, Path("gateway")).as_posix())).hexdigest()
                            for m in native.NATIVE_MODULES}
        info = f"wakegate-{gateway.__version__}.dist-info"
        metadata = email.message_from_bytes(zf.read(f"{info}/METADATA"))
        assert metadata["Version"] == gateway.__version__
        assert metadata["License-Expression"] == "Apache-2.0"
        assert zf.read(f"{info}/licenses/LICENSE") == (ROOT / "LICENSE").read_bytes()
        assert "Root-Is-Purelib: false" in zf.read(f"{info}/WHEEL").decode()


WHAT_LOADS = """
import importlib, importlib.machinery, json
found = {}
for name in MODULES:
    parent = importlib.import_module(name.rpartition(".")[0])
    spec = importlib.machinery.PathFinder.find_spec(name, parent.__path__)
    found[name] = [spec.origin, type(importlib.import_module(name).__loader__).__name__]
print(json.dumps(found))
"""


def _installed(venv: Path, code: str, cwd: Path) -> str:
    done = subprocess.run([str(venv / "bin" / "python"), "-c", code], cwd=cwd, env=clean_environ(),
                          capture_output=True, text=True, timeout=WAIT_S)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.timeout(BUILD_TIMEOUT_S + 300)
def test_the_image_venv_loads_the_extensions_and_holds_no_mypy(image: BuildStage, tmp_path: Path) -> None:
    venv = image.path("/opt/wakegate")
    site = Path(_installed(venv, "import sysconfig; print(sysconfig.get_paths()['platlib'])", tmp_path).strip())
    # The file the import system picks for each module, and the loader of the module imported (a mypyc
    # group's modules report paths under the group library's directory as their __file__ and origin).
    files = json.loads(_installed(venv, WHAT_LOADS.replace("MODULES", repr(list(native.NATIVE_MODULES))), tmp_path))
    assert files == {m: [str(site / native.source_path(m, Path("gateway")).with_suffix(SUFFIX)),
                         "ExtensionFileLoader"] for m in native.NATIVE_MODULES}
    # The image has no compiler and no mypy: nothing of mypy's may be needed at run time.
    assert _installed(venv, "import importlib.util as u; print([m for m in ('mypy', 'mypyc', 'librt') "
                      "if u.find_spec(m)])", tmp_path).strip() == "[]"
    version = subprocess.run([str(venv / "bin" / "wakegate"), "--version"], cwd=tmp_path, env=clean_environ(),
                             capture_output=True, text=True, timeout=WAIT_S)
    assert version.stdout.strip() == f"wakegate {gateway.__version__}", version


@pytest.mark.timeout(BUILD_TIMEOUT_S + 300)
async def test_the_image_venv_serves_the_compiled_data_path(image: BuildStage, tmp_path: Path) -> None:
    venv = image.path("/opt/wakegate")
    projects = write_projects(tmp_path, {"web": {}})
    proc = await asyncio.create_subprocess_exec(
        str(venv / "bin" / "wakegate"), "serve", "--projects", str(projects), "--domain", "localhost",
        "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--log-format", "json",
        "--reap-interval", "3600", cwd=tmp_path, env=clean_environ(), stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, start_new_session=True)
    gw = GatewayProcess(proc)
    try:
        data_path = await gw.wait_event(lambda e: e.get("event") == "data_path", WAIT_S)
        assert data_path["mode"] == "compiled (mypyc)"
        assert data_path["compiled"] == data_path["modules"] == len(native.NATIVE_MODULES)
        listening = await gw.wait_event(lambda e: e.get("event") == "listening", WAIT_S)
        await assert_serves_web(f"http://127.0.0.1:{listening['port']}", WAIT_S)
    finally:
        await gw.kill()


# --- without the tools: a pure-Python wheel, and a warning that says why --------------------------------


def _pip_wheel(python: Path, source: Path, out: Path, *flags: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(python), "-m", "pip", "wheel", "--no-deps", "--wheel-dir", str(out), *flags,
                           str(source)], env=clean_environ(**env), cwd=source.parent, capture_output=True,
                          text=True, timeout=BUILD_TIMEOUT_S)


@pytest.mark.timeout(BUILD_TIMEOUT_S)
@pytest.mark.parametrize("missing", ["compiler", "mypy", "nothing, but compiling is off"])
def test_without_a_compiler_or_mypy_the_wheel_is_pure_python_and_the_build_says_why(
        tmp_path: Path, missing: str) -> None:
    source = copy_checkout(tmp_path / "checkout")
    if missing == "compiler":
        built = _pip_wheel(Path(sys.executable), source, tmp_path / "out", CC="wakegate-no-such-cc")
        why = "no C compiler (wakegate-no-such-cc not found)"
    elif missing != "mypy":
        built = _pip_wheel(Path(sys.executable), source, tmp_path / "out", WAKEGATE_BUILD_NATIVE="off")
        why = "WAKEGATE_BUILD_NATIVE=off"
    else:
        # The build requirements, less mypy, in a venv of their own, used as they are (with a pip that
        # shows a backend's warnings, as the one `make` installs).
        subprocess.run([sys.executable, "-m", "venv", str(tmp_path / "venv")], check=True, timeout=WAIT_S)
        python = tmp_path / "venv" / "bin" / "python"
        requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
        without_mypy = [r for r in requires if not r.startswith("mypy")]
        subprocess.run([str(python), "-m", "pip", "install", "-q", "--upgrade", "pip", *without_mypy],
                       env=clean_environ(), check=True, timeout=BUILD_TIMEOUT_S)
        built = _pip_wheel(python, source, tmp_path / "out", "--no-build-isolation")
        why = "mypy (mypyc) is not installed in the build environment"
    assert built.returncode == 0, built.stdout + built.stderr
    # Said without -v too: pip shows the warnings of a backend building a directory.
    output = built.stdout + built.stderr
    assert f"{NOT_COMPILED}, this build runs it as plain Python (same behaviour, slower): {why}" in output
    wheel = only_wheel(tmp_path / "out")
    assert wheel.name == f"wakegate-{gateway.__version__}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as zf:
        assert [n for n in zf.namelist() if n.endswith((".so", native.MANIFEST))] == []
        assert "gateway/server.py" in zf.namelist()


@pytest.mark.timeout(BUILD_TIMEOUT_S)
def test_require_turns_the_fallback_into_a_failed_build(tmp_path: Path) -> None:
    source = copy_checkout(tmp_path / "checkout")
    built = _pip_wheel(Path(sys.executable), source, tmp_path / "out", CC="wakegate-no-such-cc",
                       WAKEGATE_BUILD_NATIVE="require")
    assert built.returncode != 0
    assert ("the data path was not compiled (WAKEGATE_BUILD_NATIVE=require): no C compiler "
            "(wakegate-no-such-cc not found)") in built.stdout + built.stderr
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").glob("*.whl"))


# --- one version, the declared build requirements, the license ---------------------------------------------


def _pyproject() -> dict[str, object]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_there_is_one_version() -> None:
    version = gateway.__version__
    assert re.fullmatch(r"\d+\.\d+\.\d+", version)
    # setuptools reads it without importing gateway (and its dependencies): a plain string assignment.
    tree = ast.parse((ROOT / "gateway" / "__init__.py").read_text())
    (assign,) = [n for n in tree.body if isinstance(n, ast.Assign) and ast.unparse(n.targets[0]) == "__version__"]
    assert isinstance(assign.value, ast.Constant) and assign.value.value == version
    project = _pyproject()["project"]
    tool = _pyproject()["tool"]
    assert isinstance(project, Mapping) and isinstance(tool, Mapping)
    assert "version" not in project and "version" in project["dynamic"]
    assert tool["setuptools"]["dynamic"]["version"] == {"attr": "gateway.__version__"}
    assert read_dockerfile().args["VERSION"] == version
    for doc in ("Dockerfile", "README.md"):
        tags = re.findall(r"/wakegate:([\w.-]+)", (ROOT / doc).read_text())
        assert tags and set(tags) == {version}, f"{doc}: image tags {tags}, version {version}"
    assert re.search(rf"^## \[{re.escape(version)}\] - \d{{4}}-\d\d-\d\d$", (ROOT / "CHANGELOG.md").read_text(), re.M)
    assert re.search(r"^## \[Unreleased\]$", (ROOT / "CHANGELOG.md").read_text(), re.M)


def test_the_build_requirements_hold_what_compiling_needs() -> None:
    pyproject = _pyproject()
    build, project = pyproject["build-system"], pyproject["project"]
    assert isinstance(build, Mapping) and isinstance(project, Mapping)
    requires = build["requires"]
    assert "setuptools>=77" in requires  # the SPDX `license` string
    assert any(r.startswith("mypy") for r in requires)
    # mypyc type-checks the data path against the dependencies' types, as `make native` does in .venv.
    missing = [d for d in project["dependencies"] if d not in requires]
    assert missing == [], f"add to [build-system] requires: {missing}"
    assert project["license"] == "Apache-2.0" and project["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License\n                           Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text


# --- make run installs only what the gateway needs --------------------------------------------------------


def _make_dry_run(tmp_path: Path, target: str) -> str:
    for name in ("Makefile", "pyproject.toml", "setup.py"):
        shutil.copy2(ROOT / name, tmp_path / name)
    done = subprocess.run(["make", "-n", "-C", str(tmp_path), target], capture_output=True, text=True,
                          timeout=WAIT_S, env=clean_environ())
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_make_run_installs_the_runtime_and_what_compiles_only(tmp_path: Path) -> None:
    run = _make_dry_run(tmp_path, "run")
    installs = re.findall(r"pip install -q -e '\.\[([\w,]*)\]'", run)
    assert installs == ["native"], run
    assert "wakegate demo" in run
    assert re.findall(r"pip install -q -e '\.\[([\w,]*)\]'", _make_dry_run(tmp_path, "lint")) == [
        "native", "dev,bench,native"]
