"""Evaluation metrics on one process: accuracy beside AUC and log-loss, padding ignored."""

from __future__ import annotations

import math

import torch

from dlrm_dist.metrics.eval import EvalMetrics


def test_accuracy_auc_logloss_against_hand_computation() -> None:
    logits = torch.tensor([2.0, -1.0, 0.5, -3.0, 0.1, 9.0])
    labels = torch.tensor([1.0, 0.0, 0.0, 1.0, -1.0, -1.0])  # the last two are padding
    m = EvalMetrics()
    m.update(logits[:3], labels[:3])
    m.update(logits[3:], labels[3:])
    m.update(logits[4:], labels[4:])  # a batch that is all padding changes nothing
    out = m.compute()
    kept = [(2.0, 1), (-1.0, 0), (0.5, 0), (-3.0, 1)]
    assert out["accuracy"] == (1 + 1 + 0 + 0) / 4  # p >= 0.5 <=> logit >= 0
    # AUC: pairs (positive, negative) ordered correctly: (2,-1) (2,0.5) yes; (-3,-1) (-3,0.5) no
    assert out["auc"] == 0.5
    ll = -sum(math.log(1 / (1 + math.exp(-z))) if y else math.log(1 - 1 / (1 + math.exp(-z))) for z, y in kept) / 4
    assert abs(out["logloss"] - ll) < 1e-6
