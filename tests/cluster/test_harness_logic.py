"""Unit tests of the harness's pure parts: the policy engine's rules as read back, label selectors,
pod volumes on disk, and how a container's command and args meet its image."""

from __future__ import annotations

import asyncio
import base64
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest

from tests.cluster import images, netpol
from tests.cluster.volumes import PodVolumes, VolumeError

Obj = dict[str, Any]

RULES = """\
*filter
:KUBE-ROUTER-FORWARD - [0:0]
:KUBE-POD-FW-AAAA - [0:0]
:KUBE-POD-FW-BBBB - [0:0]
-A KUBE-ROUTER-FORWARD -d 198.18.0.7/32 -m comment --comment "rule to jump traffic destined to POD name:alpha namespace: wg-alpha to chain KUBE-POD-FW-AAAA" -j KUBE-POD-FW-AAAA
-A KUBE-ROUTER-FORWARD -d 198.18.0.7/32 -m physdev --physdev-is-bridged -m comment --comment "rule to jump traffic destined to POD name:alpha namespace: wg-alpha to chain KUBE-POD-FW-AAAA" -j KUBE-POD-FW-AAAA
-A KUBE-ROUTER-FORWARD -s 198.18.0.7/32 -m comment --comment "rule to jump traffic from POD name:alpha namespace: wg-alpha to chain KUBE-POD-FW-AAAA" -j KUBE-POD-FW-AAAA
-A KUBE-ROUTER-FORWARD -d 198.18.0.9/32 -m comment --comment "rule to jump traffic destined to POD name:client namespace: ingress to chain KUBE-POD-FW-BBBB" -j KUBE-POD-FW-BBBB
-A KUBE-POD-FW-AAAA -d 198.18.0.7/32 -m comment --comment "run through nw policy wakegate-allow-gateway" -j KUBE-NWPLCY-X
-A KUBE-POD-FW-AAAA -m comment --comment "run through nw policy wakegate-default-deny" -j KUBE-NWPLCY-Y
-A KUBE-POD-FW-AAAA -s 198.18.0.7/32 -m comment --comment "run through nw policy wakegate-allow-dns" -j KUBE-NWPLCY-Z
-A KUBE-POD-FW-BBBB -d 198.18.0.9/32 -m comment --comment "run through default ingress network policy  chain" -j KUBE-NWPLCY-DEFAULT
COMMIT
"""  # noqa: E501 - iptables-save lines as kube-router writes them


def pod(name: str, ns: str, ip: str | None, **labels: str) -> Obj:
    return {"metadata": {"name": name, "namespace": ns, "labels": labels},
            "status": {"podIP": ip} if ip else {}}


def policy(name: str, ns: str, selector: Obj) -> Obj:
    return {"metadata": {"name": name, "namespace": ns}, "spec": {"podSelector": selector}}


def test_applied_policies_are_read_per_pod_chain() -> None:
    assert netpol.applied_policies(RULES) == {
        "198.18.0.7": {"wakegate-allow-gateway", "wakegate-default-deny", "wakegate-allow-dns"},
        "198.18.0.9": set(),
    }


def test_expected_policies_follow_namespaces_and_selectors() -> None:
    pods = [pod("alpha", "wg-alpha", "198.18.0.7", app="alpha"), pod("client", "ingress", "198.18.0.9"),
            pod("booting", "wg-alpha", None)]
    policies = [policy("wakegate-default-deny", "wg-alpha", {}),
                policy("wakegate-allow-gateway", "wg-alpha", {"matchLabels": {"app": "alpha"}}),
                policy("other-app", "wg-alpha", {"matchLabels": {"app": "beta"}}),
                policy("elsewhere", "ingress-other", {})]
    assert netpol.expected_policies(pods, policies) == {
        "198.18.0.7": {"wakegate-default-deny", "wakegate-allow-gateway"},
        "198.18.0.9": set(),
    }


