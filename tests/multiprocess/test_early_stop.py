"""Early stopping on 2 CPU ranks: every rank stops at the same step, the best checkpoint survives
keep_last=1, the summary reports best, last and the best model's test score (confirmed
independently by tests/multiprocess/test_walkthrough.py: the exported best checkpoint scores the
test split as the summary says, within 1e-6; --inference-only's step: tests/unit/test_early_stop.py),
and dlrm-export's argument resolution picks the best checkpoint of the run directory.

One small job (a team's CSV from examples/clicks.py, preprocessed in-process) run through
``dlrm_dist.train.run`` in each spawned rank. ``min_delta`` is large, so after the first
evaluation hardly anything counts as an improvement: the run stops after ``patience``
evaluations, long before its epochs are done.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from examples.clicks import write_clicks
from tests.dist_helper import run_ranks

pytestmark = pytest.mark.multiprocess
ROOT = Path(__file__).resolve().parents[2]
GBS, EPOCHS, EVERY, PATIENCE = 256, 20, 6, 2


def train_rank(args: list[str], out: str, name: str) -> None:
    """One job in this rank (the process group is its own: a second job gets fresh ranks and a port)."""
    import os

    from dlrm_dist.train import run

    record = run(args)
    Path(out, f"{name}{os.environ['RANK']}.json").write_text(json.dumps(
        {"step": record["step"], "steps": record["steps"], "stopped": record["stopped_early"],
         "eval_auc": record["eval_auc"]}))


def test_early_stop_keeps_and_tests_the_best(tmp_path: Path) -> None:
    from dlrm_dist.checkpoint.manager import export_source
    from dlrm_dist.checkpoint.manifest import Manifest
    from dlrm_dist.checkpoint.store import published, step_of
    from dlrm_dist.cli.data_main import main as data_main

    write_clicks(tmp_path / "clicks.csv", rows=6000)
    assert data_main(["preprocess", "--schema", str(ROOT / "examples" / "clicks.toml"), "--input",
                      str(tmp_path / "clicks.csv"), "--out", str(tmp_path / "data"), "--no-progress"]) == 0
    run_dir, ckpt = tmp_path / "run", tmp_path / "ckpt"
    args = ["--data=columnar", f"--data-dir={tmp_path / 'data'}", f"--run-dir={run_dir}", "--train.progress=false",
            "--model.arch=embedding_mlp", "--model.top_mlp=32-1", "--model.embedding_dim=8", f"--batch-size={GBS}",
            f"--train.epochs={EPOCHS}", f"--train.eval_interval={EVERY}", f"--checkpoint-dir={ckpt}",
            "--train.keep_last=1", f"--train.early_stop.patience={PATIENCE}", "--train.early_stop.min_delta=0.02",
            "--train.tensorboard=false"]  # no train.steps: early stopping is on by default (a val split)
    run_ranks(train_rank, 2, args, str(tmp_path), "train", timeout=300)

    ranks = [json.loads((tmp_path / f"train{r}.json").read_text()) for r in range(2)]
    assert ranks[0] == ranks[1] and ranks[0]["stopped"], ranks  # the same stop on every rank
    summary = json.loads((run_dir / "summary.json").read_text())
    stop, best, last, test = summary["step"], summary["best"], summary["last"], summary["test"]
    per_epoch = 4767 // GBS  # the split's train rows (80% of 6,000, as preprocessing reported) // batch
    assert stop < EPOCHS * per_epoch and stop % EVERY == 0 and summary["early_stop"] is True
    assert best["step"] < stop == last["step"] and best["metric"] == "auc" and best["checkpoint_kept"]
    evals = {e["step"]: e for e in summary["evals"]}
    assert stop == best["step"] + PATIENCE * EVERY  # patience evaluations without a gain > min_delta
    assert all(evals[s]["auc"] <= best["auc"] + 0.02 for s in evals if s > best["step"])
    assert best["auc"] == pytest.approx(evals[best["step"]]["auc"]) and last["auc"] == evals[stop]["auc"]
    # scored once on the test split with the best model (not the last one)
    assert test["model"] == "best" and test["step"] == best["step"] and test["samples"] == 617
    # keep_last=1 kept the newest and the best; the newest manifest names the best
    assert [step_of(p) for p in published(ckpt)] == [best["step"], stop]
    assert Manifest.read(published(ckpt)[-1]).best.step == best["step"]
    # dlrm-export RUN_OR_CKPT: the run directory and the checkpoint root both mean the best
    for where in (run_dir, ckpt):
        source = export_source(where)
        assert source.step == best["step"] and "best evaluation" in source.why
    assert export_source(run_dir, stop).step == stop
    kinds = [json.loads(line)["kind"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert kinds[-2:] == ["early_stop", "test"]
