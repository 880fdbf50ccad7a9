"""The compiled data path (gateway/native.py): stale extensions are found and refused, ``clean``
removes exactly what a build makes, and the same source runs as plain Python without them."""

from __future__ import annotations

import asyncio
import importlib.machinery
import json
import os
import re
import shutil
import sys
from pathlib import Path

import pytest

from gateway import native
from tests.ops_support import GatewayProcess, assert_serves_web, write_projects

SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]
WAIT_S = 60.0


def _package(root: Path, modules: dict[str, str]) -> Path:
    """A package named ``gateway`` under ``root`` with the given modules' sources."""
    pkg = root / "gateway"
    for module, text in modules.items():
        path = native.source_path(module, pkg)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (pkg / "__init__.py").touch()
    return pkg


def _fake_build(pkg: Path, modules: list[str]) -> None:
    """What a build leaves: an extension per module, the group library, the manifest."""
    for module in modules:
        src = native.source_path(module, pkg)
        src.with_name(src.stem + SUFFIX).write_bytes(b"not really an extension")
    (pkg / f"_native__mypyc{SUFFIX}").write_bytes(b"group library")
    digests = {m: native.digest(native.source_path(m, pkg)) for m in modules}
    (pkg / native.MANIFEST).write_text(json.dumps({"sources": digests}))


def test_a_fresh_build_is_not_stale_and_the_group_library_is_no_module(tmp_path: Path) -> None:
    pkg = _package(tmp_path, {"gateway.headers": "A = 1\n", "gateway.forward.client": "B = 2\n"})
    assert native.compiled(pkg) == [] and native.stale(pkg) == []
    _fake_build(pkg, ["gateway.headers", "gateway.forward.client"])
    assert sorted(native.compiled(pkg)) == ["gateway.forward.client", "gateway.headers"]
    assert native.stale(pkg) == []


def test_a_source_edited_after_compiling_is_stale(tmp_path: Path) -> None:
    pkg = _package(tmp_path, {"gateway.headers": "A = 1\n", "gateway.forward.client": "B = 2\n"})
    _fake_build(pkg, ["gateway.headers", "gateway.forward.client"])
    (pkg / "forward" / "client.py").write_text("B = 3\n")
    assert native.stale(pkg) == ["gateway.forward.client"]


def test_without_a_manifest_every_extension_is_stale(tmp_path: Path) -> None:
    pkg = _package(tmp_path, {"gateway.headers": "A = 1\n"})
    _fake_build(pkg, ["gateway.headers"])
    (pkg / native.MANIFEST).unlink()
    assert native.stale(pkg) == ["gateway.headers"]


def test_an_extension_of_a_module_no_longer_compiled_is_stale(tmp_path: Path) -> None:
    # e.g. a module dropped from NATIVE_MODULES: its old extension would still shadow the source.
    pkg = _package(tmp_path, {"gateway.headers": "A = 1\n", "gateway.lifecycle": "C = 1\n"})
    _fake_build(pkg, ["gateway.headers", "gateway.lifecycle"])
    assert "gateway.lifecycle" not in native.NATIVE_MODULES
    assert native.stale(pkg) == ["gateway.lifecycle"]


def test_clean_removes_extensions_and_manifest_and_keeps_sources(tmp_path: Path) -> None:
    pkg = _package(tmp_path, {"gateway.headers": "A = 1\n", "gateway.forward.client": "B = 2\n"})
    _fake_build(pkg, ["gateway.headers", "gateway.forward.client"])
    removed = native.clean(pkg)
    assert len(removed) == 4  # two extensions, the group library, the manifest
    assert sorted(p.name for p in pkg.rglob("*") if p.is_file()) == ["__init__.py", "client.py", "headers.py"]
    assert native.compiled(pkg) == [] and native.stale(pkg) == []


def test_source_path_rejects_modules_of_other_packages() -> None:
    with pytest.raises(ValueError, match=r"provisioner\.render"):
        native.source_path("provisioner.render")
    assert native.source_path("gateway.forward.client") == native.PACKAGE_DIR / "forward" / "client.py"


