"""Evaluation metrics over a whole split, across all ranks, with TorchRec's RecMetricModule.

AUC, normalised entropy (NE), calibration (mean prediction / mean label), log-loss,
accuracy (prediction >= 0.5) and CTR (mean label). All but AUC are running sums (constant
memory). TorchRec's AUC keeps every prediction: 12 bytes (prediction, label, weight) per
sample on the rank that saw it, and at compute every rank gathers all of them. It is
therefore exact over at most ``auc_max_samples`` samples of the split (2**24 by default: about
200 MB per rank at compute); a larger split's AUC is that of its last ``auc_max_samples``
samples (TorchRec's window AUC), and ``EvalResult.auc_samples`` says how many it covered.

Log-loss is reported in nats (as BCE losses are; TorchRec computes it in bits). Rows
labelled -1 (padding of a last partial batch) get weight 0 and count nowhere.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.distributed as dist
from torchrec.metrics.accuracy import AccuracyMetric
from torchrec.metrics.auc import AUCMetric
from torchrec.metrics.calibration import CalibrationMetric
from torchrec.metrics.ctr import CTRMetric
from torchrec.metrics.metric_module import RecMetricModule
from torchrec.metrics.metrics_config import RecTaskInfo
from torchrec.metrics.ne import NEMetric
from torchrec.metrics.rec_metric import RecMetricList

TASK = "eval"
DEFAULT_AUC_MAX_SAMPLES = 2**24
# TorchRec's result keys, "<metric>-<task>|<window or lifetime>_<metric>", by our names.
_KEYS = {
    "auc": f"auc-{TASK}|window_auc",
    "ne": f"ne-{TASK}|lifetime_ne",
    "calibration": f"calibration-{TASK}|lifetime_calibration",
    "logloss": f"ne-{TASK}|lifetime_logloss",
    "accuracy": f"accuracy-{TASK}|lifetime_accuracy",
    "ctr": f"ctr-{TASK}|lifetime_ctr",
}
METRIC_NAMES = tuple(_KEYS)


@dataclass(frozen=True)
class EvalResult:
    """One evaluation: the metrics of the whole split (identical on every rank)."""

    step: int
    samples: int  # labelled samples evaluated, all ranks
    auc_samples: int  # samples the AUC covers (= samples unless the split exceeds the AUC bound)
    auc: float
    ne: float
    calibration: float
    logloss: float  # nats
    accuracy: float
    ctr: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        """The console line printed at each evaluation."""
        parts = "  ".join(f"{name} {getattr(self, name):.4f}" for name in METRIC_NAMES)
        return f"eval @ step {self.step}: {parts}  ({self.samples:,} samples)"


class EvalMetrics:
    """Accumulates a split's predictions on every rank; ``compute()`` is a collective."""

    def __init__(self, world_size: int = 1, rank: int = 0, batch_size: int = 1,
                 device: torch.device = torch.device("cpu"),
                 auc_max_samples: int = DEFAULT_AUC_MAX_SAMPLES) -> None:
        task = RecTaskInfo(name=TASK, label_name="label", prediction_name="prediction", weight_name="weight")
        # Every metric's window is the AUC bound (TorchRec requires it to exceed a batch); we
        # report lifetime values, except AUC (TorchRec has only a window AUC).
        window = max(auc_max_samples, batch_size * world_size)
        common = dict(world_size=world_size, my_rank=rank, batch_size=batch_size, tasks=[task],
                      compute_on_all_ranks=True, window_size=window)
        metrics = [
            AUCMetric(**common),
            NEMetric(include_logloss=True, **common),
            CalibrationMetric(**common),
            AccuracyMetric(**common),
            CTRMetric(**common),
        ]
        self.module = RecMetricModule(batch_size=batch_size, world_size=world_size, rec_tasks=[task],
                                      rec_metrics=RecMetricList(metrics)).to(device)
        self.device = device
        self.world_size = world_size
        self.auc_max_samples = window
        self.samples = torch.zeros((), dtype=torch.float64, device=device)

    @torch.no_grad()
    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """Adds a batch of logits and 0/1 labels; rows labelled -1 are padding and ignored."""
        labels = labels.detach().to(self.device).float().reshape(-1)
        weights = (labels >= 0).float()
        if not weights.any():  # a rank's share of the last batch can be all padding
            return
        self.samples += weights.sum()
        self.module.update({
            "prediction": torch.sigmoid(logits.detach().float().reshape(-1).to(self.device)),
            "label": labels.clamp(min=0),
            "weight": weights,
        })

    def compute(self, step: int) -> EvalResult:
        """The metrics over everything every rank added (call it on every rank)."""
        values = {name: float(value) for name, value in self.module.compute().items()}
        samples = self.samples.clone()
        if self.world_size > 1 and dist.is_initialized():
            dist.all_reduce(samples)
        n = int(samples.item())
        out = {name: values.get(key, math.nan) for name, key in _KEYS.items()}
        out["logloss"] *= math.log(2.0)  # bits -> nats
        return EvalResult(step=step, samples=n, auc_samples=min(n, self.auc_max_samples), **out)
