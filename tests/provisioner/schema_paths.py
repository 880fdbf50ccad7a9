"""Paths through the Project CRD's schema and through a Project's values (for "uses every field")."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

Obj = dict[str, Any]


def schema_leaves(node: Obj, path: str) -> Iterator[str]:
    """Paths of every leaf and map field under ``node`` (lists as ``[]``)."""
    props = node.get("properties")
    if props:
        for name, child in props.items():
            yield from schema_leaves(child, f"{path}.{name}")
    elif "items" in node:
        yield from schema_leaves(node["items"], f"{path}[]")
    else:
        yield path


def value_paths(value: Any, path: str) -> Iterator[str]:
    """Paths of every value in ``value`` (lists as ``[]``)."""
    yield path
    if isinstance(value, dict):
        for name, child in value.items():
            yield from value_paths(child, f"{path}.{name}")
    elif isinstance(value, list):
        for child in value:
            yield from value_paths(child, f"{path}[]")
