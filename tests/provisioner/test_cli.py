"""The CLI without a cluster: `render` output, and bad input → one line on stderr, exit 2, no API call."""

from __future__ import annotations

import argparse
import base64
from pathlib import Path

import pytest

from provisioner.cli import add_project_commands, build_parser, main, spec_from_args
from provisioner.render import CHECKSUM_KEY_FIELD, CHECKSUM_KEY_SECRET, find, from_yaml, render, to_yaml
from provisioner.spec import ProjectSpec, Toleration

IMAGE = "wakegate.test/echo:1"
# Any cluster command that got past validation would fail on this file with a different message.
NO_CLUSTER = ["--kubeconfig", "/nonexistent/kubeconfig"]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_render_prints_exactly_what_render_returns_and_the_same_each_time(capsys: pytest.CaptureFixture[str],
                                                                           tmp_path: Path) -> None:
    code, out, err = run(capsys, "render", "demo", "--image", IMAGE)
    assert code == 0 and err == ""
    # No random key: the same input renders the same YAML (GitOps diffs stay empty).
    assert out == to_yaml(render(ProjectSpec(name="demo", image=IMAGE)))
    assert ("Secret", CHECKSUM_KEY_SECRET) not in [(o["kind"], o["metadata"]["name"]) for o in from_yaml(out)]
    assert run(capsys, "render", "demo", "--image", IMAGE)[1] == out
    # With a key file, a keyed config checksum (and the key's Secret), also the same each time.
    key_file = tmp_path / "checksum.key"
    key_file.write_bytes(bytes(range(32)))
    env = tmp_path / "app.env"
    env.write_text("LOG_LEVEL=debug\n")
    keyed_args = ("render", "demo", "--image", IMAGE, "--env-file", str(env), "--checksum-key-file", str(key_file))
    code, keyed, err = run(capsys, *keyed_args)
    assert code == 0 and err == ""
    key = base64.b64decode(find(from_yaml(keyed), "Secret", CHECKSUM_KEY_SECRET)["data"][CHECKSUM_KEY_FIELD])
    spec = ProjectSpec(name="demo", image=IMAGE, config=(("LOG_LEVEL", "debug"),))
    assert key == bytes(range(32)) and keyed == to_yaml(render(spec, key))
    assert run(capsys, *keyed_args)[1] == keyed
    key_file.write_bytes(b"short")
    code, _, err = run(capsys, *keyed_args)
    assert code == 2 and "holds 5 bytes; a key needs at least 32" in err


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
    (["demo", "--cpu-request", "2", "--cpu-limit", "1"], "--cpu-request 2 is above its limit --cpu-limit 1"),
    (["demo", "--memory-request", "2Gi", "--memory-limit", "1Gi"],
     "--memory-request 2Gi is above its limit --memory-limit 1Gi"),
    (["demo", "--quota-limits-cpu", "1"], "--quota-limits-cpu 1 is too small"),
    (["demo", "--quota-pods", "1"], "--quota-pods 1 is outside"),
    (["demo", "--run-as-user", "0"], "--run-as-user 0"),
    (["demo", "--idle-timeout", "soon"], "--idle-timeout: expected a duration (e.g. 300, 90s, 15m, 1h), got 'soon'"),
    (["demo", "--strategy", "maybe"], "--strategy: expected one of auto, block, page, got 'maybe'"),
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
    assert (code, out) == (2, "") and "--domain: 'not a domain' is not a DNS name" in err


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
    assert err.startswith("error: this command needs a Kubernetes cluster: cannot load Kubernetes credentials")
    assert "`wakegate project render` needs none" in err and err.count("\n") == 1


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


def test_allow_key_lets_a_setting_that_only_sounds_secret_into_the_config_map(capsys: pytest.CaptureFixture[str],
                                                                             tmp_path: Path) -> None:
    env = tmp_path / "app.env"
    env.write_text("SIGNING_SALT_ROTATION=weekly\n")
    code, _, err = run(capsys, "render", "demo", "--image", IMAGE, "--env-file", str(env))
    assert code == 2 and "SIGNING_SALT_ROTATION looks like a secret" in err and "--allow-key KEY" in err
    code, out, _ = run(capsys, "render", "demo", "--image", IMAGE, "--env-file", str(env),
                       "--allow-key", "SIGNING_SALT_ROTATION")
    assert code == 0
    config_map = find(from_yaml(out), "ConfigMap")
    assert config_map["data"] == {"SIGNING_SALT_ROTATION": "weekly"}


# --- placement flags -------------------------------------------------------------------------------------

SPOT = "kubernetes.azure.com/scalesetpriority"
PLACEMENT = ("--node-selector", f"{SPOT}=spot", "--node-selector", "agentpool=agents",
             "--toleration", f"{SPOT}=spot:NoSchedule", "--toleration", "dedicated:NoExecute",
             "--priority-class", "agents-low")


