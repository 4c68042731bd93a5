"""Fixtures shared by the runtime tests: small ONNX models with a medhash model card; the
requires_data mark (tests/_data.py)."""
from __future__ import annotations

from pathlib import Path

import pytest

from _data import missing_data
from _models import tiny_model


def pytest_runtest_setup(item: pytest.Item) -> None:
    for mark in item.iter_markers("requires_data"):
        if not mark.kwargs["available"]:
            missing_data(mark.kwargs["reason"])


@pytest.fixture(scope="session")
def model(tmp_path_factory) -> Path:
    """A tiny exported-model stand-in (numpy reference in tests/_models.py), seed 0."""
    p = tmp_path_factory.mktemp("model") / "tiny.onnx"
    tiny_model(p)
    return p


@pytest.fixture(scope="session")
def other_model(tmp_path_factory) -> Path:
    """The same architecture with other weights: another fingerprint."""
    p = tmp_path_factory.mktemp("other_model") / "other.onnx"
    tiny_model(p, seed=1)
    return p
