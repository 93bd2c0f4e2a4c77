"""Batch scoring: a data split turned into the export's inputs, scored, and its metrics.

The data is opened as in training (``data/resolve.py``) from the config the export carries:
the synthetic generator, a preprocessed Criteo directory or a schema-driven columnar one
(``--data DIR`` points at it on the scoring machine; ``--split`` picks val or test).
Padding rows of a last partial batch (label -1) are dropped.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

import numpy as np
import torch
from tqdm import tqdm

from dlrm_dist.config.loader import config_from_dict
from dlrm_dist.config.schema import Config
from dlrm_dist.data import Dataset
from dlrm_dist.data.resolve import build_data
from dlrm_dist.features.schema import FeatureSchema
from dlrm_dist.metrics.eval import EvalMetrics, EvalResult

SPLITS = ("val", "test")


@dataclass
class Scores:
    """Scores (click probabilities) of a split, its labels, and their metrics."""

    scores: np.ndarray
    labels: np.ndarray
    metrics: Optional[EvalResult]


def open_split(config: dict[str, Any], data_dir: Optional[str], split: str) -> Dataset:
    """The data of an export's training config, from ``data_dir`` if given, evaluating ``split``."""
    cfg: Config = config_from_dict(config, "export manifest config")
    data = dataclasses.replace(cfg.data, eval_split=split, **({"data_dir": data_dir} if data_dir else {}))
    cfg = dataclasses.replace(cfg, data=data)
    return build_data(cfg, FeatureSchema.from_dict(cfg.features, "export manifest schema"))


def model_inputs(batch: Any, feature_names: list[str]) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """A TorchRec batch as the serving inputs: dense, per-feature ids and per-feature offsets."""
    bags = batch.sparse_features.to_dict()
    return (batch.dense_features.float(), [bags[f].values().long() for f in feature_names],
            [bags[f].offsets().long() for f in feature_names])


def eval_batches(data: Dataset, batch_size: int) -> tuple[Iterator[Any], int]:
    count = data.eval_batch_count(batch_size)
    return data.batches("eval", batch_size, 0, 1, count), count


@torch.no_grad()
def score(model: Callable[..., torch.Tensor], data: Dataset, feature_names: list[str], batch_size: int = 4096,
          progress: bool = True, desc: str = "score") -> Scores:
    """Scores the data's evaluation split with ``model`` (an export's module or a ServingDLRM)."""
    batches, count = eval_batches(data, batch_size)
    metrics = EvalMetrics(batch_size=batch_size, expected_samples=count * batch_size)
    scores, labels = [], []
    for batch in tqdm(batches, total=count, desc=desc, unit="batch", disable=not progress):
        probs = model(*model_inputs(batch, feature_names)).float()
        keep = batch.labels >= 0
        metrics.update_probabilities(probs, batch.labels)
        scores.append(probs[keep].numpy())
        labels.append(batch.labels[keep].numpy())
    out = Scores(np.concatenate(scores), np.concatenate(labels).astype(np.float32), None)
    out.metrics = metrics.compute(step=0) if len(out.labels) else None
    return out
