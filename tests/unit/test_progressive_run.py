"""Progressive validation in the trainer: one 1-rank process group in this process.

End to end on a real appended directory (days 1-3 trained, 4 evaluated; ``train.epochs=1``
counted as each partition's full batches): each next-day record equals ``--inference-only``'s
evaluation of the checkpoint of that partition's first step with that partition as the eval
partition, and summary.json lists the records and their mean after the first.

On the synthetic generator cut into day partitions (``Days``: partition d is the
training batches ``[3d, 3d + 3)`` and its split is those same rows), so the trainer meets the
``HasPartitions`` protocol exactly as a columnar directory with ``data.partitions`` offers it:

- Each partition's next-day record equals an independent score of the model of that step
  (the checkpoint of the partition's first step, or the initial weights for the first): the
  model's logits over the partition's rows, AUC counted pair by pair, log-loss by hand.
- A run stopped at step 5 and resumed to step 9 (with a killed process's score past the
  checkpoint left in metrics.jsonl) writes each partition's record once, and they equal the
  uninterrupted run's; its summary lists all of them.
- Periodic evaluation and early stopping's judgement run beside it (an eval at a partition's
  first step comes first, the partition's score second); a run with it off trains the same losses.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import pytest
import torch

from dlrm_dist.config import load_config
from dlrm_dist.data import PartitionSpan
from dlrm_dist.data.synthetic import SyntheticData
from dlrm_dist.distributed.env import DistEnv, init_distributed, teardown
from dlrm_dist.train import train as run_job
from dlrm_dist.training.build import Prepared, build_trainer, prepare
from dlrm_dist.training.progressive import resolve_progressive
from dlrm_dist.training.summary import summary_record
from dlrm_dist.training.trainer import Trainer
from tests.checkpoint_helper import JOB
from tests.dist_helper import one_rank_here

PER_DAY, DAYS, GBS = 3, 4, 64  # JOB's global batch


class Days(SyntheticData):
    """Synthetic training batches as day partitions of ``PER_DAY`` batches (the HasPartitions protocol)."""

    def __init__(self, data: SyntheticData) -> None:
        super().__init__(data.spec, data.schema, data.eval_batches)
        self.spans = [PartitionSpan(d + 1, d * PER_DAY, PER_DAY, PER_DAY * GBS, f"partition_{d + 1}")
                      for d in range(DAYS)]

    def partition_spans(self, global_batch_size: int) -> list[PartitionSpan]:
        return self.spans

    def batches(self, split: str, global_batch_size: int, rank: int, world_size: int,
                num_batches: Optional[int] = None, start_batch: int = 0) -> Iterator[Any]:
        span = next((s for s in self.spans if s.split == split), None)
        if span is None:
            return super().batches(split, global_batch_size, rank, world_size, num_batches, start_batch)
        count = span.batches - start_batch if num_batches is None else min(num_batches, span.batches - start_batch)
        return super().batches("train", global_batch_size, rank, world_size, count, span.start_batch + start_batch)


def _prepared(args: list[str], progressive: Optional[bool] = None) -> Prepared:
    """The small job on ``Days``, with train.progressive_validation as ``progressive`` says (unset: on)."""
    env = DistEnv.from_environ({}, device="cpu")
    prepared = prepare(load_config(JOB + ["--train.tensorboard=false", *args]), env)  # (tested in test_progressive)
    data = Days(prepared.data)
    train = dataclasses.replace(prepared.cfg.train, progressive_validation=progressive)
    cfg, _ = resolve_progressive(dataclasses.replace(prepared.cfg, train=train), data)
    assert cfg.train.progressive_validation is (progressive is not False)
    return dataclasses.replace(prepared, cfg=cfg, data=data)


def _pairwise_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """P(a positive outscores a negative), ties counting half: the definition, pair by pair."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    return float(((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum())
                 / (len(pos) * len(neg)))


@torch.no_grad()
def _independent_score(trainer: Trainer, split: str) -> tuple[float, float, int]:
    """(AUC, log-loss in nats, rows) of the trainer's current model on ``split``: plain forward passes."""
    trainer.model.eval()
    logits, labels = [], []
    for batch in trainer.data.batches(split, GBS, 0, 1):
        _, (_, out, lab) = trainer.model(batch)
        logits.append(out.double().flatten())
        labels.append(lab.double().flatten())
    trainer.model.train()
    z, y = torch.cat(logits), torch.cat(labels)
    logloss = float(torch.nn.functional.binary_cross_entropy_with_logits(z, y))
    return _pairwise_auc(z.numpy(), y.numpy()), logloss, len(y)


