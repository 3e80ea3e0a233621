"""Every field of every generated CRD is described, and only with words a user can follow.

`kubectl explain agentdeployment.spec...` and docs/crd-reference.md show these descriptions, so a
field without one is a field a user cannot look up; a description pointing at a document that is
not in the repository is one they cannot follow.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from strata_operator.crdgen import all_crds

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
# A path-like token ending in a file extension, e.g. bench/cache.py or docs/operator-guide.md.
FILE_MENTION = re.compile(r"\b[\w./-]+/[\w.-]+\.(?:py|md|ya?ml|json|sh|txt)\b")


def fields(node: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """(path, schema) of every named field: object properties, also inside list items and maps."""
    for name, child in (node.get("properties") or {}).items():
        yield f"{path}.{name}", child
        yield from fields(child, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from fields(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from fields(node["additionalProperties"], f"{path}{{}}")


def all_fields() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for crd in all_crds().values():
        root = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        kind = crd["spec"]["names"]["kind"]
        out.append((kind, root))
        out += list(fields(root, kind))
    return out


def test_the_crds_have_many_fields() -> None:
    # Guards the walk itself: an empty walk would make the next tests pass vacuously.
    assert len(all_fields()) > 200


def test_every_field_has_a_description() -> None:
    missing = [path for path, schema in all_fields() if not str(schema.get("description", "")).strip()]
    # The API server rejects a CRD that says anything about metadata but its type; it describes
    # ObjectMeta itself (kubectl explain agentdeployment.metadata).
    assert missing == ["AgentDeployment.metadata", "CachePolicy.metadata", "RoutingPolicy.metadata"]


def test_metadata_is_left_to_the_api_server() -> None:
    for crd in all_crds().values():
        assert crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["metadata"] == {"type": "object"}


def test_no_description_points_at_a_document_users_do_not_have() -> None:
    bad = []
    for path, schema in all_fields():
        text = str(schema.get("description", ""))
        if "SPEC" in text or "shared/" in text or "../" in text:
            bad.append((path, text))
        for mention in FILE_MENTION.findall(text):
            if not (ROOT / mention).exists():
                bad.append((path, mention))
    assert bad == []