def test_the_repository_has_no_stale_compiled_module() -> None:
    assert native.stale() == []
    for module in native.compiled():
        assert module in native.NATIVE_MODULES


def _copy_package(dest: Path, with_extensions: bool) -> Path:
    """A copy of the gateway package under ``dest`` (put first on PYTHONPATH to run it)."""
    ignore = None if with_extensions else shutil.ignore_patterns(f"*{SUFFIX}", native.MANIFEST)
    shutil.copytree(native.PACKAGE_DIR, dest / "gateway", ignore=ignore)
    return dest


async def test_serve_refuses_to_start_with_a_stale_extension(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _copy_package(tmp_path / "copy", with_extensions=True)
    monkeypatch.chdir(tmp_path)  # `python -m` puts the working directory before PYTHONPATH
    (root / "gateway" / f"ghost{SUFFIX}").write_bytes(b"an extension without a source")
    projects = write_projects(tmp_path, {"web": {}})
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "serve", "--projects", str(projects), "--listen", "127.0.0.1:0",
        "--admin-listen", "127.0.0.1:0", env={**os.environ, "PYTHONPATH": str(root)},
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    async with asyncio.timeout(WAIT_S):
        _, err = await proc.communicate()
    assert proc.returncode != 0
    assert "gateway.ghost" in err.decode() and "do not match their source" in err.decode()


async def test_the_same_source_proxies_as_plain_python(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _copy_package(tmp_path / "copy", with_extensions=False)
    monkeypatch.chdir(tmp_path)  # `python -m` puts the working directory before PYTHONPATH
    projects = write_projects(tmp_path, {"web": {}})
    gw = await GatewayProcess.start(projects, env={"PYTHONPATH": str(root)})
    try:
        data_path = await gw.wait_event(lambda e: e.get("event") == "data_path", WAIT_S)
        assert data_path["mode"] == "plain Python" and data_path["compiled"] == 0
        await assert_serves_web(gw.url, WAIT_S)
    finally:
        await gw.kill()


# --- the extension check of `wakegate serve` (gateway.service.check_extensions) ---------------------


def test_serve_requires_the_compiled_parts_of_the_data_path_only(monkeypatch: pytest.MonkeyPatch) -> None:
    import aiohttp.helpers

    from gateway.service import DATA_PATH_EXTENSIONS, check_extensions

    assert DATA_PATH_EXTENSIONS == ("httptools.parser.parser", "uvloop.loop")
    check_extensions()
    # aiohttp's C HTTP parser and WebSocket reader are not on the data path: without them (here: not
    # importable, and AIOHTTP_NO_EXTENSIONS in force) the gateway still starts.
    for module in ("aiohttp._http_parser", "aiohttp._http_writer", "aiohttp._websocket.reader_c"):
        monkeypatch.setitem(sys.modules, module, None)
    monkeypatch.setattr(aiohttp.helpers, "NO_EXTENSIONS", True)
    check_extensions()


@pytest.mark.parametrize("module", ["httptools.parser.parser", "uvloop.loop"])
def test_serve_refuses_to_start_without_a_data_path_extension(monkeypatch: pytest.MonkeyPatch, module: str) -> None:
    from gateway.service import StartupError, check_extensions

    monkeypatch.setitem(sys.modules, module, None)  # what an import of a missing module meets
    with pytest.raises(StartupError, match=rf"compiled extensions are missing: {re.escape(module)};"):
        check_extensions()


def test_serve_refuses_a_pure_python_module_in_place_of_an_extension(monkeypatch: pytest.MonkeyPatch) -> None:
    import httptools.parser.protocol

    from gateway.service import StartupError, check_extensions

    monkeypatch.setitem(sys.modules, "httptools.parser.parser", httptools.parser.protocol)
    with pytest.raises(StartupError, match=r"httptools\.parser\.parser \(not a compiled extension: .*protocol\.py\)"):
        check_extensions()