@pytest.mark.parametrize(("selector", "labels", "match"), [
    ({}, {}, True),
    ({"matchLabels": {"a": "1"}}, {"a": "1", "b": "2"}, True),
    ({"matchLabels": {"a": "1"}}, {"a": "2"}, False),
    ({"matchExpressions": [{"key": "a", "operator": "In", "values": ["1", "2"]}]}, {"a": "2"}, True),
    ({"matchExpressions": [{"key": "a", "operator": "In", "values": ["1"]}]}, {}, False),
    ({"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["1"]}]}, {}, True),
    ({"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["1"]}]}, {"a": "1"}, False),
    ({"matchExpressions": [{"key": "a", "operator": "Exists"}]}, {"a": ""}, True),
    ({"matchExpressions": [{"key": "a", "operator": "DoesNotExist"}]}, {"a": ""}, False),
])
def test_label_selectors(selector: Obj, labels: dict[str, str], match: bool) -> None:
    assert netpol.selects(selector, labels) is match


def test_mismatches_name_missing_chains_and_differences() -> None:
    expected = {"1.1.1.1": {"a"}, "2.2.2.2": set(), "3.3.3.3": {"b"}}
    applied = {"1.1.1.1": {"a"}, "3.3.3.3": set()}
    problems = netpol.mismatches(expected, applied)
    assert [str(p) for p in problems] == ["2.2.2.2: want [], engine has no chain", "3.3.3.3: want ['b'], engine has []"]
    assert netpol.mismatches(applied, applied) == []


# --- volumes ---------------------------------------------------------------------------------------


def make_volumes(tmp_path: Path, volumes: list[Obj], objects: dict[tuple[str, str], Obj],
                 fs_group: int | None = 2000) -> PodVolumes:
    spec: Obj = {"volumes": volumes, "securityContext": {} if fs_group is None else {"fsGroup": fs_group}}
    pod_obj = {"metadata": {"name": "p", "namespace": "n"}, "spec": spec}

    async def fetch(kind: str, name: str) -> Obj | None:
        return objects.get((kind, name))

    async def token(audience: str, expiration_s: int) -> str:
        return f"token-for-{audience or 'api'}-{expiration_s}"

    return PodVolumes(tmp_path / "vols", pod_obj, fetch, token, lambda path: {"metadata.namespace": "n"}[path])


def secret(**data: str) -> Obj:
    return {"data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}}


def test_secret_volume_files_modes_and_fs_group(tmp_path: Path) -> None:
    vols = make_volumes(tmp_path, [{"name": "s", "secret": {"secretName": "tok", "defaultMode": 0o440}}],
                        {("secret", "tok"): secret(token="abc", other="x")})
    mounts = asyncio.run(vols.mounts({"volumeMounts": [{"name": "s", "mountPath": "/etc/x", "readOnly": True}]}))
    assert [(m.target, m.read_only) for m in mounts] == [("/etc/x", True)]
    token = mounts[0].source / "token"
    assert token.read_text() == "abc"
    st = token.stat()
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o440, 0, 2000)


def test_projected_service_account_volume(tmp_path: Path) -> None:
    projected = {"name": "kube-api-access", "projected": {"sources": [
        {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}},
        {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
        {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}]}},
    ]}}
    vols = make_volumes(tmp_path, [projected], {("configmap", "kube-root-ca.crt"): {"data": {"ca.crt": "PEM"}}},
                        fs_group=None)
    directory = asyncio.run(vols.prepare("kube-api-access"))
    assert directory is not None
    files = {p.name: p.read_text() for p in directory.iterdir()}
    assert files == {"token": "token-for-api-3607", "ca.crt": "PEM", "namespace": "n"}
    assert stat.S_IMODE((directory / "token").stat().st_mode) == 0o644


def test_missing_objects_and_keys(tmp_path: Path) -> None:
    vols = make_volumes(tmp_path, [
        {"name": "gone", "secret": {"secretName": "nope"}},
        {"name": "optional", "configMap": {"name": "nope", "optional": True}},
        {"name": "key", "configMap": {"name": "cm", "items": [{"key": "absent", "path": "x"}]}},
    ], {("configmap", "cm"): {"data": {"present": "1"}}})
    with pytest.raises(VolumeError, match='Secret "nope" not found'):
        asyncio.run(vols.prepare("gone"))
    optional = asyncio.run(vols.prepare("optional"))
    assert optional is not None and list(optional.iterdir()) == []
    with pytest.raises(VolumeError, match="no key 'absent'"):
        asyncio.run(vols.prepare("key"))


def test_unsupported_volumes_are_left_out_and_mounts_go_shallowest_first(tmp_path: Path) -> None:
    vols = make_volumes(tmp_path, [{"name": "data", "persistentVolumeClaim": {"claimName": "c"}},
                                   {"name": "tmp", "emptyDir": {}}, {"name": "deep", "emptyDir": {}}], {})
    mounts = asyncio.run(vols.mounts({"volumeMounts": [
        {"name": "deep", "mountPath": "/tmp/a/b"}, {"name": "data", "mountPath": "/data"},
        {"name": "tmp", "mountPath": "/tmp"}]}))
    assert [m.target for m in mounts] == ["/tmp", "/tmp/a/b"]
    assert stat.S_IMODE(mounts[0].source.stat().st_mode) == 0o777
    argv = vols.mount_argv(mounts, ["app", "--flag"])
    assert argv[:5] == ["unshare", "--mount", "--propagation", "private", "--"]
    assert argv[-3:] == ["--", "app", "--flag"]
    assert vols.mount_argv([], ["app"]) == ["app"]


# --- images ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("command", "args", "argv"), [
    (None, None, ["wakegate", "serve", "--backend=kubernetes"]),
    (None, ["controller"], ["wakegate", "controller"]),
    (None, [], ["wakegate"]),
    (["sh", "-c"], ["echo hi"], ["sh", "-c", "echo hi"]),
    (["true"], None, ["true"]),
])
def test_command_replaces_the_entrypoint_and_args_the_cmd(command: list[str] | None, args: list[str] | None,
                                                          argv: list[str]) -> None:
    image = images.Image(entrypoint=("wakegate",), cmd=("serve", "--backend=kubernetes"))
    assert image.argv(command, args) == argv


