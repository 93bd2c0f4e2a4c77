"""dlrm-predict --input: a file of raw rows scored in order, streamed in batches, to .csv or .npy.

One score per input row, in input order. CSV output is ``score`` then the ``--keep`` columns
(an id passed through), written as the rows are scored; .npy holds the float64 scores. When
every row carries a label, the metrics of the scores against it are reported too (labels
derived as preprocessing derives them), when both classes occur. Memory is bounded by the batch size (and, for .npy
or metrics, 8-12 bytes a row for the scores and labels kept).
"""

from __future__ import annotations

import csv
import io
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
from tqdm import tqdm

from dlrm_dist.errors import DlrmError
from dlrm_dist.fileio import atomic_write_bytes, disk_full
from dlrm_dist.serving.predictor import Predictor
from dlrm_dist.serving.row_files import Block, FileRows


@dataclass
class RowScores:
    """What scoring a file gave: the scores, the labels (None unless every row had one), metrics."""

    rows: int = 0
    scores: list[np.ndarray] = field(default_factory=list)
    labels: Optional[list[np.ndarray]] = field(default_factory=list)
    metrics: Optional[dict[str, float]] = None

    def all_scores(self) -> np.ndarray:
        return np.concatenate(self.scores) if self.scores else np.zeros(0, np.float64)


class _CsvOut:
    """``score`` and the kept columns, written as rows are scored, published by a rename at the end."""

    def __init__(self, path: Path, keep: Sequence[str]) -> None:
        self.path, self.tmp = path, path.with_name(f".{path.name}.{os.getpid()}.tmp")
        self.file = self.tmp.open("w", newline="", encoding="utf-8")  # (not the locale's: cells are UTF-8)
        self.writer = csv.writer(self.file)
        self.writer.writerow(["score", *keep])
        self.keep = list(keep)

    def write(self, scores: np.ndarray, kept: dict[str, list[Any]]) -> None:
        columns = [kept[c] for c in self.keep]
        with disk_full(self.tmp):
            self.writer.writerows([f"{s:.8f}", *(col[i] for col in columns)] for i, s in enumerate(scores))

    def close(self, ok: bool) -> None:
        self.file.close()
        if ok:
            os.replace(self.tmp, self.path)
        else:
            self.tmp.unlink(missing_ok=True)


def score_file(predictor: Predictor, path: Path, keep: Sequence[str], batch_size: int, out: Optional[Path],
               progress: bool) -> RowScores:
    """Scores every row of ``path``; writes ``out`` (.csv streamed, .npy at the end) if given."""
    rows = FileRows(path, predictor.schema, keep, block_rows=max(batch_size, 1024))
    result = RowScores()
    csv_out = _CsvOut(out, keep) if out is not None and out.suffix == ".csv" else None
    ok = False
    try:
        with tqdm(desc="score", unit="row", disable=not progress or not sys.stderr.isatty()) as bar:
            for block in rows.blocks():
                _score_block(predictor, rows, block, batch_size, result, csv_out)
                bar.update(block.raw.num_rows)
        ok = True
    finally:
        if csv_out is not None:
            csv_out.close(ok)
    if out is not None and out.suffix == ".npy":
        buf = io.BytesIO()
        np.save(buf, result.all_scores())
        with disk_full(out, buf.tell()):
            atomic_write_bytes(out, buf.getvalue())
    if result.labels:
        result.metrics = _metrics(result.all_scores(), np.concatenate(result.labels), batch_size)
    return result


def _score_block(predictor: Predictor, rows: FileRows, block: Block, batch_size: int, result: RowScores,
                 csv_out: Optional[_CsvOut]) -> None:
    schema = predictor.schema if block.typed else predictor.row_schema
    for lo in range(0, block.raw.num_rows, batch_size):
        chunk = block.raw.slice(lo, batch_size)
        typed, inputs = predictor.prepare(chunk, str(rows.path), rows.unit, lambda i, lo=lo: block.number(lo + i),
                                          already_typed=block.typed, schema=schema)
        scores = predictor.run(inputs)
        result.scores.append(scores)
        result.rows += len(scores)
        if result.labels is not None and rows.has_label:
            result.labels.append(_labels(typed, schema))
        else:
            result.labels = None
        if csv_out is not None:
            csv_out.write(scores, {c: v[lo:lo + batch_size] for c, v in block.kept.items()})


def _labels(typed, schema) -> np.ndarray:
    """0/1 labels as preprocessing derives them; an empty or odd label only means no metrics."""
    from dlrm_dist.data.columnar.encode import labels_of

    try:
        return labels_of(typed, schema)
    except DlrmError:
        return np.full(typed.num_rows, -1.0, np.float32)


def _metrics(scores: np.ndarray, labels: np.ndarray, batch_size: int) -> Optional[dict[str, float]]:
    """The --data path's metrics (metrics/eval.py) of scores against labels; rows without one ignored."""
    import torch

    from dlrm_dist.metrics.eval import EvalMetrics

    keep = labels >= 0
    if not ((labels[keep] == 0).any() and (labels[keep] == 1).any()):
        return None  # AUC needs both classes (and torchmetrics warns without them)
    metrics = EvalMetrics(batch_size=batch_size, expected_samples=int(keep.sum()))
    for lo in range(0, len(scores), batch_size):
        probs = torch.from_numpy(scores[lo:lo + batch_size]).float()
        lab = torch.from_numpy(labels[lo:lo + batch_size])
        pad = batch_size - len(probs)  # the metrics take whole batches: padding rows are labelled -1
        if pad:
            probs, lab = torch.cat([probs, torch.zeros(pad)]), torch.cat([lab, torch.full((pad,), -1.0)])
        metrics.update_probabilities(probs, lab)
    return metrics.compute(step=0).metrics()
