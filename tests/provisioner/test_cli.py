"""The CLI without a cluster: `render` output, and bad input → one line on stderr, exit 2, no API call."""

from __future__ import annotations

import argparse
import base64
from pathlib import Path

import pytest

from provisioner.cli import add_project_commands, build_parser, main
from provisioner.render import CHECKSUM_KEY_FIELD, CHECKSUM_KEY_SECRET, find, from_yaml, render, to_yaml
from provisioner.spec import ProjectSpec

IMAGE = "wakegate.test/echo:1"
# Any cluster command that got past validation would fail on this file with a different message.
NO_CLUSTER = ["--kubeconfig", "/nonexistent/kubeconfig"]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_render_prints_exactly_what_render_returns(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "render", "demo", "--image", IMAGE)
    assert code == 0 and err == ""
    # The config checksum key is new on each render (create reads the project's back from the cluster).
    key = base64.b64decode(find(from_yaml(out), "Secret", CHECKSUM_KEY_SECRET)["data"][CHECKSUM_KEY_FIELD])
    assert len(key) == 32
    assert out == to_yaml(render(ProjectSpec(name="demo", image=IMAGE), key))
    _, again, _ = run(capsys, "render", "demo", "--image", IMAGE)
    assert again != out


def test_render_options_reach_the_objects(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    env = tmp_path / "app.env"
    env.write_text("LOG_LEVEL=debug\nBASE=${HOME}\n")
    secret = tmp_path / "secret.env"
    secret.write_text("DB_PASSWORD='p w'\n")
    code, out, err = run(
        capsys, "render", "shop", "--image", IMAGE, "--port", "8080", "--env-file", str(env),
        "--secret-env-file", str(secret), "--cpu-request", "100m", "--cpu-limit", "0.5", "--memory-request", "64Mi",
        "--memory-limit", "128Mi", "--quota-pods", "3", "--quota-limits-cpu", "2", "--run-as-user", "1001",
        "--run-as-group", "1002", "--readiness-path", "/healthz", "--idle-timeout", "15m", "--hold-timeout", "30",
        "--strategy", "block", "--gateway-namespace", "edge", "--namespace-prefix", "p-", "--allow-internet",
        "--storage", "2Gi", "--storage-path", "/data", "--storage-class", "fast", "--runtime-class", "kata",
        "--workload-identity-client-id", "12345678-1234-1234-1234-123456789abc")
    assert code == 0, err
    assert "BASE" in err and "literally" in err  # ${HOME} warning, not expanded
    objs = from_yaml(out)
    assert objs[0]["metadata"]["name"] == "p-shop"
    d = find(objs, "Deployment")
    c = d["spec"]["template"]["spec"]["containers"][0]
    assert c["ports"][0]["containerPort"] == 8080
    assert c["resources"]["limits"]["cpu"] == "0.5"
    assert d["metadata"]["annotations"]["wakegate.io/idle-timeout-s"] == "900"
    assert d["metadata"]["annotations"]["wakegate.io/hold-timeout-s"] == "30"
    assert find(objs, "ConfigMap")["data"] == {"BASE": "${HOME}", "LOG_LEVEL": "debug"}
    assert find(objs, "ResourceQuota")["spec"]["hard"]["pods"] == "3"
    assert find(objs, "PersistentVolumeClaim")["spec"]["storageClassName"] == "fast"
    assert "p w" not in err


@pytest.mark.parametrize(("argv", "message"), [
    (["Bad_Name"], "not a DNS-1035 label"),
    (["xn--abc"], "'xn--'"),
    (["default"], "reserved"),
    (["kube-foo"], "reserved"),
    (["x" * 62], "too long with the prefix"),
    (["system", "--namespace-prefix", "wakegate-"], "gateway namespace"),
    (["demo", "--port", "0"], "--port 0 is outside 1-65535"),
    (["demo", "--port", "65536"], "--port 65536 is outside 1-65535"),
    (["demo", "--port", "http"], "--port 'http' is not an integer"),
    (["demo", "--cpu-request", "lots"], "--cpu-request: cannot parse 'lots'"),
    (["demo", "--memory-limit", "1GB"], "--memory-limit: cannot parse '1GB'"),
    (["demo", "--cpu-request", "2", "--cpu-limit", "1"], "cpu request 2 is above its limit 1"),
    (["demo", "--memory-request", "2Gi", "--memory-limit", "1Gi"], "memory request 2Gi is above its limit 1Gi"),
    (["demo", "--quota-limits-cpu", "1"], "--quota-limits-cpu 1 is too small"),
    (["demo", "--quota-pods", "1"], "--quota-pods 1 is outside"),
    (["demo", "--run-as-user", "0"], "--run-as-user 0"),
    (["demo", "--idle-timeout", "soon"], "--idle-timeout: cannot parse 'soon'"),
    (["demo", "--strategy", "maybe"], "--strategy 'maybe'"),
    (["demo", "--storage", "1Gi"], "--storage SIZE and --storage-path PATH go together"),
    (["demo", "--storage-class", "fast"], "go together"),
    (["demo", "--storage", "1Gi", "--storage-path", "/tmp"], "would hide"),
    (["demo", "--readiness-path", "healthz"], "--readiness-path"),
    (["demo", "--workload-identity-client-id", "nope"], "client ID"),
])
@pytest.mark.parametrize("command", ["render", "create"])
def test_bad_input_is_one_line_exit_2(capsys: pytest.CaptureFixture[str], command: str, argv: list[str],
                                      message: str) -> None:
    extra = NO_CLUSTER if command == "create" else []
    code, out, err = run(capsys, command, *argv, "--image", IMAGE, *extra)
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert message in err
    assert "kubeconfig" not in err  # refused before any cluster access


def test_bad_domain(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "create", "demo", "--image", IMAGE, "--domain", "not a domain", *NO_CLUSTER)
    assert (code, out) == (2, "") and "--domain 'not a domain' is not a DNS name" in err


def test_missing_image(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "render", "demo") == (2, "", "error: --image is required\n")


@pytest.mark.parametrize(("content", "message"), [
    ("API_TOKEN=abc\n", "line 1: API_TOKEN looks like a secret"),
    ("A=1\nA=2\n", "line 2: duplicate key A (first set on line 1)"),
    ("KUBERNETES_SERVICE_HOST=x\n", "line 1: key KUBERNETES_SERVICE_HOST is reserved"),
    ("MY_SERVICE_HOST=x\n", "is reserved"),
    ("PATH=/x\n", "key PATH is reserved"),
    ("LD_PRELOAD=/x.so\n", "key LD_PRELOAD is reserved"),
    ("not a line\n", "line 1: expected KEY=value"),
    ("1A=x\n", "line 1: invalid key"),
    ("A=\x00\n", "line 1: contains a NUL byte"),
    ("DATABASE_URL=postgres://u:pw@db/app\n", "the value looks like a URL with a password"),
])
def test_env_file_problems(capsys: pytest.CaptureFixture[str], tmp_path: Path, content: str, message: str) -> None:
    env = tmp_path / "app.env"
    env.write_text(content)
    code, out, err = run(capsys, "create", "demo", "--image", IMAGE, "--env-file", str(env), *NO_CLUSTER)
    assert (code, out) == (2, "")
    assert err.count("\n") == 1 and message in err and str(env) in err
    assert "pw@" not in err


def test_env_file_over_one_mebibyte(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    env = tmp_path / "big.env"
    env.write_text("A=" + "x" * (1024 * 1024))
    code, _, err = run(capsys, "render", "demo", "--image", IMAGE, "--secret-env-file", str(env))
    assert code == 2 and "over the 1 MiB" in err


def test_same_key_in_both_files(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "a.env").write_text("A=1\n")
    (tmp_path / "s.env").write_text("A=2\n")
    code, _, err = run(capsys, "render", "demo", "--image", IMAGE, "--env-file", str(tmp_path / "a.env"),
                       "--secret-env-file", str(tmp_path / "s.env"))
    assert code == 2 and "key A is set in both" in err


@pytest.mark.parametrize("command", ["status", "delete"])
def test_other_commands_validate_the_name_first(capsys: pytest.CaptureFixture[str], command: str) -> None:
    code, out, err = run(capsys, command, "Not_A_Name", *NO_CLUSTER)
    assert (code, out) == (2, "") and "not a DNS-1035 label" in err


def test_unreadable_kubeconfig_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "status", "demo", *NO_CLUSTER)
    assert (code, out) == (2, "")
    assert err.startswith("error: cannot load Kubernetes credentials") and err.count("\n") == 1


def test_add_project_commands_fits_a_parent_parser() -> None:
    parser = argparse.ArgumentParser(prog="wakegate")
    top = parser.add_subparsers(dest="command", required=True)
    project = top.add_parser("project").add_subparsers(dest="project_command", required=True)
    add_project_commands(project)
    for argv in (["project", "render", "demo", "--image", IMAGE], ["project", "list"], ["project", "status", "x"],
                 ["project", "delete", "x", "--wait", "--keep-data"],
                 ["project", "create", "x", "--image", IMAGE, "--dry-run", "--context", "c"]):
        args = parser.parse_args(argv)
        assert callable(args.func)
    assert build_parser().parse_args(["list", "-o", "json"]).output == "json"
