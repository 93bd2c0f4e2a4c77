"""The real 200-row Criteo sample. Missing is a failure, never a skip: CI must say so."""

from __future__ import annotations

from pathlib import Path

import pytest

SAMPLE = Path(__file__).resolve().parents[3] / "shared" / "data" / "criteo_sample_200.tsv"


@pytest.fixture(scope="session")
def criteo_sample() -> Path:
    if not SAMPLE.is_file():
        pytest.fail(f"the real Criteo sample is missing at {SAMPLE}: tests need ../shared/data beside the repo")
    return SAMPLE