def _records(run_dir: Path, kind: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in lines if r["kind"] == kind]


def test_next_day_scores_are_the_model_of_each_partitions_first_step_and_survive_a_resume(tmp_path: Path) -> None:
    whole_ckpt, whole_run = tmp_path / "ckpt", tmp_path / "run"
    whole = ["--train.steps=9", "--train.eval_interval=3", "--train.early_stop.enabled=true",
             "--train.early_stop.patience=10", "--train.checkpoint_interval=3", "--train.keep_last=0",
             f"--train.checkpoint_dir={whole_ckpt}", f"--train.run_dir={whole_run}"]
    split_ckpt, split_run = tmp_path / "ckpt2", tmp_path / "run2"
    part = ["--train.checkpoint_interval=3", f"--train.checkpoint_dir={split_ckpt}", f"--train.run_dir={split_run}"]
    env = DistEnv.from_environ({}, device="cpu")
    with one_rank_here():
        init_distributed(env, timeout_s=120)
        try:
            # A second model (its own prepare: sharding wraps the prepared modules), never driven by the training
            # pipeline, which takes over the forward of the model it trains: the seed's weights first (the model
            # partition 1 meets), then each checkpoint's.
            scorer = build_trainer(env, _prepared(whole))
            independent = {0: _independent_score(scorer, "partition_1")}
            result = build_trainer(env, _prepared(whole)).train()
            for step in (3, 6, 9):
                scorer.checkpoints.load_weights(step)
                independent[step] = _independent_score(scorer, f"partition_{step // PER_DAY + 1}")
            # The same run stopped at 5, a killed process's score of step 6 left behind, resumed to 9.
            build_trainer(env, _prepared(["--train.steps=5", *part])).train()
            with (split_run / "metrics.jsonl").open("a") as f:
                f.write(json.dumps({"kind": "progressive", "step": 6, "partition": 3, "rows": 192, "auc": 0.1}) + "\n")
            resumed_prepared = _prepared(["--train.steps=9", *part])
            resumed = build_trainer(env, resumed_prepared).train()
            off = build_trainer(env, _prepared(["--train.steps=9", f"--train.run_dir={tmp_path / 'off'}"],
                                               progressive=False)).train()
        finally:
            teardown()

    scores = _records(whole_run, "progressive")
    assert [(r["partition"], r["step"], r["rows"], r["samples"]) for r in scores] == [
        (d + 1, d * PER_DAY, PER_DAY * GBS, PER_DAY * GBS) for d in range(DAYS)]  # partition 4: the final model's
    for r in scores:
        auc, logloss, rows = independent[r["step"]]
        assert rows == r["samples"]
        assert r["auc"] == pytest.approx(auc, abs=1e-6) and r["logloss"] == pytest.approx(logloss, rel=1e-4), r
    assert len({round(r["auc"], 6) for r in scores}) == DAYS  # four different models, not one score repeated
    assert [r["step"] for r in result.progressive] == [0, 3, 6, 9] and result.progressive[1] == {
        k: v for k, v in scores[1].items() if k != "kind"}

    # Periodic evaluation and early stopping's judgement beside it: the eval at step 3 comes first.
    kinds = [(r["kind"], r["step"]) for r in map(json.loads, (whole_run / "metrics.jsonl").read_text().splitlines())
             if r["kind"] in ("eval", "progressive")]
    assert kinds == [("progressive", 0), ("eval", 3), ("progressive", 3), ("eval", 6), ("progressive", 6),
                     ("eval", 9), ("progressive", 9)]
    assert [e.step for e in result.evals] == [3, 6, 9] and result.best is not None and result.stopped is None
    # Scoring changes nothing in training: a run without it has the same losses, and no records.
    assert off.losses == result.losses and off.progressive == [] and _records(tmp_path / "off", "progressive") == []

    # Resumed: each partition once, the killed process's line gone, every score the uninterrupted run's.
    again = _records(split_run, "progressive")
    assert [r["partition"] for r in again] == [1, 2, 3, 4]
    for a, b in zip(again, scores):
        assert a["step"] == b["step"] and a["auc"] == b["auc"] and a["logloss"] == b["logloss"]
    assert resumed.step == 9 and len(resumed.losses) == 4  # steps 6-9 in the second process
    summary = summary_record(resumed_prepared.cfg, env, resumed)
    assert [r["partition"] for r in summary["progressive"]] == [1, 2, 3, 4]  # the earlier two read back
    assert summary["progressive_mean"]["auc"] == pytest.approx(np.mean([r["auc"] for r in scores[1:]]))
    assert math.isfinite(summary["progressive_mean"]["logloss"])


