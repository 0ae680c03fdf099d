"""RPC and service names in the service code come from the proto's descriptors only."""

from __future__ import annotations

import ast
from pathlib import Path

import aep
from aep.proto.adevents.v1 import ad_events_pb2 as pb

PACKAGE = Path(aep.__file__).parent
_SERVICE = pb.DESCRIPTOR.services_by_name["AdEventService"]
NAMES = {
    _SERVICE.name,
    _SERVICE.full_name,
    *(method.name for method in _SERVICE.methods),
    *(f"/{_SERVICE.full_name}/{method.name}" for method in _SERVICE.methods),
}
# Looking a name up in a descriptor fails at import when the proto renames it.
DESCRIPTOR_LOOKUPS = {"services_by_name", "methods_by_name"}


def hard_coded_names(source: str) -> list[tuple[int, str]]:
    tree = ast.parse(source)
    looked_up = {
        id(node.slice)
        for node in ast.walk(tree)
        if isinstance(node, ast.Subscript)
        and isinstance(node.value, ast.Attribute)
        and node.value.attr in DESCRIPTOR_LOOKUPS
    }
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and node.value in NAMES
        and id(node) not in looked_up
    ]


def test_no_module_spells_an_rpc_name_outside_a_descriptor_lookup() -> None:
    found = {
        str(path.relative_to(PACKAGE)): names
        for path in sorted(PACKAGE.rglob("*.py"))
        if "proto" not in path.relative_to(PACKAGE).parts
        and (names := hard_coded_names(path.read_text()))
    }
    assert found == {}


def test_the_check_sees_a_hard_coded_name() -> None:
    source = 'handlers = {"HealthCheck": 1}\nmethod = service.methods_by_name["HealthCheck"]\n'
    assert hard_coded_names(source) == [(1, "HealthCheck")]