def test_placement_flags_reach_the_pod_template(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "render", "demo", "--image", IMAGE, *PLACEMENT)
    assert code == 0 and err == ""
    spec = ProjectSpec(name="demo", image=IMAGE, node_selector=((SPOT, "spot"), ("agentpool", "agents")),
                       tolerations=(Toleration(SPOT, "NoSchedule", "spot"), Toleration("dedicated", "NoExecute")),
                       priority_class="agents-low")
    assert out == to_yaml(render(spec))
    pod = find(from_yaml(out), "Deployment")["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"agentpool": "agents", SPOT: "spot"}
    assert pod["tolerations"] == [
        {"key": "dedicated", "operator": "Exists", "effect": "NoExecute"},
        {"key": SPOT, "operator": "Equal", "value": "spot", "effect": "NoSchedule"},
    ]
    assert pod["priorityClassName"] == "agents-low"
    assert run(capsys, "render", "demo", "--image", IMAGE, *PLACEMENT)[1] == out  # same input, same YAML
    # create builds the same spec from the same flags
    args = build_parser().parse_args(["create", "demo", "--image", IMAGE, *PLACEMENT, *NO_CLUSTER])
    assert spec_from_args(args) == (spec, [])


def test_without_placement_flags_the_spec_has_none() -> None:
    spec, _ = spec_from_args(build_parser().parse_args(["render", "demo", "--image", IMAGE]))
    assert (spec.node_selector, spec.tolerations, spec.priority_class) == ((), (), None)


@pytest.mark.parametrize(("argv", "message"), [
    (["--node-selector", "agentpool"], "--node-selector 'agentpool': expected KEY=VALUE"),
    (["--node-selector", "Pool Name=x"], "--node-selector 'Pool Name=x': the name 'Pool Name' of the key"),
    (["--node-selector", "pool=-x"], "--node-selector 'pool=-x': the value '-x' must be empty or"),
    (["--node-selector", "pool=a", "--node-selector", "pool=b"], "--node-selector 'pool=b' conflicts with"),
    (["--node-selector", "pool=a", "--node-selector", "pool=a"], "--node-selector 'pool=a' is given twice"),
    (["--toleration", "dedicated"], "--toleration 'dedicated': expected KEY=VALUE:EFFECT or KEY:EFFECT"),
    (["--toleration", ":NoSchedule"], "--toleration ':NoSchedule': KEY is empty"),
    (["--toleration", "dedicated:noschedule"], "--toleration 'dedicated:noschedule': the effect 'noschedule' is not "
                                               "one of NoSchedule, PreferNoSchedule, NoExecute"),
    (["--toleration", "dedicated=a b:NoSchedule"], "--toleration 'dedicated=a b:NoSchedule': the value 'a b'"),
    (["--toleration", "CriticalAddonsOnly=true:NoSchedule"], "must not tolerate it"),
    (["--toleration", "x:NoSchedule", "--toleration", "x:NoSchedule"], "--toleration 'x:NoSchedule' is given twice"),
    (["--toleration", "x:NoSchedule", "--toleration", "x=1:NoSchedule"], "'x=1:NoSchedule' overlaps"),
    (["--priority-class", "Agents"], "--priority-class 'Agents' is not a valid PriorityClass name"),
    (["--priority-class", ""], "--priority-class '' is not a valid PriorityClass name"),
    (["--priority-class", "system-node-critical"], "--priority-class 'system-node-critical': the system- classes"),
    (["--priority-class", "system-cluster-critical"], "untrusted pods must not take them"),
])
@pytest.mark.parametrize("command", ["render", "create"])
def test_bad_placement_flags_are_one_line_exit_2(capsys: pytest.CaptureFixture[str], command: str,
                                                 argv: list[str], message: str) -> None:
    extra = NO_CLUSTER if command == "create" else []
    code, out, err = run(capsys, command, "demo", "--image", IMAGE, *argv, *extra)
    assert (code, out) == (2, "")
    assert err.count("\n") == 1 and err.startswith(f"error: {argv[0]} ")
    assert message in err
    assert "kubeconfig" not in err  # refused before any cluster access


@pytest.mark.parametrize("command", ["render", "create"])
def test_placement_flags_in_help(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                                 command: str) -> None:
    monkeypatch.setenv("COLUMNS", "60")  # the usage wraps: argparse must cope with the brackets of the metavar
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    out = capsys.readouterr().out
    assert info.value.code == 0
    assert "--toleration KEY[=VALUE]:EFFECT" in out and "--node-selector KEY=VALUE" in out
    assert "--priority-class NAME" in out
