"""Export a checkpoint and score data with it, through the CLIs as a user would (serving tests)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _cli(module: str, *args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert proc.returncode == 0, f"{module} {' '.join(args)}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def export_and_predict(ckpt: Path, out: Path, data_dir: Path, split: str) -> dict:
    """``dlrm-export CKPT --out OUT`` then ``dlrm-predict OUT --data DATA --split SPLIT --json``: its report."""
    _cli("dlrm_dist.cli.export_main", str(ckpt), "--out", str(out), "--no-progress")
    report = _cli("dlrm_dist.cli.predict_main", str(out), "--data", str(data_dir), "--split", split,
                  "--out", str(out / "scores.npy"), "--no-progress", "--json")
    return json.loads(report)
