"""The README's "Training every day" walk-through, run exactly as written: a generated drifting stream ->
day 1 as partition 1 -> days 2..4 appended -> stats -> 2 ranks over days 1-2 with progressive
validation -> export -> a warm start on day 3 -> a delta export -> scoring base + delta.

The commands are read from the README block marked ``<!-- walkthrough: tests/multiprocess/
test_daily_walkthrough.py ... -->`` (so the README cannot drift from what is tested) and run one by
one in a scratch directory (``benchmarks`` linked in, as in a clone), shell-free (shlex), with the
virtualenv's bin first on PATH. After the run each step's output is checked against an independent
figure where one exists: the warm-started run's score of day 3 before training on it is the day-2
run's final evaluation of day 3 (the same weights), and base + delta scores day 4 as the day-3 run's
own evaluation did.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from dlrm_dist.cli.predict_main import main as predict_main
from tests.cli_helper import ok_here, readme_block_commands

pytestmark = pytest.mark.multiprocess
ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
MARK = "<!-- walkthrough: tests/multiprocess/test_daily_walkthrough.py"


def walkthrough_commands(readme: str) -> list[list[str]]:
    return readme_block_commands(readme, MARK)


def _records(run: Path, kind: str) -> list[dict[str, Any]]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, filter(None, lines)) if r.get("kind") == kind]


def _run_all(commands: list[list[str]], cwd: Path) -> dict[str, str]:
    """Run each command; the stdout of each, keyed by its position and first words."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": str(cwd)}
    outputs: dict[str, str] = {}
    for i, argv in enumerate(commands):
        proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"{shlex.join(argv)}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
        outputs[f"{i}:{' '.join(argv[:2])}"] = proc.stdout
    return outputs


def test_the_daily_walkthrough_runs_as_written(tmp_path: Path) -> None:
    commands = walkthrough_commands((ROOT / "README.md").read_text())
    assert [c[0] for c in commands] == ["python"] + ["dlrm-data"] * 5 + ["torchrun", "dlrm-export", "torchrun",
                                                                         "dlrm-export", "dlrm-predict"]
    (tmp_path / "benchmarks").symlink_to(ROOT / "benchmarks")  # the README runs from the repository root
    out = list(_run_all(commands, tmp_path).values())

    # the stream: 4 days, 20-40% of each later day's distinct ids unseen the day before (as recorded)
    stream = json.loads((tmp_path / "stream/stream.json").read_text())
    assert [d["day"] for d in stream["days"]] == [1, 2, 3, 4]
    for d in stream["days"][1:]:
        assert 0.2 <= d["users_unseen_yesterday"] <= 0.4 and 0.2 <= d["items_unseen_yesterday"] <= 0.4, d
    with open(tmp_path / "stream/day02.csv") as f:
        day2 = list(csv.DictReader(f))
    assert len(day2) == 20_000 and {r["day"] for r in day2} == {"2"}
    # preprocess: day 1 fitted, then each append is the next partition
    assert "partition 1: 20,000 rows" in out[1] and "fitted" in out[1], out[1]
    for n in (2, 3, 4):
        assert f"partition {n}: 20,000 rows" in out[n], out[n]
    stats = out[5]
    assert "4 partition(s) (1-4)" in stats and "new ids" in stats, stats

    # day-2 run: days 1 and 2 scored before training on them, day 3 evaluated at the end
    day2_run, day3_run = tmp_path / "runs/day2", tmp_path / "runs/day3"
    prog2 = _records(day2_run, "progressive")
    assert [r["partition"] for r in prog2] == [1, 2] and prog2[0]["step"] == 0 < prog2[1]["step"], prog2
    assert all(r["rows"] == 20_000 and 0.0 < r["auc"] < 1.0 for r in prog2), prog2
    summary2 = json.loads((day2_run / "summary.json").read_text())
    assert [r["partition"] for r in summary2["progressive"]] == [1, 2]
    assert summary2["last"]["samples"] == 20_000  # eval_partition=3, every row
    assert (tmp_path / "export_day2/export.json").is_file()

    # warm start: the day-3 run starts from day 2's weights, so its score of day 3 before training on it
    # is the day-2 run's end-of-run evaluation of day 3
    summary3 = json.loads((day3_run / "summary.json").read_text())
    assert summary3["warm_start"] is not None and "runs/day2" in summary3["warm_start"]["checkpoint"], summary3
    assert summary3["warm_start"]["step"] == summary2["step"]
    prog3 = _records(day3_run, "progressive")
    assert [r["partition"] for r in prog3] == [3] and prog3[0]["step"] == 0, prog3
    assert prog3[0]["auc"] == pytest.approx(summary2["last"]["auc"], abs=1e-6), (prog3, summary2["last"])
    assert prog3[0]["logloss"] == pytest.approx(summary2["last"]["logloss"], abs=1e-6)

    # base + delta scores day 4 as the day-3 run evaluated it (the same model, every row)
    delta = tmp_path / "delta_day3"
    assert delta.is_dir()
    report = json.loads(ok_here(predict_main, str(tmp_path / "export_day2"), "--delta", str(delta),
                                "--input", str(tmp_path / "stream/day04.csv"), "--out", str(tmp_path / "s.npy"),
                                "--no-progress", "--json"))
    assert report["metrics"]["auc"] == pytest.approx(summary3["last"]["auc"], abs=1e-6), (report, summary3["last"])
    with open(tmp_path / "stream/day04.csv") as f:
        raw = list(csv.DictReader(f))
    with open(tmp_path / "scores.csv") as f:
        scored = list(csv.DictReader(f))
    assert len(scored) == len(raw) == 20_000
    assert [r["user_id"] for r in scored] == [r["user_id"] for r in raw]
    assert all(0.0 < float(r["score"]) < 1.0 and math.isfinite(float(r["score"])) for r in scored)