def _appended_days(where: Path, rows: dict[int, int]) -> Path:
    """A columnar directory of day partitions (day 1 fitted, the others appended; tests/data/days.py's
    drifting days), without the schema's managed feature (not what is tested here)."""
    from dlrm_dist.data.columnar.partitions import Options, append, new_dataset
    from dlrm_dist.features.schema import from_dict
    from tests.data import days

    spec = days.schema_dict()
    spec["sparse"] = [f for f in spec["sparse"] if f["kind"] != "managed"]
    schema = from_dict(spec, "the days schema without its managed feature")
    out = where / "D"
    for day, n in rows.items():
        path = days.write_day(where, day, n)
        options = Options(schema if day == 1 else None, [path], out, append=day > 1, progress=False, workers=1)
        (new_dataset if day == 1 else append)(options)
    return out


def test_on_an_appended_directory_next_day_auc_is_the_checkpoints_score_of_that_partition(tmp_path: Path) -> None:
    # 40, 37 and 45 rows at batch 16: 2 full batches each, 6 steps an epoch (122 // 16 would say 7).
    data_dir = _appended_days(tmp_path, {1: 40, 2: 37, 3: 45, 4: 30})
    ckpt, run = tmp_path / "ckpt", tmp_path / "run"
    base = ["--data.source=columnar", f"--data.data_dir={data_dir}", "--model.embedding_dim=8", "--model.top_mlp=16-1",
            "--train.global_batch_size=16", "--train.progress=false", "--train.device=cpu", "--train.eval_interval=0",
            "--train.tensorboard=false"]
    train = ["--data.partitions=1-3", "--train.epochs=1", "--train.checkpoint_interval=2", "--train.keep_last=0",
             f"--train.checkpoint_dir={ckpt}", f"--train.run_dir={run}"]
    env = DistEnv.from_environ({}, device="cpu")
    with one_rank_here():
        init_distributed(env, timeout_s=120)
        try:
            prepared = prepare(load_config(base + train), env)
            summary = run_job(prepared, env)  # dlrm-train's own path: summary.json, the end-of-run lines
            # dlrm-train --inference-only of the checkpoint of partition p's first step, p as the eval partition
            checked = {}
            for step, partition in ((2, 2), (4, 3)):
                args = [f"--data.partitions={partition - 1}", f"--data.eval_partition={partition}",
                        "--train.inference_only=true", f"--train.checkpoint={ckpt / f'step_{step:08d}'}",
                        f"--train.run_dir={tmp_path / f'check{step}'}"]
                checked[step] = build_trainer(env, prepare(load_config(base + args), env)).train().evals[0]
        finally:
            teardown()
    assert prepared.cfg.train.steps == 6 and prepared.cfg.train.progressive_validation is True  # decided by the data
    scores = _records(run, "progressive")
    assert [(r["partition"], r["step"], r["rows"], r["samples"]) for r in scores] == [
        (1, 0, 40, 40), (2, 2, 37, 37), (3, 4, 45, 45)]
    for r in scores[1:]:
        independent = checked[r["step"]]
        assert independent.samples == r["samples"]
        for name in ("auc", "ne", "logloss"):
            assert r[name] == pytest.approx(getattr(independent, name), rel=1e-6, abs=1e-9), (r["partition"], name)
    written = json.loads((run / "summary.json").read_text())
    assert written == json.loads(json.dumps(summary))
    assert [r["partition"] for r in written["progressive"]] == [1, 2, 3] and written["progressive"][1]["auc"] == scores[1]["auc"]
    assert written["progressive_mean"]["partitions"] == [2, 3]
    assert written["progressive_mean"]["auc"] == pytest.approx((scores[1]["auc"] + scores[2]["auc"]) / 2)
