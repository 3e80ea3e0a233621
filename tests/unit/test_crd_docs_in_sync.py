"""docs/crd-reference.md is what hack/gen_crd_docs.py makes of the checked-in CRDs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def test_the_crd_reference_matches_the_crds() -> None:
    result = subprocess.run([sys.executable, str(ROOT / "hack" / "gen_crd_docs.py"), "--check"],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_reference_lists_every_spec_field_of_the_agent_deployment() -> None:
    text = (ROOT / "docs" / "crd-reference.md").read_text(encoding="utf-8")
    for field in ("spec.runtime.models[].baseUrl", "spec.networkPolicy.egress.cidrs", "status.conditions[].reason",
                  "spec.secretEnv[].secretKeyRef.name"):
        assert f"`{field}`" in text
