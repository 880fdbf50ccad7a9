"""Rendering the install two ways, for tests: the Helm chart (``charts/wakegate``, with the helm that
``tests/cluster/build.sh`` builds) and ``manifests/`` (kustomize, with the cluster's kubectl).

:func:`helm` runs the pinned helm (built from ``tests/cluster/helmbuild/go.mod`` into
``${WAKEGATE_K8S_CACHE:-~/.cache/wakegate}/helm-<version>/``, once) with its config, cache and data
directories in a private temporary directory, so nothing a developer configured (repositories,
plugins, a kubeconfig) changes what it renders. :func:`kustomize_install` writes the kustomization an
operator writes (the base, the settings, a list of components) and renders it.
"""

from __future__ import annotations

import ast
import atexit
import os
import shutil
import subprocess
import tempfile
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from tests.cluster.controlplane import REPO, bin_dir

HERE = Path(__file__).resolve().parent
BUILD_SCRIPT = HERE / "build.sh"
HELM_GO_MOD = HERE / "helmbuild" / "go.mod"
CHART = REPO / "charts" / "wakegate"
MANIFESTS = REPO / "manifests"
# The optional kustomize components; components/settings is in every install.
COMPONENTS = ("aks", "monitoring", "gateway-api", "ingress-namespace")
# manifests/base/settings.yaml's default of the ingressNamespace setting (components/ingress-namespace).
DEFAULT_INGRESS_NAMESPACE = "ingress-nginx"
SYSTEM_KUBECTL = Path("/usr/bin/kubectl")

Obj = dict[str, Any]


def helm_version() -> str:
    """The Helm release pinned in helmbuild/go.mod (``v4.3.2``)."""
    for line in HELM_GO_MOD.read_text().splitlines():
        parts = line.split()
        if parts[:1] == ["require"]:
            parts = parts[1:]
        if len(parts) >= 2 and parts[0] == "helm.sh/helm/v4" and parts[1].startswith("v"):
            return parts[1]
    raise RuntimeError(f"no helm.sh/helm/v4 requirement in {HELM_GO_MOD}")


def helm_path() -> Path:
    root = Path(os.environ.get("WAKEGATE_K8S_CACHE") or Path.home() / ".cache" / "wakegate")
    return root / f"helm-{helm_version()}" / "helm"


@cache
def ensure_helm() -> Path:
    """The pinned helm, built first unless cached (`make cluster-build` builds it with the rest)."""
    path = helm_path()
    if not path.exists():
        subprocess.run(["bash", str(BUILD_SCRIPT), "helm"], check=True)
    assert path.exists(), f"{BUILD_SCRIPT} helm did not produce {path}"
    return path


@cache
def _helm_home() -> Path:
    home = Path(tempfile.mkdtemp(prefix="wakegate-helm-"))
    atexit.register(shutil.rmtree, home, ignore_errors=True)
    return home


def helm_env(kubeconfig: Path | None = None) -> dict[str, str]:
    home = _helm_home()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HELM_")}
    env.update(HELM_CONFIG_HOME=str(home / "config"), HELM_CACHE_HOME=str(home / "cache"),
               HELM_DATA_HOME=str(home / "data"), KUBECONFIG=str(kubeconfig or os.devnull))
    return env


def helm(*args: str, kubeconfig: Path | None = None, check: bool = True,
         timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    """``helm ARGS`` (the pinned build, private Helm directories, no kubeconfig unless given)."""
    proc = subprocess.run([str(ensure_helm()), *args], capture_output=True, text=True, timeout=timeout,
                          env=helm_env(kubeconfig))
    if check and proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}{proc.stdout}")
    return proc


def parse(text: str) -> list[Obj]:
    return [d for d in yaml.safe_load_all(text) if d]


