"""The protocol tests' server: a raw-bytes client on a fresh, initialized torchls process."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from tests.protocol.raw import RawServer


@pytest.fixture
def server() -> Iterator[RawServer]:
    raw = RawServer()
    try:
        assert "result" in raw.initialize()
        yield raw
    finally:
        raw.close()
