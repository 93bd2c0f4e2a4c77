"""Evaluation metrics over a whole split, across all ranks: TorchRec's RecMetricModule, and AUC.

NE (normalised entropy), calibration (mean prediction / mean label), log-loss, accuracy
(prediction >= 0.5) and CTR (mean label) come from TorchRec's RecMetricModule: running sums,
constant memory, summed over ranks. AUC comes from torchmetrics, because TorchRec's AUC
orders tied predictions arbitrarily (two samples with one score, one positive and one
negative, score 1.0 or 0.0 by the sort's whim; the tie counts half in torchmetrics, as in
the definition). Exact AUC keeps every prediction (12 bytes a sample on the rank that saw
it; gathered to every rank at compute), so it is exact for splits of up to
``auc_max_samples`` (2**24 by default: about 200 MB per rank at compute); a larger split gets
a binned AUC over 65,536 score thresholds (constant memory, within about 1e-4 of exact), and
``EvalResult.auc_exact`` says which.

Log-loss is reported in nats (as BCE losses are; TorchRec computes it in bits). Rows
labelled -1 (padding of a last partial batch) get weight 0 and count nowhere.

The exact AUC's state is every prediction a rank saw, so ranks hold different sizes whenever
the split does not divide evenly. torchmetrics 1.0's own gather pads those and trims them with
a list of slices as the index, which torch 2.x deprecates (a UserWarning on every rank at every
evaluation): the AUC gathers with ``gather_states`` instead, which trims with a tuple.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torchmetrics.classification import BinaryAUROC
from torchrec.metrics.accuracy import AccuracyMetric
from torchrec.metrics.calibration import CalibrationMetric
from torchrec.metrics.ctr import CTRMetric
from torchrec.metrics.metric_module import RecMetricModule
from torchrec.metrics.metrics_config import RecTaskInfo
from torchrec.metrics.ne import NEMetric
from torchrec.metrics.rec_metric import RecMetricList

TASK = "eval"
DEFAULT_AUC_MAX_SAMPLES = 2**24
AUC_BINS = 65536
AUC_FLUSH_SAMPLES = 2**20  # rows buffered before the AUC's padding filter (a host sync) runs
# TorchRec's result keys, "<metric>-<task>|<window or lifetime>_<metric>", by our names.
_KEYS = {
    "ne": f"ne-{TASK}|lifetime_ne",
    "calibration": f"calibration-{TASK}|lifetime_calibration",
    "logloss": f"ne-{TASK}|lifetime_logloss",
    "accuracy": f"accuracy-{TASK}|lifetime_accuracy",
    "ctr": f"ctr-{TASK}|lifetime_ctr",
}
METRIC_NAMES = ("auc",) + tuple(_KEYS)


@dataclass(frozen=True)
class EvalResult:
    """One evaluation: the metrics of the whole split (identical on every rank)."""

    step: int
    samples: int  # labelled samples evaluated, all ranks
    auc_exact: bool  # False: the split exceeded train.auc_max_samples, the AUC is binned
    auc: float
    ne: float
    calibration: float
    logloss: float  # nats
    accuracy: float
    ctr: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def metrics(self) -> dict[str, Any]:
        """``to_dict`` without the step: what was measured."""
        return {k: v for k, v in self.to_dict().items() if k != "step"}

    def line(self) -> str:
        """The console line printed at each evaluation."""
        parts = "  ".join(f"{name} {getattr(self, name):.4f}" for name in METRIC_NAMES)
        return f"eval @ step {self.step}: {parts}  ({self.samples:,} samples)"


def gather_states(state: torch.Tensor, group: Optional[Any] = None) -> list[torch.Tensor]:
    """Every rank's ``state``, sizes may differ by rank (torchmetrics' ``dist_sync_fn`` contract).

    As torchmetrics.utilities.distributed.gather_all_tensors: each state padded to the largest
    size in every dimension, all-gathered, then trimmed back to its rank's size, here by a tuple
    of slices (a list index is what torch deprecates).
    """
    group = group if group is not None else dist.group.WORLD
    state = state.contiguous()
    world = dist.get_world_size(group)
    size = torch.tensor(state.shape, dtype=torch.int64, device=state.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size, group=group)
    shapes = [tuple(int(n) for n in s.tolist()) for s in sizes]
    largest = [max(dims) for dims in zip(*shapes)] if state.ndim else []
    pad = [p for have, want in zip(reversed(state.shape), reversed(largest)) for p in (0, want - have)]
    padded = F.pad(state, pad) if any(pad) else state
    gathered = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(gathered, padded, group=group)
    return [g[tuple(slice(n) for n in shape)] for g, shape in zip(gathered, shapes)]


class EvalMetrics:
    """Accumulates a split's predictions on every rank; ``compute()`` is a collective."""

    def __init__(self, world_size: int = 1, rank: int = 0, batch_size: int = 1,
                 device: torch.device = torch.device("cpu"),
                 auc_max_samples: int = DEFAULT_AUC_MAX_SAMPLES, expected_samples: Optional[int] = None) -> None:
        task = RecTaskInfo(name=TASK, label_name="label", prediction_name="prediction", weight_name="weight")
        # Lifetime values are reported; TorchRec still keeps a window, which must exceed a batch.
        common = dict(world_size=world_size, my_rank=rank, batch_size=batch_size, tasks=[task],
                      compute_on_all_ranks=True, window_size=max(batch_size * world_size, 1) * 1000)
        metrics = [NEMetric(include_logloss=True, **common), CalibrationMetric(**common), AccuracyMetric(**common),
                   CTRMetric(**common)]
        self.module = RecMetricModule(batch_size=batch_size, world_size=world_size, rec_tasks=[task],
                                      rec_metrics=RecMetricList(metrics)).to(device)
        self.auc_exact = expected_samples is None or expected_samples <= auc_max_samples
        self.auc = BinaryAUROC(thresholds=None if self.auc_exact else AUC_BINS, dist_sync_fn=gather_states).to(device)
        self.device = device
        self.world_size = world_size
        self.samples = torch.zeros((), dtype=torch.float64, device=device)
        self._pending: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._pending_rows = 0

    @torch.no_grad()
    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """Adds a batch of logits and 0/1 labels; rows labelled -1 are padding and ignored."""
        self.update_probabilities(torch.sigmoid(logits.detach().float()), labels)

    @torch.no_grad()
    def update_probabilities(self, probs: torch.Tensor, labels: torch.Tensor) -> None:
        """As ``update``, for predicted probabilities (a served model's output).

        Nothing here waits for the device: padding gets weight 0 in the running sums, and the
        AUC's rows are buffered and filtered (a boolean index, which syncs) once per
        ``AUC_FLUSH_SAMPLES`` rows instead of once per batch.
        """
        labels = labels.detach().to(self.device).float().reshape(-1)
        weights = (labels >= 0).float()
        self.samples += weights.sum()
        probs = probs.detach().float().reshape(-1).to(self.device)
        self.module.update({"prediction": probs, "label": labels.clamp(min=0), "weight": weights})
        self._pending.append((probs, labels))
        self._pending_rows += labels.numel()
        if self._pending_rows >= AUC_FLUSH_SAMPLES:
            self._flush_auc()

    def _flush_auc(self) -> None:
        if not self._pending:
            return
        probs = torch.cat([p for p, _ in self._pending])
        labels = torch.cat([lab for _, lab in self._pending])
        self._pending, self._pending_rows = [], 0
        keep = labels >= 0
        self.auc.update(probs[keep], labels[keep].long())

    def compute(self, step: int) -> EvalResult:
        """The metrics over everything every rank added (call it on every rank)."""
        self._flush_auc()
        values = {name: float(value) for name, value in self.module.compute().items()}
        samples = self.samples.clone()
        if self.world_size > 1 and dist.is_initialized():
            dist.all_reduce(samples)
        n = int(samples.item())
        out = {name: values.get(key, math.nan) for name, key in _KEYS.items()}
        out["logloss"] *= math.log(2.0)  # bits -> nats
        out["auc"] = float(self.auc.compute())  # torchmetrics gathers every rank's state
        return EvalResult(step=step, samples=n, auc_exact=self.auc_exact, **out)