def helm_template(values: Mapping[str, Any], namespace: str = "wakegate-system",
                  release: str = "wakegate") -> list[Obj]:
    """``helm template`` of the chart with ``values`` (written to a values file)."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix="wakegate-values-") as f:
        yaml.safe_dump(dict(values), f)
        f.flush()
        out = helm("template", release, str(CHART), "--namespace", namespace, "--values", f.name)
    return parse(out.stdout)


def kubectl_path() -> Path:
    """The kubectl built with the test cluster (kustomize built in), else the system one."""
    own = bin_dir() / "kubectl"
    if own.exists():
        return own
    assert SYSTEM_KUBECTL.exists(), "kubectl is needed to render manifests/: run `make cluster-build`"
    return SYSTEM_KUBECTL


def kustomize(directory: Path) -> list[Obj]:
    out = subprocess.run([str(kubectl_path()), "kustomize", str(directory)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    return parse(out.stdout)


def install_kustomization(settings: Mapping[str, str], components: Iterable[str],
                          where: Path) -> dict[str, Any]:
    """The kustomization an operator writes in ``where``: manifests/base, the settings (merged into the
    ``wakegate-settings`` ConfigMap), components/settings and ``components``, in the order given."""
    rel = Path(os.path.relpath(MANIFESTS, where))  # kustomize refuses absolute paths
    names = list(components)
    return {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [str(rel / "base")],
        "configMapGenerator": [{
            "name": "wakegate-settings",
            "namespace": "wakegate-system",
            "behavior": "merge",
            "literals": [f"{k}={v}" for k, v in settings.items()],
        }],
        "components": [str(rel / "components" / c) for c in names],
    }


def kustomize_install(settings: Mapping[str, str], components: Sequence[str]) -> list[Obj]:
    """Render an install with these settings and ``components`` (``settings`` is added if absent)."""
    names = list(components) if "settings" in components else ["settings", *components]
    with tempfile.TemporaryDirectory(prefix="wakegate-install-") as tmp:
        where = Path(tmp)
        doc = install_kustomization(settings, names, where)
        (where / "kustomization.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
        return kustomize(where)


def helm_values_for(settings: Mapping[str, str], components: Iterable[str]) -> dict[str, Any]:
    """The chart values that make the objects of the kustomize install with ``settings`` and
    ``components``: the same settings, the chart's equivalent of each component, and the two things
    manifests/ does differently from the chart's defaults (it renders the Namespace, and expects the
    admin token Secret to be created by hand)."""
    values: dict[str, Any] = {
        "domain": settings["domain"],
        "trustedProxies": [p for p in settings["trustedProxies"].split(",") if p],
        "namespace": {"create": True},
        "adminToken": {"existingSecret": "wakegate-admin-token"},
    }
    chosen = set(components)
    if "aks" in chosen:
        values["ingress"] = {"className": "webapprouting.kubernetes.azure.com"}
        values["nodeSelector"] = {"kubernetes.io/os": "linux"}
    if "monitoring" in chosen:
        values["monitoring"] = {"enabled": True}
    if "gateway-api" in chosen:
        values["gatewayAPI"] = {"enabled": True}
    if "ingress-namespace" in chosen:
        # Without the setting, kustomize's default (manifests/base/settings.yaml).
        namespace = settings.get("ingressNamespace", DEFAULT_INGRESS_NAMESPACE)
        values["networkPolicy"] = {"publicNamespaceLabels": {"kubernetes.io/metadata.name": namespace}}
    return values


def package_version() -> str:
    """The wakegate version: pyproject's ``[project] version``, or, when it is dynamic, the
    attribute ``[tool.setuptools.dynamic] version = {attr = ...}`` names (read from the source)."""
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    project = pyproject["project"]
    if "version" in project:
        return str(project["version"])
    assert "version" in project.get("dynamic", []), "pyproject.toml: [project] has no version, static or dynamic"
    spec = pyproject["tool"]["setuptools"]["dynamic"]["version"]
    assert "attr" in spec, f"pyproject.toml: unsupported dynamic version {spec}"
    module, _, attr = str(spec["attr"]).rpartition(".")
    base = REPO / Path(*module.split("."))
    source = base / "__init__.py" if base.is_dir() else base.with_suffix(".py")
    for node in ast.parse(source.read_text()).body:
        if isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == attr for t in targets) and node.value is not None:
                value = ast.literal_eval(node.value)
                return str(value)
    raise AssertionError(f"{source}: no {attr} = '...' assignment")
