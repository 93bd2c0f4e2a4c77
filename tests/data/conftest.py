"""The real 200-row Criteo sample (tests/sample_data.py finds it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import sample_data


@pytest.fixture(scope="session")
def criteo_sample() -> Path:
    return sample_data.criteo_sample()
