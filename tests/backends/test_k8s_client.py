"""Kubernetes credentials (gateway.backends.k8s.client): which ones are used, and the one-line errors
the gateway and the provisioner both give when there are none."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from gateway.backends.base import BackendError
from gateway.backends.k8s.client import CredentialsError, api_client, kubeconfig_files
from gateway.backends.kubernetes import make_api_client
from gateway.config import Settings
from provisioner.apply import connect
from provisioner.errors import ProvisionError

IN_POD = {"KUBERNETES_SERVICE_HOST": "10.96.0.1"}


def write_kubeconfig(path: Path, server: str = "https://127.0.0.1:6443", context: str = "dev") -> Path:
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": context,
        "clusters": [{"name": "c", "cluster": {"server": server, "insecure-skip-tls-verify": True}}],
        "users": [{"name": "u", "user": {"token": "t0ken"}}],
        "contexts": [{"name": context, "context": {"cluster": "c", "user": "u"}},
                     {"name": "other", "context": {"cluster": "c", "user": "u"}}],
    }))
    return path


def test_an_explicit_kubeconfig_wins_even_in_a_pod(tmp_path: Path) -> None:
    cfg = write_kubeconfig(tmp_path / "cfg")
    assert kubeconfig_files(cfg, None, IN_POD) == (str(cfg), f"--kubeconfig {cfg}")
    assert kubeconfig_files(cfg, None, {}) == (str(cfg), f"--kubeconfig {cfg}")


def test_kubeconfig_variable_then_home_then_in_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    cfg = write_kubeconfig(tmp_path / "cfg")
    env = {"KUBECONFIG": f"{cfg}:{tmp_path / 'second'}"}
    assert kubeconfig_files(None, None, env) == (env["KUBECONFIG"], f"$KUBECONFIG ({env['KUBECONFIG']})")
    assert kubeconfig_files(None, None, {**env, **IN_POD}) == (env["KUBECONFIG"], f"$KUBECONFIG ({env['KUBECONFIG']})")
    # In a pod without a kubeconfig file: its ServiceAccount.
    assert kubeconfig_files(None, None, IN_POD) is None
    # ... unless a context is asked for, which only a kubeconfig has.
    with pytest.raises(CredentialsError, match=r"from ~/\.kube/config: no such file$"):
        kubeconfig_files(None, "dev", IN_POD)
    (tmp_path / ".kube").mkdir()
    home = write_kubeconfig(tmp_path / ".kube" / "config")
    assert kubeconfig_files(None, None, IN_POD) == (str(home), "~/.kube/config")
    assert kubeconfig_files(None, None, {}) == (str(home), "~/.kube/config")


@pytest.mark.parametrize("in_pod", [False, True])
def test_a_missing_kubeconfig_is_named(tmp_path: Path, in_pod: bool) -> None:
    missing = tmp_path / "missing"
    with pytest.raises(CredentialsError) as info:
        kubeconfig_files(missing, None, IN_POD if in_pod else {})
    assert str(info.value) == f"cannot load Kubernetes credentials from --kubeconfig {missing}: no such file"


def test_nothing_found_outside_a_pod_says_where_it_looked(tmp_path: Path) -> None:
    env = {"KUBECONFIG": str(tmp_path / "nope")}
    with pytest.raises(CredentialsError) as info:
        kubeconfig_files(None, None, env)
    assert str(info.value) == (
        f"cannot load Kubernetes credentials from $KUBECONFIG ({tmp_path / 'nope'}): no such file and this is not "
        "a pod (KUBERNETES_SERVICE_HOST is not set); pass --kubeconfig FILE")


async def test_api_client_from_a_kubeconfig_and_a_context(tmp_path: Path) -> None:
    cfg = write_kubeconfig(tmp_path / "cfg", server="https://127.0.0.1:6443")
    api = await api_client(cfg, "other")
    try:
        assert api.configuration.host == "https://127.0.0.1:6443"
        assert api.configuration.api_key["BearerToken"].endswith("t0ken")
    finally:
        await api.close()


async def test_a_broken_kubeconfig_or_context_is_one_line(tmp_path: Path) -> None:
    cfg = write_kubeconfig(tmp_path / "cfg")
    with pytest.raises(CredentialsError) as info:
        await api_client(cfg, "no-such-context")
    message = str(info.value)
    assert message.startswith(f"cannot load Kubernetes credentials from --kubeconfig {cfg}: ")
    assert "no-such-context" in message and "\n" not in message
    broken = tmp_path / "broken"
    broken.write_text("clusters: [\n")
    with pytest.raises(CredentialsError) as info:
        await api_client(broken)
    assert str(info.value).startswith(f"cannot load Kubernetes credentials from --kubeconfig {broken}: ")


async def test_outside_a_pod_in_cluster_credentials_are_refused_by_the_loader(tmp_path: Path) -> None:
    # KUBERNETES_SERVICE_HOST in the mapping only: the in-cluster loader finds no service host.
    with pytest.raises(CredentialsError) as info:
        await api_client(None, None, environ={**IN_POD, "KUBECONFIG": str(tmp_path / "none")})
    assert str(info.value).startswith("cannot load Kubernetes credentials from the in-cluster ServiceAccount: ")


async def test_gateway_and_provisioner_give_the_same_message(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    expected = f"cannot load Kubernetes credentials from --kubeconfig {missing}: no such file"
    with pytest.raises(BackendError) as gateway:
        await make_api_client(Settings(backend="kubernetes", kubeconfig=missing))
    with pytest.raises(ProvisionError) as provisioner:
        await connect(missing)
    # The same cause, worded once; the provisioner's commands add that they need a cluster.
    assert str(gateway.value) == expected
    assert str(provisioner.value) == (f"this command needs a Kubernetes cluster: {expected} "
                                      "(`wakegate project render` needs none)")
    assert provisioner.value.exit_code == 2