def test_the_gateway_image_is_the_dockerfiles() -> None:
    dockerfile = (Path(__file__).resolve().parents[2] / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["wakegate"]' in dockerfile and 'CMD ["serve", "--backend=kubernetes"]' in dockerfile
    assert "USER 65532:65532" in dockerfile
    gateway = images.IMAGES["wakegate.test/wakegate:1"]
    assert Path(gateway.entrypoint[0]).name == "wakegate" and gateway.cmd == ("serve", "--backend=kubernetes")
    assert (gateway.user, gateway.group) == (65532, 65532)


def test_volumes_mount_privately_and_leave_the_images_files_visible(tmp_path: Path) -> None:
    """A real mount namespace: an emptyDir at /tmp hides the host's /tmp (where the image's files and
    the volume sources may live) for the container only; the image's files are bound back."""
    image_files = Path(tempfile.mkdtemp(prefix="wakegate-image-", dir="/tmp"))
    try:
        (image_files / "app").write_text("the image's file")
        vols = make_volumes(Path(tempfile.mkdtemp(prefix="wakegate-vols-", dir="/tmp")),
                            [{"name": "tmp", "emptyDir": {}},
                             {"name": "s", "secret": {"secretName": "tok"}}],
                            {("secret", "tok"): secret(token="abc")})
        mounts = asyncio.run(vols.mounts({"volumeMounts": [
            {"name": "tmp", "mountPath": "/tmp"},
            {"name": "s", "mountPath": "/var/run/wakegate-test/token-dir", "readOnly": True}]}))
        script = ("cat /var/run/wakegate-test/token-dir/token; echo; cat " + str(image_files / "app") + "; echo; "
                  "ls /tmp; touch /var/run/wakegate-test/token-dir/x 2>/dev/null && echo writable || echo read-only")
        argv = vols.mount_argv(mounts, ["sh", "-c", script], keep=(str(image_files),))
        out = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        token, app, listing, access = out.stdout.split("\n", 3)
        assert (token, app, access.strip()) == ("abc", "the image's file", "read-only")
        assert listing == image_files.name  # /tmp is the pod's: only the image's directory is bound back
        assert not Path("/var/run/wakegate-test").exists(), "the host's file system is unchanged"
    finally:
        shutil.rmtree(image_files, ignore_errors=True)
        shutil.rmtree(vols.root.parent, ignore_errors=True)
