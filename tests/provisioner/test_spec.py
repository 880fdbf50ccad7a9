"""ProjectSpec validation: names, quantities, ports, durations, quotas, storage, placement and options."""

from __future__ import annotations

import dataclasses
from fractions import Fraction
from typing import Any

import pytest

from provisioner.spec import (
    ProjectSpec,
    Quota,
    Resources,
    SpecError,
    Storage,
    Toleration,
    format_quantity,
    parse_duration,
    parse_node_selector,
    parse_quantity,
    parse_toleration,
    validate_project_name,
)

IMAGE = "wakegate.test/echo:1"


def make(**kw: Any) -> ProjectSpec:
    kw.setdefault("name", "demo")
    kw.setdefault("image", IMAGE)
    return ProjectSpec(**kw)


def refused(match: str, **kw: Any) -> str:
    with pytest.raises(SpecError, match=match) as info:
        make(**kw)
    message = str(info.value)
    assert "\n" not in message
    return message


# --- quantities ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "value"), [
    ("100m", Fraction(1, 10)), ("0.5", Fraction(1, 2)), ("1", 1), ("1Gi", 1024**3), ("512Mi", 512 * 1024**2),
    ("1e3", 1000), ("1E3", 1000), ("2k", 2000), ("1.5Gi", 1536 * 1024**2), (".5", Fraction(1, 2)),
    ("5.", 5), ("250u", Fraction(250, 10**6)), ("3n", Fraction(3, 10**9)), ("1M", 10**6), ("1Ki", 1024),
    ("+1", 1), ("1e-3", Fraction(1, 1000)),
])
def test_parse_quantity(text: str, value: Fraction | int) -> None:
    assert parse_quantity(text) == value


@pytest.mark.parametrize("text", ["", "abc", "1GB", "1gi", "1 Gi", " 1", "1.2.3", "Gi", "1e", "1Mi2", "0x10",
                                  "1e1000"])
def test_unparsable_quantities(text: str) -> None:
    with pytest.raises(SpecError, match="--cpu-limit"):
        parse_quantity(text, "--cpu-limit")


@pytest.mark.parametrize(("value", "text"), [
    (Fraction(1, 2), "500m"), (Fraction(2), "2"), (Fraction(2 * 1024**3), "2Gi"), (Fraction(1024**2), "1Mi"),
    (Fraction(2000), "2k"), (Fraction(3, 10**6), "3u"), (Fraction(10**9), "1G"), (Fraction(1, 3), "333333334n"),
])
def test_format_quantity(value: Fraction, text: str) -> None:
    assert format_quantity(value) == text
    assert parse_quantity(text) >= value


