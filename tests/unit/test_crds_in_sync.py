"""The checked-in CRDs are exactly what the models generate."""

from __future__ import annotations

from pathlib import Path

import pytest

from strata_operator.crdgen import rendered_files

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("directory", ["crds", "charts/strata/files/crds", "manifests/base/crds"])
def test_checked_in_crds_match_the_models(directory: str) -> None:
    for name, text in rendered_files().items():
        path = ROOT / directory / name
        assert path.exists(), f"{path} is missing: run `make crds`"
        assert path.read_text(encoding="utf-8") == text, f"{path} drifted from the models: run `make crds`"


def test_every_generated_crd_is_checked_in_and_nothing_else() -> None:
    expected = set(rendered_files())
    assert {p.name for p in (ROOT / "crds").glob("*.yaml")} == expected
