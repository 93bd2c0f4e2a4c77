"""AUC, log-loss and accuracy over a whole evaluation split, computed across all ranks.

torchmetrics keeps each rank's predictions and gathers them on ``compute()`` (a
collective: every rank must call it), so the AUC is that of the global split, not an
average of per-rank AUCs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchmetrics import MeanMetric
from torchmetrics.classification import BinaryAccuracy, BinaryAUROC


class EvalMetrics:
    """Accumulates logits and labels; ``compute()`` gives global auc, logloss and accuracy."""

    def __init__(self) -> None:
        self.auc = BinaryAUROC()
        self.logloss = MeanMetric()
        self.accuracy = BinaryAccuracy(threshold=0.5)  # predicted probability >= 0.5 -> 1

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """Adds a batch; rows labelled -1 (padding of a last partial batch) are ignored."""
        logits, labels = logits.detach().float().cpu(), labels.detach().cpu()
        keep = labels >= 0
        logits, labels = logits[keep], labels[keep]
        if labels.numel() == 0:  # a rank's share of the last batch can be all padding
            return
        probs = torch.sigmoid(logits)
        self.auc.update(probs, labels.long())
        self.accuracy.update(probs, labels.long())
        per_sample = F.binary_cross_entropy_with_logits(logits, labels.float(), reduction="none")
        self.logloss.update(per_sample)

    def compute(self) -> dict[str, float]:
        return {"auc": float(self.auc.compute()), "logloss": float(self.logloss.compute()),
                "accuracy": float(self.accuracy.compute())}
