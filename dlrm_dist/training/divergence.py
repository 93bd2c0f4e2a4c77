"""Why a run diverged: its input data held NaN/inf, or the optimisation blew up.

Both end in a non-finite loss, and the remedies differ (clean the data vs lower the learning
rates), so the trainer asks here before it stops. The batches of the steps since its last
finite-loss check are read again: every data source is addressed by global batch index, so
they are the very batches trained on, and the cost is paid only on this path. Each rank scans
its own share of each batch (dense features and labels: sparse ids are integers); the earliest
finding over all ranks names the step, the feature and the value.

A non-finite input from before that window (which could have turned the weights NaN while the
loss of its own step stayed finite) is not looked for: the window is what was not yet checked.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Optional

import torch
import torch.distributed as dist

from dlrm_dist.data import Dataset
from dlrm_dist.distributed.env import DistEnv

INPUT, OPTIMISATION = "input", "optimisation"  # the causes a "diverged" metrics record names


@dataclass(frozen=True)
class BadInput:
    """The first non-finite value found in a batch trained on."""

    step: int  # the training step (1-based) whose batch held it
    field: str  # "dense feature <name>" or "label"
    value: float  # nan, inf or -inf
    rank: int  # the rank whose share of the batch held it

    def describe(self) -> str:
        return f"{self.value} in {self.field} at step {self.step} (rank {self.rank}'s share of the batch)"


def _first_bad(values: torch.Tensor) -> Optional[tuple[int, float]]:
    """(column, value) of the first non-finite entry of a [rows, columns] tensor, in column order."""
    bad = ~torch.isfinite(values)
    if not bool(bad.any()):
        return None
    column = int(bad.any(dim=0).nonzero()[0])
    row = int(bad[:, column].nonzero()[0])
    return column, float(values[row, column])


def scan_batches(batches: Iterable[Any], first_step: int, dense_names: list[str], rank: int = 0) -> Optional[BadInput]:
    """The first non-finite dense feature or label in ``batches`` (the steps from ``first_step`` on)."""
    for offset, batch in enumerate(batches):
        step = first_step + offset
        dense = batch.dense_features.detach().float()
        found = _first_bad(dense.reshape(dense.shape[0], -1))
        if found is not None:
            column, value = found
            name = dense_names[column] if column < len(dense_names) else f"#{column}"
            return BadInput(step, f"dense feature {name}", value, rank)
        found = _first_bad(batch.labels.detach().float().reshape(-1, 1))
        if found is not None:
            return BadInput(step, "label", found[1], rank)
    return None


def find_bad_input(data: Dataset, env: DistEnv, global_batch_size: int, first_step: int, last_step: int,
                   dense_names: list[str]) -> Optional[BadInput]:
    """The earliest non-finite input of steps ``first_step..last_step`` over all ranks (a collective)."""
    batches = data.batches("train", global_batch_size, env.rank, env.world_size, last_step - first_step + 1,
                           start_batch=first_step - 1)
    try:
        mine = scan_batches(batches, first_step, dense_names, env.rank)
    finally:
        close = getattr(batches, "close", None)
        if close is not None:
            close()
    found: list[Optional[BadInput]] = [mine]
    if env.world_size > 1 and dist.is_available() and dist.is_initialized():
        found = [None] * env.world_size
        dist.all_gather_object(found, mine)
    return min((f for f in found if f is not None), key=lambda f: (f.step, f.rank), default=None)


def diverged_message(loss: float, step: int, bad: Optional[BadInput], embedding_lr: float, dense_lr: float) -> str:
    """What went wrong and what to change: the data, or the learning rates."""
    if bad is not None:
        return (f"the loss became {loss} at step {step}: the input data held {bad.describe()}; "
                "clean or filter that feature's values (the learning rates are not the cause)")
    return (f"the loss became {loss} at step {step} with finite inputs: training diverged (learning rates "
            f"{embedding_lr} embeddings, {dense_lr} dense); lower the learning rates")


def diverged_fields(bad: Optional[BadInput]) -> dict[str, Any]:
    """The ``diverged`` metrics record's fields (besides the message); values as text, since
    the log's JSON is strict."""
    if bad is None:
        return {"cause": OPTIMISATION}
    value = "nan" if math.isnan(bad.value) else ("inf" if bad.value > 0 else "-inf")
    return {"cause": INPUT, "input_step": bad.step, "field": bad.field, "value": value, "rank": bad.rank}
