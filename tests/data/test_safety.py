"""Data and run safety: inputs that once crashed, were silently accepted, or said too little.

Each test failed on the code before the fix it names.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dlrm_dist.data.npy import NpyWriter


def test_empty_appends_and_zero_width_rows(tmp_path: Path) -> None:
    """A day that receives no rows from a chunk used to crash in memoryview().cast."""
    w = NpyWriter(tmp_path / "a.npy", np.float32, (3,))
    w.append(np.zeros((0, 3)))
    w.append(np.ones((2, 3)))
    w.close()
    assert np.load(tmp_path / "a.npy").shape == (2, 3)
    w = NpyWriter(tmp_path / "b.npy", np.float32, (0,))  # a schema without dense features
    w.append(np.zeros((5, 0)))
    w.close()
    assert np.load(tmp_path / "b.npy").shape == (5, 0)


def test_preprocessing_cli_starts_without_torch() -> None:
    """`dlrm-data preprocess` spent 5.4 s importing torchrec before reading a byte."""
    import subprocess
    import sys

    code = ("import sys, dlrm_dist.cli.data_main, dlrm_dist.data.columnar.criteo_tsv, dlrm_dist.data.columnar.preprocess, "
            "dlrm_dist.data.movielens; print(sorted(m for m in ('torch', 'torchrec', 'fbgemm_gpu') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