# --- durations -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "seconds"), [
    ("300", 300), ("2.5", 2.5), ("90s", 90), ("15m", 900), ("1h", 3600), ("1h30m", 5400), ("250ms", 0.25),
])
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(("text", "problem"), [
    ("", "expected a duration"), ("abc", "expected a duration"), ("5 m", "expected a duration"),
    ("1d", "expected a duration"), ("m", "expected a duration"), ("-5", "expected a positive number of seconds"),
    ("0", "expected a positive number of seconds"), ("0s", "expected a positive number of seconds"),
    ("inf", "expected a positive number of seconds"), ("nan", "expected a positive number of seconds"),
])
def test_bad_durations(text: str, problem: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_duration(text, "--idle-timeout")
    assert str(info.value).startswith(f"--idle-timeout: {problem}") and str(info.value).endswith(f"got {text!r}")


# --- names -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["demo", "a", "my-app-2", "x" * 60])
def test_good_names(name: str) -> None:
    validate_project_name(name)
    assert make(name=name).namespace == f"wg-{name}"


@pytest.mark.parametrize(("name", "match"), [
    ("", "project name is empty"),
    ("Demo", "not a DNS-1035 label"),
    ("1demo", "not a DNS-1035 label"),
    ("demo-", "not a DNS-1035 label"),
    ("-demo", "not a DNS-1035 label"),
    ("de_mo", "not a DNS-1035 label"),
    ("de.mo", "not a DNS-1035 label"),
    ("démo", "not a DNS-1035 label"),
    ("x" * 64, "too long: 64 characters"),
    ("x" * 61, "too long with the prefix: namespace 'wg-x+' would have 64 characters"),
    ("xn--bcher-kva", "'xn--'"),
    ("ab--c", "third and fourth characters"),
    ("default", "reserved"),
    ("kube-system", "reserved"),
    ("kube-anything", "reserved"),
    ("wakegate", "reserved"),
])
def test_bad_names(name: str, match: str) -> None:
    refused(match, name=name)


def test_name_that_makes_the_gateway_namespace_is_reserved() -> None:
    refused("is the gateway namespace", name="system", namespace_prefix="wakegate-")
    refused("is the gateway namespace", name="gw", namespace_prefix="", gateway_namespace="gw")


def test_empty_prefix_protects_cluster_namespaces() -> None:
    refused("belongs to the cluster", name="aks-command", namespace_prefix="")
    refused("reserved", name="default", namespace_prefix="")
    assert make(name="shop", namespace_prefix="").namespace == "shop"


@pytest.mark.parametrize("prefix", ["Wg-", "1-", "-x", "wg_", "x" * 63])
def test_bad_prefixes(prefix: str) -> None:
    refused("namespace prefix", namespace_prefix=prefix)


def test_bad_gateway_namespace() -> None:
    refused("--gateway-namespace", gateway_namespace="Not_Valid")


# --- image, port, user ------------------------------------------------------------------------------


@pytest.mark.parametrize("image", [
    "nginx", "nginx:1.27", "library/nginx", "ghcr.io/org/app:v1.2.3", "localhost:5000/app",
    "caf0957b5c26acr.azurecr.io/goose-api-server:2609251236", "app@sha256:" + "a" * 64, "[::1]:5000/x:y",
])
def test_good_images(image: str) -> None:
    make(image=image)


@pytest.mark.parametrize("image", ["", "App:1", "org/App", "has space", "app:", "app:tag:tag", "-app", "x" * 600])
def test_bad_images(image: str) -> None:
    refused("--image", image=image)


@pytest.mark.parametrize("port", [0, -1, 65536, 100000])
def test_ports_outside_range(port: int) -> None:
    assert refused("--port", port=port) == f"--port {port} is outside 1-65535"


def test_port_bounds_are_inclusive() -> None:
    make(port=1)
    make(port=65535)


def test_root_is_refused() -> None:
    refused(r"--run-as-user 0 is outside .*forbids root", run_as_user=0)
    refused("--run-as-group -1", run_as_group=-1)
    refused("--fs-group", fs_group=-5)
    assert make(run_as_group=0).effective_fs_group == 0
    assert make(fs_group=2000).effective_fs_group == 2000


@pytest.mark.parametrize("path", ["healthz", "/a b", "/\x00", "/" + "x" * 3000])
def test_bad_readiness_paths(path: str) -> None:
    refused("--readiness-path", readiness_path=path)


def test_timeouts_and_strategy() -> None:
    refused("--idle-timeout: expected a positive number of seconds, got 0", idle_timeout_s=0)
    refused("--hold-timeout: expected a positive number of seconds, got -1", hold_timeout_s=-1)
    refused("--hold-timeout: expected a positive number of seconds, got inf", hold_timeout_s=float("inf"))
    refused("--strategy: expected one of auto, block, page, got 'sometimes'", strategy="sometimes")
    make(idle_timeout_s=300, hold_timeout_s=2.5, strategy="page")


def test_pod_security_version() -> None:
    make(pod_security_version="latest")
    refused("--pod-security-version", pod_security_version="1.30")


# --- resources and quota ----------------------------------------------------------------------------


@pytest.mark.parametrize(("field", "bad"), [
    ("cpu_request", "lots"), ("cpu_limit", "1 core"), ("memory_request", "1GB"), ("memory_limit", "-"),
    ("ephemeral_storage_request", "x"), ("ephemeral_storage_limit", "1 Gi"),
])
def test_unparsable_resources_name_the_flag(field: str, bad: str) -> None:
    flag = "--" + field.replace("_", "-")
    refused(f"{flag}: cannot parse", resources=Resources(**{field: bad}))


@pytest.mark.parametrize(("resource", "req", "limit"), [
    ("cpu", "1500m", "1"), ("memory", "2Gi", "1Gi"), ("ephemeral-storage", "2Gi", "1Gi"),
])
def test_requests_above_limits(resource: str, req: str, limit: str) -> None:
    key = resource.replace("-", "_")
    message = refused("above its limit", resources=Resources(**{f"{key}_request": req, f"{key}_limit": limit}))
    assert message == f"--{resource}-request {req} is above its limit --{resource}-limit {limit}"


def test_requests_equal_to_limits_in_other_units() -> None:
    make(resources=Resources(cpu_request="0.5", cpu_limit="500m", memory_request="1024Mi", memory_limit="1Gi"))


def test_zero_resources_are_refused() -> None:
    refused("must be positive", resources=Resources(cpu_request="0"))


def test_tmp_size() -> None:
    refused("--tmp-size 2Gi is above the ephemeral-storage limit", resources=Resources(tmp_size="2Gi"))
    refused("--tmp-size: cannot parse", resources=Resources(tmp_size="big"))


def test_default_quota_fits_a_rolling_update() -> None:
    hard = make().quota_hard()
    assert hard["requests.cpu"] == "500m" and hard["limits.cpu"] == "2"
    assert hard["requests.memory"] == "512Mi" and hard["limits.memory"] == "2Gi"
    assert hard["requests.ephemeral-storage"] == "128Mi" and hard["limits.ephemeral-storage"] == "2Gi"
    assert int(hard["pods"]) >= 2


def test_quota_follows_storage() -> None:
    assert make().quota_hard()["persistentvolumeclaims"] == "0"
    assert make().quota_hard()["requests.storage"] == "0"
    with_storage = make(storage=Storage("5Gi", "/data")).quota_hard()
    assert with_storage["persistentvolumeclaims"] == "1" and with_storage["requests.storage"] == "5Gi"


def test_explicit_quota_too_small_for_a_rolling_update() -> None:
    message = refused("too small", quota=Quota(limits_cpu="1500m"))
    assert message == "--quota-limits-cpu 1500m is too small: a rolling update needs 2 x 1 = 2"
    refused("--quota-requests-memory 256Mi is too small", quota=Quota(requests_memory="256Mi"))
    refused("--quota-pods 1 is outside", quota=Quota(pods=1))
    refused("--quota-objects 0 is outside", quota=Quota(objects=0))
    refused("--quota-objects 1 is outside 2-100000 .a project has two Secrets", quota=Quota(objects=1))
    refused("--quota-limits-memory: cannot parse", quota=Quota(limits_memory="lots"))
    assert make(quota=Quota(limits_cpu="8", pods=10)).quota_hard()["limits.cpu"] == "8"


# --- environment ------------------------------------------------------------------------------------


def test_env_rules_apply_to_specs_built_in_code() -> None:
    refused("config environment: key PATH is reserved", config=(("PATH", "/x"),))
    refused("secret environment: invalid key", secret=(("1X", "y"),))
    refused("duplicate key A", config=(("A", "1"), ("A", "2")))
    refused("NUL", secret=(("A", "x\x00"),))
    refused("DB_PASSWORD looks like a secret", config=(("DB_PASSWORD", "x"),))
    refused("key A is set in both --env-file and --secret-env-file", config=(("A", "1"),), secret=(("A", "2"),))
    refused("over the 1 MiB", config=(("A", "x" * 600_000),), secret=(("B", "y" * 600_000),))


# --- storage, runtime class, workload identity ------------------------------------------------------


@pytest.mark.parametrize(("storage", "match"), [
    (Storage("lots", "/data"), "--storage: cannot parse"),
    (Storage("0", "/data"), "--storage must be positive"),
    (Storage("1Gi", "data"), "--storage-path 'data' must be an absolute path"),
    (Storage("1Gi", "/a/../b"), "must be an absolute path"),
    (Storage("1Gi", "/"), "would hide"),
    (Storage("1Gi", "/tmp"), "would hide"),
    (Storage("1Gi", "/tmp/x"), "would hide"),
    (Storage("1Gi", "/proc"), "would hide"),
    (Storage("1Gi", "/data", "Bad_Class"), "--storage-class"),
])
def test_bad_storage(storage: Storage, match: str) -> None:
    refused(match, storage=storage)


def test_runtime_class_and_workload_identity() -> None:
    make(runtime_class="kata-vm-isolation", workload_identity_client_id="12345678-1234-1234-1234-123456789abc")
    refused("--runtime-class", runtime_class="Kata VM")
    refused("is not a client ID", workload_identity_client_id="my-app")


def test_spec_is_frozen() -> None:
    spec = make()
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.name = "other"  # type: ignore[misc]


# --- placement: node selector, tolerations, priority class -----------------------------------------------

SPOT = "kubernetes.azure.com/scalesetpriority"


@pytest.mark.parametrize(("text", "pair"), [
    (f"{SPOT}=spot", (SPOT, "spot")),
    ("agentpool=agents", ("agentpool", "agents")),
    ("disktype=", ("disktype", "")),  # an empty label value is a value
    ("a=b=c", ("a", "b=c")),  # split at the first '='; the spec then refuses the value
])
def test_parse_node_selector(text: str, pair: tuple[str, str]) -> None:
    assert parse_node_selector(text) == pair


@pytest.mark.parametrize("text", ["agentpool", "", "spot"])
def test_node_selector_without_a_value_is_refused(text: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_node_selector(text)
    assert str(info.value).startswith(f"--node-selector {text!r}: expected KEY=VALUE")


@pytest.mark.parametrize(("text", "toleration"), [
    (f"{SPOT}=spot:NoSchedule", Toleration(SPOT, "NoSchedule", "spot")),
    ("dedicated:NoExecute", Toleration("dedicated", "NoExecute")),
    ("dedicated=:PreferNoSchedule", Toleration("dedicated", "PreferNoSchedule", "")),
    ("a:b:NoSchedule", Toleration("a:b", "NoSchedule")),  # the effect follows the last ':'; key refused later
    (":NoSchedule", Toleration("", "NoSchedule")),  # refused by the spec (no key)
])
def test_parse_toleration(text: str, toleration: Toleration) -> None:
    assert parse_toleration(text) == toleration


def test_toleration_operator_and_flag_form() -> None:
    assert Toleration(SPOT, "NoSchedule", "spot").operator == "Equal"
    assert Toleration("dedicated", "NoSchedule").operator == "Exists"
    assert Toleration("dedicated", "NoSchedule", "").operator == "Equal"
    for text in (f"{SPOT}=spot:NoSchedule", "dedicated:NoExecute", "dedicated=:NoSchedule"):
        assert str(parse_toleration(text)) == text


@pytest.mark.parametrize("text", ["dedicated", "dedicated=agents", "", "a=b"])
def test_toleration_without_an_effect_is_refused(text: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_toleration(text)
    assert str(info.value).startswith(f"--toleration {text!r}: expected KEY=VALUE:EFFECT or KEY:EFFECT")


def test_good_placement() -> None:
    spec = make(node_selector=((SPOT, "spot"), ("agentpool", "agents"), ("disktype", "")),
                tolerations=(Toleration(SPOT, "NoSchedule", "spot"), Toleration("dedicated", "NoExecute"),
                             Toleration("pool", "NoSchedule", "a"), Toleration("pool", "NoSchedule", "b"),
                             Toleration("pool", "NoExecute"), Toleration("x.example.com/y_z-1.2", "PreferNoSchedule")),
                priority_class="agents-low")
    assert spec.priority_class == "agents-low"
    make(node_selector=(("a" * 63, "b" * 63),), priority_class="a." + "b" * 60)
    make(node_selector=((("a" * 63 + ".") * 3 + "a" * 61 + "/" + "n" * 63, "v"),))  # 253-character prefix
    make(priority_class="p" * 253)
    assert make().node_selector == () and make().tolerations == () and make().priority_class is None


@pytest.mark.parametrize(("pair", "problem"), [
    (("", "x"), "the key is empty"),
    (("/name", "x"), "the prefix of key '/name' (before '/') is empty"),
    (("example.com/", "x"), "the name of key 'example.com/' (after '/') is empty"),
    (("a/b/c", "x"), "key 'a/b/c' has more than one '/'"),
    (("Example.com/x", "y"), "the prefix 'Example.com' of the key is not a DNS subdomain"),
    (("exa_mple.com/x", "y"), "the prefix 'exa_mple.com' of the key is not a DNS subdomain"),
    (("-bad.com/x", "y"), "is not a DNS subdomain"),
    (("a" * 254 + "/x", "y"), "is not a DNS subdomain"),
    (("n" * 64, "y"), "the name 'nnnn"),
    (("-name", "y"), "the name '-name' of the key must be letters, digits"),
    (("name.", "y"), "the name 'name.' of the key must be"),
    (("na me", "y"), "must be letters, digits"),
    (("nämé", "y"), "must be letters, digits"),
    (("pool", "v" * 64), "the value 'vvvv"),
    (("pool", "-spot"), "the value '-spot' must be empty or letters, digits"),
    (("pool", "a b"), "must be empty or letters"),
    (("pool", "a/b"), "must be empty or letters"),
    (("pool", "spot\n"), "must be empty or letters"),
])
def test_bad_node_selectors(pair: tuple[str, str], problem: str) -> None:
    message = refused("--node-selector", node_selector=(pair,))
    assert message.startswith(f"--node-selector {f'{pair[0]}={pair[1]}'[:80]!r}: ")
    assert problem in message


def test_node_selector_duplicates_and_conflicts() -> None:
    assert refused("given twice", node_selector=(("pool", "a"), ("pool", "a"))) == \
        "--node-selector 'pool=a' is given twice"
    assert refused("conflicts", node_selector=(("pool", "a"), ("x", "1"), ("pool", "b"))) == \
        "--node-selector 'pool=b' conflicts with --node-selector pool=a (a node label has one value)"


def test_node_selector_entries_built_in_code_must_be_pairs_of_strings() -> None:
    refused("expected a .key, value. pair", node_selector=(("pool",),))
    refused("expected a .key, value. pair", node_selector=(("pool", 1),))


@pytest.mark.parametrize(("toleration", "problem"), [
    (Toleration("", "NoSchedule"), "KEY is empty (a toleration without a key would tolerate every taint)"),
    (Toleration("", "NoSchedule", "x"), "KEY is empty"),
    (Toleration("pool", "noschedule"), "the effect 'noschedule' is not one of NoSchedule, PreferNoSchedule, NoExecute"),
    (Toleration("pool", ""), "the effect '' is not one of"),
    (Toleration("pool", "NoExecute ", "a"), "the effect 'NoExecute ' is not one of"),
    (Toleration("pool", "Evict"), "is not one of"),
    (Toleration("a:b", "NoSchedule"), "the name 'a:b' of the key must be"),
    (Toleration("Bad.Example/pool", "NoSchedule"), "the prefix 'Bad.Example' of the key is not a DNS subdomain"),
    (Toleration("pool", "NoSchedule", "a b"), "the value 'a b' must be empty or letters"),
    (Toleration("pool", "NoSchedule", "x" * 64), "is longer than 63 characters"),
    (Toleration("CriticalAddonsOnly", "NoSchedule", "true"), "the taint CriticalAddonsOnly keeps ordinary pods off"),
    (Toleration("node-role.kubernetes.io/control-plane", "NoSchedule"), "must not tolerate it"),
    (Toleration("node-role.kubernetes.io/master", "NoSchedule"), "must not tolerate it"),
])
def test_bad_tolerations(toleration: Toleration, problem: str) -> None:
    message = refused("--toleration", tolerations=(toleration,))
    assert message.startswith(f"--toleration {str(toleration)!r}: ")
    assert problem in message


def test_toleration_duplicates_and_overlaps() -> None:
    spot = Toleration(SPOT, "NoSchedule", "spot")
    assert refused("given twice", tolerations=(spot, spot)) == f"--toleration '{SPOT}=spot:NoSchedule' is given twice"
    exists = Toleration("pool", "NoSchedule")
    assert refused("given twice", tolerations=(exists, exists)) == "--toleration 'pool:NoSchedule' is given twice"
    # KEY:EFFECT already tolerates every value of the taint: a KEY=VALUE:EFFECT beside it is a mistake.
    message = refused("overlaps", tolerations=(exists, Toleration("pool", "NoSchedule", "a")))
    assert message == ("--toleration 'pool=a:NoSchedule' overlaps --toleration pool:NoSchedule "
                       "(pool:NoSchedule already tolerates every value; give one or the other)")
    refused("'pool:NoSchedule' overlaps --toleration pool=:NoSchedule",
            tolerations=(Toleration("pool", "NoSchedule", ""), exists))


def test_tolerations_built_in_code_must_be_tolerations() -> None:
    refused("expected a Toleration", tolerations=(("pool", "NoSchedule"),))


@pytest.mark.parametrize("name", ["", "Agents", "agents_low", "-agents", "agents-", "a..b", "p" * 254, "agents low"])
def test_bad_priority_class_names(name: str) -> None:
    message = refused("--priority-class", priority_class=name)
    assert message.startswith(f"--priority-class {name[:80]!r} is not a valid PriorityClass name")


@pytest.mark.parametrize("name", ["system-node-critical", "system-cluster-critical", "system-anything"])
def test_system_priority_classes_are_refused(name: str) -> None:
    message = refused("are for the cluster's critical pods", priority_class=name)
    assert message.startswith(f"--priority-class {name!r}: the system- classes")
    assert "untrusted pods must not take them" in message
    make(priority_class="systems-low")  # only the reserved 'system-' prefix


def test_placement_is_immutable() -> None:
    spec = make(node_selector=(("pool", "a"),), tolerations=(Toleration("pool", "NoSchedule"),))
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.tolerations[0].key = "other"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.priority_class = "x"  # type: ignore[misc]
    assert hash(spec.tolerations) == hash((Toleration("pool", "NoSchedule"),))
