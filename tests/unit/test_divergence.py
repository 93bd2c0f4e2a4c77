"""A diverged run says whether its input data held NaN/inf (which feature, which step) or the
learning rates are to blame, in its error, in metrics.jsonl and in dlrm-report.

Before, every non-finite loss was blamed on the learning rates. The trainer's own
``check_finite`` runs here on a world of one (no process group: the window's batches are
re-read from a data source whose batch 4, step 5, holds inf in one dense feature).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Iterator, Optional

import pytest
import torch
from torchrec import KeyedJaggedTensor
from torchrec.datasets.utils import Batch

from dlrm_dist.checkpoint import CheckpointManager, CheckpointPolicy
from dlrm_dist.cli.report_main import main as report
from dlrm_dist.config import load_config
from dlrm_dist.distributed.env import DistEnv
from dlrm_dist.errors import EXIT_DIVERGED
from dlrm_dist.metrics.log import MetricsLog, read_metrics
from dlrm_dist.training.build import resolve
from dlrm_dist.training.divergence import INPUT, OPTIMISATION, scan_batches
from dlrm_dist.training.trainer import DivergedError, Trainer
from tests.small_job import SMALL_JOB

ENV = DistEnv(0, 1, 0, 1, torch.device("cpu"), "gloo")


def _batch(dense: torch.Tensor, labels: Optional[torch.Tensor] = None) -> Batch:
    n = dense.shape[0]
    kjt = KeyedJaggedTensor(keys=["f"], values=torch.zeros(n, dtype=torch.long), lengths=torch.ones(n, dtype=torch.int))
    return Batch(dense_features=dense, sparse_features=kjt, labels=torch.zeros(n) if labels is None else labels)


class PoisonedData:
    """Global batch ``bad_batch`` holds ``value`` in dense column ``column`` (None: clean data)."""

    feature_names = ["f"]

    def __init__(self, num_dense: int, bad_batch: Optional[int], column: int = 0, value: float = math.inf) -> None:
        self.num_dense, self.bad_batch, self.column, self.value = num_dense, bad_batch, column, value
        self.read: list[int] = []

    def batches(self, split: str, global_batch_size: int, rank: int, world_size: int,
                num_batches: Optional[int] = None, start_batch: int = 0) -> Iterator[Batch]:
        for b in range(start_batch, start_batch + (num_batches or 0)):
            self.read.append(b)
            dense = torch.ones(global_batch_size // world_size, self.num_dense)
            if b == self.bad_batch:
                dense[3, self.column] = self.value
            yield _batch(dense)


def _trainer(tmp_path: Path, data: PoisonedData) -> Trainer:
    """The trainer's divergence path on a world of one: only what check_finite reads is set."""
    cfg, _, _ = resolve(load_config(SMALL_JOB + [f"--run-dir={tmp_path}", "--optim.dense_lr=0.5"]))
    trainer = object.__new__(Trainer)  # no model, pipeline or process group: check_finite needs none
    trainer.cfg, trainer.env, trainer.data = cfg, ENV, data
    trainer.log = MetricsLog(tmp_path, enabled=True, tensorboard=False)
    trainer.log.start(resumed=False)
    trainer.checkpoints = CheckpointManager(CheckpointPolicy(), None, None, None)
    trainer.step, trainer._checked = 6, 3  # steps 1-3 were checked; steps 4-6 are the new window
    return trainer


def test_scan_names_the_first_non_finite_dense_feature_or_label() -> None:
    clean = _batch(torch.ones(4, 3))
    dirty = torch.ones(4, 3)
    dirty[2, 1], dirty[1, 2] = -math.inf, math.nan
    found = scan_batches([clean, _batch(dirty)], first_step=7, dense_names=["a", "b", "c"])
    assert (found.step, found.field, found.value) == (8, "dense feature b", -math.inf)  # column order
    found = scan_batches([_batch(torch.ones(4, 3), torch.tensor([0.0, math.nan, 1.0, 0.0]))], 1, ["a", "b", "c"])
    assert found.field == "label" and math.isnan(found.value)
    assert scan_batches([clean, clean], 1, ["a", "b", "c"]) is None


def test_inf_in_the_data_is_named_not_the_learning_rates(tmp_path: Path, capsys) -> None:
    data = PoisonedData(num_dense=13, bad_batch=4, column=2)
    trainer = _trainer(tmp_path, data)
    with pytest.raises(DivergedError) as raised:
        trainer.check_finite([0.7, 0.7, 0.7, 0.7, math.inf, math.nan])
    message = str(raised.value)
    assert raised.value.exit_code == EXIT_DIVERGED
    assert message.startswith("the loss became inf at step 5: the input data held inf in dense feature int_2 "
                              "at step 5 (rank 0's share of the batch)"), message
    assert "learning rates are not the cause" in message and "no checkpoint was written" in message
    assert data.read == [3, 4]  # the unchecked window up to the diverged step, and no more
    record = read_metrics(tmp_path / "metrics.jsonl")[-1]
    assert record == {"kind": "diverged", "step": 5, "cause": INPUT, "input_step": 5, "field": "dense feature int_2",
                      "value": "inf", "rank": 0, "message": message}
    # dlrm-report tells it too
    assert report([str(tmp_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["diverged"] == message


def test_finite_data_blames_the_learning_rates(tmp_path: Path) -> None:
    trainer = _trainer(tmp_path, PoisonedData(num_dense=13, bad_batch=None))
    with pytest.raises(DivergedError, match=r"^the loss became nan at step 6 with finite inputs: training diverged "
                                            r"\(learning rates 0.05 embeddings, 0.5 dense\); lower the learning rates"):
        trainer.check_finite([0.7, 0.7, 0.7, 0.7, 0.7, math.nan])
    assert read_metrics(tmp_path / "metrics.jsonl")[-1]["cause"] == OPTIMISATION
