"""Bring your own data, end to end through the real command lines, on 2 CPU ranks.

Training is started with torchrun; dlrm-data, dlrm-export and dlrm-predict run in this process
through their main(argv) (tests/cli_helper.py).

- (a team's own CSV, examples/clicks.py with examples/clicks.toml: test_walkthrough.py runs the README's block);
- MovieLens-100k, real data no one here wrote, fetched from PyPI into a cache folder that
  later runs reuse (DLRM_DIST_CACHE, default ~/.cache/dlrm_dist). PyPI unreachable is a
  failure that says so, never a skip.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dlrm_dist.cli.data_main import main as data_main
from tests.cli_helper import ok_here, run_here

pytestmark = pytest.mark.multiprocess
ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
CACHE = Path(os.environ.get("DLRM_DIST_CACHE", Path.home() / ".cache" / "dlrm_dist"))


def _run(cmd: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


def _train(data_dir: Path, run_dir: Path, *args: str) -> dict:
    _run([str(BIN / "torchrun"), "--standalone", "--nproc_per_node=2", "-m", "dlrm_dist.train",
          "--data=columnar", f"--data-dir={data_dir}", f"--run-dir={run_dir}", "--train.progress=false", *args])
    return json.loads((run_dir / "summary.json").read_text())


def test_movielens_100k_walkthrough() -> None:
    """fetch -> preprocess -> train (Embedding+MLP with residual units) on 2 ranks; the README's steps."""
    data = CACHE / "movielens-100k"
    code, fetched, err = run_here(data_main, "fetch", "movielens-100k", str(data))
    if code:
        pytest.fail(f"MovieLens-100k could not be fetched from PyPI (recbole==1.2.1): is PyPI reachable?\n"
                    f"{err[-2000:]}")
    assert "GroupLens" in fetched
    pre = CACHE / "movielens-100k-preprocessed"
    ok_here(data_main, "preprocess", "--schema", str(ROOT / "examples" / "movielens100k.toml"),
            "--input", str(data / "ratings.tsv"), "--out", str(pre), "--no-progress")
    stats = json.loads(ok_here(data_main, "stats", str(pre), "--json"))
    assert stats["splits"]["train"]["rows"] + stats["splits"]["val"]["rows"] + stats["splits"]["test"]["rows"] == 100_000
    assert {f["feature"]: f["table_size"] for f in stats["features"]}["user_id"] == 944
    run = CACHE / "movielens-100k-run"
    s = _train(pre, run, "--model.arch=embedding_mlp", "--model.residual_units=1", "--model.residual_hidden=64",
               "--model.top_mlp=64-1", "--batch-size=1024", "--steps=120", "--train.eval_interval=0")
    assert s["eval_auc"] > 0.65 and s["final_loss"] < s["first_loss"], s
