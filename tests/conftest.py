"""Suite-wide wiring: the upstream fixture plugin, and a marker per test directory."""

from __future__ import annotations

from pathlib import Path

import pytest

# The operator fixtures are session-wide: ONE operator process for the whole run (imported into
# each test module, each module would start its own, and same-priority kopf peers pause).
pytest_plugins = ["tests.support.fixtures", "tests.operator.fixtures_operator"]

_MARKER_BY_DIRECTORY = {"unit": "unit", "api": "api", "integration": "integration", "operator": "operator",
                        "e2e": "e2e", "chaos": "chaos"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    tests_root = Path(__file__).parent
    for item in items:
        relative = Path(str(item.fspath)).relative_to(tests_root)
        marker = _MARKER_BY_DIRECTORY.get(relative.parts[0])
        if marker and marker not in item.keywords:
            item.add_marker(getattr(pytest.mark, marker))
