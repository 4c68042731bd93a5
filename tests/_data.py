"""Where the tests find the real data: ../shared/data beside the checkout, or $MEDHASH_DATA.

A test that needs data says so with `requires_data(available, reason)` (a mark) or
`missing_data(reason)` (inside a fixture or test). Outside CI a missing file skips the test
with its reason; in CI (CI=true) it fails, so a CI run can never pass by skipping what it
was meant to check.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(os.environ.get("MEDHASH_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
NIH_PNG_DIR = SHARED_DATA / "nih_png_1024"
NIH_PNGS = sorted(NIH_PNG_DIR.glob("*.png"))
IN_CI = os.environ.get("CI", "").lower() == "true"


def requires_data(available: bool, reason: str) -> pytest.MarkDecorator:
    """Mark a test (or a module, as pytestmark) that needs real data; see the module docstring."""
    return pytest.mark.requires_data(available=bool(available), reason=reason)


def missing_data(reason: str) -> None:
    """Skip (outside CI) or fail (in CI) the running test because data it needs is missing."""
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: missing data fails instead of skipping; set MEDHASH_DATA)")
    pytest.skip(reason)
