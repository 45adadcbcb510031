"""Fixtures for the real-editor tests: a private copy of examples/ per test."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.editors.harness import copy_examples


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    return copy_examples(tmp_path / "examples")
