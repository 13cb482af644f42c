"""Shared pytest options.

``--update-goldens`` makes the conformance runner rewrite the expected-output
sidecars under specs/conformance/ instead of comparing against them; review the
diff by hand before keeping it.
"""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-goldens",
        action="store_true",
        default=False,
        help="rewrite the golden sidecars of specs/conformance/ instead of comparing against them",
    )


@pytest.fixture
def update_goldens(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--update-goldens"))
