"""Batch scoring: a data split turned into the export's inputs, scored, and its metrics.

The data is opened as in training (``data/resolve.py``) from the config the export carries,
for the fitted schema it carries (never resolved again): the synthetic generator or a
preprocessed columnar directory, Criteo days included (``--data DIR`` points at it on the
scoring machine; ``--split`` picks val or test), after checking that the directory was
preprocessed with the model's fitted schema.
Padding rows of a last partial batch (label -1) are dropped.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

import numpy as np
import torch
from tqdm import tqdm

from dlrm_dist.config.sections import Config
from dlrm_dist.data import Dataset
from dlrm_dist.data.resolve import build_data, schema_differences
from dlrm_dist.features import SchemaError
from dlrm_dist.features.schema import FeatureSchema
from dlrm_dist.metrics.eval import EvalMetrics, EvalResult
from dlrm_dist.serving.manifest import ExportError
from dlrm_dist.serving.pipeline import export_config  # noqa: F401 (dlrm-predict's, kept here)

SPLITS = ("val", "test")


@dataclass
class Scores:
    """Scores (click probabilities) of a split, its labels, and their metrics."""

    scores: np.ndarray
    labels: np.ndarray
    metrics: Optional[EvalResult]


def data_schema_differences(model: FeatureSchema, data: FeatureSchema) -> list[str]:
    """What differs between the model's fitted schema and a data directory's, fitted statistics included."""
    out = schema_differences(model, data)
    rows_m, rows_d = dict(model.vocab_rows), dict(data.vocab_rows)
    out += [f"vocabulary of table {t!r}: {rows_m.get(t)} rows for the model, {rows_d.get(t)} in the data"
            for t in sorted(set(rows_m) | set(rows_d)) if rows_m.get(t) != rows_d.get(t)]
    scales_d = {d.name: d.scale for d in data.dense}
    out += [f"dense feature {d.name!r}: scale {d.scale} for the model, {scales_d[d.name]} in the data"
            for d in model.dense if d.name in scales_d and d.scale != scales_d[d.name]]
    return out


def check_data_schema(cfg: Config, schema: FeatureSchema, what: str) -> None:
    """Refuses (SchemaError naming each difference) a data directory preprocessed with another schema.

    Columnar data carries its fitted schema in meta.json: it must be the model's (ids and
    scales mean what they meant in training). The synthetic generator is built from the schema itself.
    """
    if cfg.data.source == "columnar":
        from dlrm_dist.data.columnar.layout import stored_schema

        stored = stored_schema(cfg.data.data_dir)
        diffs = data_schema_differences(schema, stored)
        if diffs:
            raise SchemaError(
                f"{cfg.data.data_dir} was preprocessed with schema {stored.name!r} (fingerprint {stored.fingerprint()}), "
                f"{what} with {schema.name!r} (fingerprint {schema.fingerprint()}); they differ: {'; '.join(diffs)}. "
                "Score data preprocessed with the training's schema")


def open_split(cfg: Config, data_dir: Optional[str], split: str, what: str = "the model") -> Dataset:
    """``cfg``'s data (a resolved config's), from ``data_dir`` if given, evaluating ``split``.

    A directory given is the data, whatever the model was trained on (a model of the synthetic
    generator scores a directory preprocessed with its schema; the directory is never ignored).
    It is checked against the config's fitted schema first (``check_data_schema``).
    """
    moved = {"data_dir": data_dir, "source": "columnar"} if data_dir else {}
    data = dataclasses.replace(cfg.data, eval_split=split, **moved)
    cfg = dataclasses.replace(cfg, data=data)
    schema = FeatureSchema.from_dict(cfg.features, "the model's schema")
    check_data_schema(cfg, schema, what)
    return build_data(cfg, schema)


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
    bad = np.flatnonzero(~np.isfinite(out.scores))
    if len(bad):  # metrics over NaN scores would look like numbers (AUC ranks them somewhere)
        raise ExportError(f"the model scored {len(bad):,} of {len(out.scores):,} samples NaN or infinite "
                          f"(first: sample {bad[0]}); no scores or metrics written")
    out.metrics = metrics.compute(step=0) if len(out.labels) else None
    return out
