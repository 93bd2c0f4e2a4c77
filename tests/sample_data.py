"""Where the real 200-row Criteo sample lives, wherever the repository was cloned.

Looked for in ``$DLRM_DIST_SHARED/data`` if set, in ``shared/data`` beside the repository
(how CI lays it out), and in the workspace's ``/work/shared/data`` (a clone elsewhere, e.g.
/tmp). Missing is a failure, never a skip: CI must say so.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

NAME = "criteo_sample_200.tsv"
ROOT = Path(__file__).resolve().parents[1]


def _candidates() -> list[Path]:
    dirs = [Path(os.environ["DLRM_DIST_SHARED"])] if os.environ.get("DLRM_DIST_SHARED") else []
    return [d / "data" / NAME for d in dirs + [ROOT.parent / "shared", Path("/work/shared")]]


def criteo_sample() -> Path:
    """The sample's path; fails the test naming every place looked at if it is nowhere."""
    for path in _candidates():
        if path.is_file():
            return path
    pytest.fail(f"the real Criteo sample {NAME} is missing; looked at: {', '.join(map(str, _candidates()))} "
                "(set DLRM_DIST_SHARED to the directory holding data/)")
