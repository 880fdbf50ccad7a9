"""The ``Project`` CRD as provisioner/crd.py renders it: the checked-in copies, names, descriptions, bounds,
structural shape and patterns (the API server's own verdicts are in test_crd_cluster.py)."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway import contract as C
from provisioner import crd
from provisioner.spec import SpecError, parse_quantity

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = ROOT / "manifests" / "base" / "crd-projects.yaml"
CHART_COPY = ROOT / "charts" / "wakegate" / "crds" / "projects.yaml"
REGENERATE = f"run `python -m provisioner.crd {MANIFEST.relative_to(ROOT)} {CHART_COPY.relative_to(ROOT)}`"

Schema = dict[str, Any]
INT_OR_STRING_ANY_OF = [{"type": "integer"}, {"type": "string"}]


def version() -> Schema:
    (only,) = crd.project_crd()["spec"]["versions"]
    out: Schema = only
    return out


def root() -> Schema:
    out: Schema = version()["schema"]["openAPIV3Schema"]
    return out


def nodes(node: Schema, path: str = "") -> Iterator[tuple[str, Schema]]:
    """Every schema node under ``node`` (itself included) with a path like ``.spec.keepWarm[].days[]``."""
    yield path, node
    for name, child in node.get("properties", {}).items():
        yield from nodes(child, f"{path}.{name}")
    if isinstance(node.get("additionalProperties"), dict):
        yield from nodes(node["additionalProperties"], f"{path}.*")
    if "items" in node:
        yield from nodes(node["items"], f"{path}[]")


def is_int_or_string(node: Schema) -> bool:
    return bool(node.get("x-kubernetes-int-or-string"))


def rules() -> Iterator[tuple[str, Schema, Schema]]:
    """(path, node, rule) for every CEL rule."""
    for path, node in nodes(root()):
        for rule in node.get("x-kubernetes-validations", []):
            yield path, node, rule


def spec_node(path: str) -> Schema:
    found = dict(nodes(root()))[path]
    return found


# --- the checked-in copies -----------------------------------------------------------------------


def test_the_manifest_is_generated_from_crd_py() -> None:
    assert MANIFEST.read_text(encoding="utf-8") == crd.crd_yaml(), REGENERATE


def test_the_chart_ships_the_same_bytes_as_the_manifest() -> None:
    assert CHART_COPY.read_bytes() == MANIFEST.read_bytes(), REGENERATE


def test_the_yaml_says_it_is_generated_and_parses_back_to_the_object() -> None:
    text = crd.crd_yaml()
    first = text.splitlines()[0]
    assert first.startswith("#") and "python -m provisioner.crd" in first and "do not edit" in first
    assert yaml.safe_load(text) == crd.project_crd()
    assert crd.crd_yaml() == text


def test_the_module_writes_every_path_it_is_given(tmp_path: Path) -> None:
    paths = [tmp_path / "a.yaml", tmp_path / "b.yaml"]
    done = subprocess.run([sys.executable, "-m", "provisioner.crd", *map(str, paths)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    assert [p.read_text(encoding="utf-8") for p in paths] == [crd.crd_yaml()] * 2


# --- names ---------------------------------------------------------------------------------------


def test_names_come_from_the_contract() -> None:
    obj = crd.project_crd()
    assert (obj["apiVersion"], obj["kind"]) == ("apiextensions.k8s.io/v1", "CustomResourceDefinition")
    assert obj["metadata"]["name"] == C.PROJECT_CRD == f"{C.PROJECT_PLURAL}.{C.PROJECT_GROUP}"
    spec = obj["spec"]
    assert spec["group"] == C.PROJECT_GROUP
    assert spec["scope"] == "Cluster"
    assert spec["names"] == {"kind": C.PROJECT_KIND, "listKind": "ProjectList", "plural": C.PROJECT_PLURAL,
                             "singular": "project", "shortNames": ["wgp"], "categories": ["wakegate"]}
    v = version()
    assert (v["name"], v["served"], v["storage"], v["subresources"]) == (C.PROJECT_VERSION, True, True, {"status": {}})


def test_enums_come_from_the_contract() -> None:
    assert spec_node(".spec.mode")["enum"] == list(C.MODES)
    assert spec_node(".spec.mode")["default"] == "Auto"
    assert spec_node(".spec.strategy")["enum"] == list(C.STRATEGIES)
    assert spec_node(".status.phase")["enum"] == [
        "Provisioning", "Sleeping", "Waking", "Running", "Suspended", "Failed"]
    assert spec_node(".spec.keepWarm[].days[]")["enum"] == ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]


def test_printer_columns() -> None:
    columns = [(c["name"], c["type"], c["jsonPath"]) for c in version()["additionalPrinterColumns"]]
    assert columns == [("Phase", "string", ".status.phase"), ("URL", "string", ".status.url"),
                       ("Last-Activity", "date", ".status.lastActivityTime"),
                       ("Age", "date", ".metadata.creationTimestamp")]
    paths = dict(nodes(root()))
    for _, _, json_path in columns[:3]:
        assert json_path in paths


def test_the_spec_has_exactly_the_documented_fields() -> None:
    assert sorted(spec_node(".spec")["properties"]) == sorted([
        "image", "port", "mode", "keepWarm", "env", "resources", "quota", "securityContext", "readinessPath",
        "idleTimeout", "holdTimeout", "strategy", "allowInternet", "storage", "runtimeClassName",
        "workloadIdentityClientId", "podSecurityVersion", "nodeSelector", "tolerations", "priorityClassName"])
    assert root()["required"] == ["spec"]
    assert spec_node(".spec")["required"] == ["image"]
    assert sorted(spec_node(".status")["properties"]) == sorted([
        "phase", "url", "namespace", "lastActivityTime", "observedGeneration", "conditions", "keepWarmUntil"])
    conditions = spec_node(".status.conditions")
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    assert conditions["items"]["required"] == ["type", "status", "lastTransitionTime", "reason", "message"]


# --- descriptions, structure, bounds -------------------------------------------------------------


def test_every_property_has_a_one_line_description() -> None:
    missing = []
    for path, node in nodes(root()):
        if path == ".metadata":  # the API server allows no description here
            continue
        text = node.get("description")
        if not isinstance(text, str) or not text.strip() or "\n" in text:
            missing.append(path or "<root>")
    assert not missing, f"without a one-line description: {missing}"
    assert all(c.get("description") for c in version()["additionalPrinterColumns"])


def test_the_schema_is_structural() -> None:
    problems = []
    for path, node in nodes(root()):
        if is_int_or_string(node):
            if "type" in node or node.get("anyOf") != INT_OR_STRING_ANY_OF:
                problems.append(f"{path}: int-or-string needs no type and anyOf {INT_OR_STRING_ANY_OF}")
            continue
        if "anyOf" in node or "oneOf" in node or "allOf" in node or "not" in node:
            problems.append(f"{path}: logical junctors only for int-or-string")
        if "type" not in node:
            problems.append(f"{path}: no type")
        if ("properties" in node or "additionalProperties" in node) and node.get("type") != "object":
            problems.append(f"{path}: properties on a non-object")
        if "items" in node and node.get("type") != "array":
            problems.append(f"{path}: items on a non-array")
        if node.get("type") == "array" and "items" not in node:
            problems.append(f"{path}: an array without items")
        if "properties" in node and "additionalProperties" in node:
            problems.append(f"{path}: both properties and additionalProperties")
        if node.get("x-kubernetes-preserve-unknown-fields"):
            problems.append(f"{path}: unknown fields would be kept")
    assert not problems, problems


def test_required_fields_exist() -> None:
    for path, node in nodes(root()):
        for name in node.get("required", []):
            assert name in node["properties"], f"{path}: required {name} is not a property"


def test_every_value_under_spec_and_status_is_bounded() -> None:
    # Unbounded strings, lists and maps make the API server estimate CEL costs it refuses.
    unbounded = []
    for path, node in nodes(root()):
        if not path.startswith((".spec", ".status")):
            continue
        kind = "string" if is_int_or_string(node) else node.get("type")
        if kind == "string" and "maxLength" not in node and "enum" not in node:
            unbounded.append(f"{path}: maxLength")
        if kind == "array" and "maxItems" not in node:
            unbounded.append(f"{path}: maxItems")
        if kind == "object" and "additionalProperties" in node and "maxProperties" not in node:
            unbounded.append(f"{path}: maxProperties")
    assert not unbounded, unbounded


def test_every_rule_has_a_message_and_its_field_path_exists() -> None:
    paths = dict(nodes(root()))
    seen = 0
    for path, _, rule in rules():
        seen += 1
        assert set(rule) <= {"rule", "message", "fieldPath"}, rule
        assert rule["message"].strip() and "\n" not in rule["message"], rule
        if "fieldPath" in rule:
            steps = re.findall(r"\.(\w+)|\['([^']+)'\]", rule["fieldPath"])
            assert steps, rule
            assert path + "".join(f".{a or b}" for a, b in steps) in paths, rule
    assert seen >= 15


def test_name_rules_name_the_field() -> None:
    name_rules = root()["x-kubernetes-validations"]
    assert len(name_rules) == 5
    for rule in name_rules:
        assert "self.metadata.name" in rule["rule"]
        assert rule["fieldPath"] == ".metadata.name"
        assert rule["message"].startswith("metadata.name: ")


def test_requests_are_compared_with_limits_for_every_resource() -> None:
    resource_rules = spec_node(".spec.resources")["x-kubernetes-validations"]
    assert [r["fieldPath"] for r in resource_rules] == [
        ".requests.cpu", ".requests.memory", ".requests['ephemeral-storage']"]
    storage = resource_rules[2]["rule"]
    assert "self.requests.ephemeral__dash__storage" in storage and "ephemeral-storage" not in storage
    assert ".compareTo(" in storage and "<= 0" in storage


def test_quantities_and_durations_are_int_or_string_with_a_positive_rule() -> None:
    quantities = [p for p, n in nodes(root()) if n.get("pattern") == crd.QUANTITY_PATTERN]
    assert sorted(quantities) == sorted(
        [f".spec.{block}.{kind}.{r}" for block in ("resources", "quota") for kind in ("requests", "limits")
         for r in crd.RESOURCES] + [".spec.resources.tmpSize", ".spec.storage.size"])
    durations = [p for p, n in nodes(root()) if n.get("pattern") == crd.DURATION_PATTERN]
    assert sorted(durations) == [".spec.holdTimeout", ".spec.idleTimeout"]
    for path in quantities + durations:
        node = spec_node(path)
        assert is_int_or_string(node), path
        assert len(node["x-kubernetes-validations"]) == 1, path


def test_defaults_satisfy_their_own_schema() -> None:
    for path, node in nodes(root()):
        if "default" not in node:
            continue
        value = node["default"]
        assert path in (".spec.mode", ".spec.keepWarm[].timeZone"), f"{path}: the controller applies defaults"
        assert "enum" not in node or value in node["enum"]
        assert "pattern" not in node or re.search(node["pattern"], value)


# --- patterns (Python's re reads these RE2 patterns the same way) --------------------------------


def matches(pattern: str, text: str) -> bool:
    return re.search(pattern, text) is not None


@pytest.mark.parametrize(("text", "ok"), [
    ("00:00", True), ("09:30", True), ("23:59", True), ("24:00", False), ("25:00", False), ("9:30", False),
    ("12:60", False), ("12:00 ", False),
])
def test_start_times(text: str, ok: bool) -> None:
    assert matches(crd.START_PATTERN, text) is ok


@pytest.mark.parametrize(("text", "ok"), [
    ("00:01", True), ("00:59", True), ("01:00", True), ("23:59", True), ("24:00", True), ("00:00", False),
    ("24:01", False), ("25:00", False), ("7:00", False),
])
def test_end_times(text: str, ok: bool) -> None:
    assert matches(crd.END_PATTERN, text) is ok


@pytest.mark.parametrize(("text", "ok"), [
    ("UTC", True), ("Europe/Berlin", True), ("America/Argentina/Buenos_Aires", True), ("Etc/GMT+5", True),
    ("Etc/GMT-14", True), ("America/Port-au-Prince", True), ("EST5EDT", True), ("Europe/ Berlin", False),
    ("Europe Berlin", False), ("/UTC", False), ("Europe/", False), ("Europe//Berlin", False), ("", False),
    ("../etc/passwd", False),
])
def test_time_zones(text: str, ok: bool) -> None:
    assert matches(crd.TIME_ZONE_PATTERN, text) is ok


@pytest.mark.parametrize("text", ["300", "2.5", "90s", "15m", "1h30m", "250ms", "1h0m0.5s", "0.5", "0s"])
def test_durations_the_pattern_accepts_parse_or_are_zero(text: str) -> None:
    assert matches(crd.DURATION_PATTERN, text)
    try:
        assert C.parse_duration(text) > 0
    except ValueError:
        assert not re.search("[1-9]", text), "the CEL rule lets only zero durations through to here"


@pytest.mark.parametrize("text", ["soon", "", "15 m", "1d", "m", "-5", "1e3", ".5s", "1.s", "15M"])
def test_durations_the_pattern_refuses(text: str) -> None:
    assert not matches(crd.DURATION_PATTERN, text)


@pytest.mark.parametrize("text", ["1", "500m", "0.5", "256Mi", "2Gi", "1e3", "1E3", ".5", "1.", "100n", "5k", "+1"])
def test_quantities_the_pattern_accepts_parse(text: str) -> None:
    assert matches(crd.QUANTITY_PATTERN, text)
    assert parse_quantity(text) > 0


@pytest.mark.parametrize("text", ["lots", "", "1 Gi", "1GB", "1gi", "Gi", "1..5", "0x10"])
def test_quantities_the_pattern_refuses(text: str) -> None:
    assert not matches(crd.QUANTITY_PATTERN, text)
    with pytest.raises(SpecError):
        parse_quantity(text)


@pytest.mark.parametrize(("pattern", "text", "ok"), [
    (crd.READINESS_PATH_PATTERN, "/healthz", True), (crd.READINESS_PATH_PATTERN, "/", True),
    (crd.READINESS_PATH_PATTERN, "/a?b=c&d=%20", True), (crd.READINESS_PATH_PATTERN, "healthz", False),
    (crd.READINESS_PATH_PATTERN, "/a b", False), (crd.READINESS_PATH_PATTERN, "/a\nb", False),
    (crd.UUID_PATTERN, "0a1b2c3d-4e5f-6789-abcd-ef0123456789", True),
    (crd.UUID_PATTERN, "0a1b2c3d4e5f6789abcdef0123456789", False), (crd.UUID_PATTERN, "not-a-uuid", False),
    (crd.POD_SECURITY_VERSION_PATTERN, "latest", True), (crd.POD_SECURITY_VERSION_PATTERN, "v1.33", True),
    (crd.POD_SECURITY_VERSION_PATTERN, "v1.0", True), (crd.POD_SECURITY_VERSION_PATTERN, "v1.033", False),
    (crd.POD_SECURITY_VERSION_PATTERN, "v2.1", False), (crd.POD_SECURITY_VERSION_PATTERN, "1.33", False),
    (crd.DNS1035_PATTERN, "demo-1", True), (crd.DNS1035_PATTERN, "1demo", False),
    (crd.DNS1035_PATTERN, "demo-", False), (crd.DNS1035_PATTERN, "Demo", False),
    (crd.SUBDOMAIN_PATTERN, "app.secrets", True), (crd.SUBDOMAIN_PATTERN, "App", False),
    (crd.LABEL_KEY_PATTERN, "kubernetes.io/os", True), (crd.LABEL_KEY_PATTERN, "agentpool", True),
    (crd.LABEL_KEY_PATTERN, "bad key", False), (crd.LABEL_KEY_PATTERN, "a/b/c", False),
    (crd.LABEL_VALUE_PATTERN, "", True), (crd.LABEL_VALUE_PATTERN, "linux", True),
    (crd.LABEL_VALUE_PATTERN, "-linux", False),
])
def test_patterns(pattern: str, text: str, ok: bool) -> None:
    assert matches(pattern, text) is ok


def test_readiness_path_length_is_bounded_by_max_length() -> None:
    # RE2 refuses repeat counts above 1000, so the 2048 bound is maxLength, not the pattern.
    node = spec_node(".spec.readinessPath")
    assert node["maxLength"] == 2048
    assert not re.search(r"\{\d*,?(\d{4,})\}", node["pattern"])
    for _, n in nodes(root()):
        for count in re.findall(r"\{(?:\d+,)?(\d+)\}", n.get("pattern", "")):
            assert int(count) <= 1000


def test_the_name_bound_leaves_room_for_the_namespace_prefix() -> None:
    assert crd.MAX_NAME + len(C.DEFAULT_NAMESPACE_PREFIX) == 63
    assert any(f"size() <= {crd.MAX_NAME}" in r["rule"] for r in root()["x-kubernetes-validations"])
