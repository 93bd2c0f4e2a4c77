"""Scoring raw rows with an export: ``Predictor.load(export).score(records)``.

    from dlrm_dist.serving.predictor import Predictor, RecordError

    predictor = Predictor.load("exported/")
    scores = predictor.score([{"user_id": 17, "city": "city-3", "tags": ["news", "film"], "price": 12.5}])

Loading checks everything before anything is used (serving/load.py: the manifest, and
model.pt2 inspected to be data; serving/pipeline.py: the fitted schema against the
manifest's fingerprint, every vocabulary file against its checksum and the schema). A row
is read as preprocessing read a row of the training file (serving/records.py) and encoded
by data/columnar/encode.py, the one encoder; unseen values take the OOV rows as in
training. A bad row raises ``RecordError`` whose ``problems`` name each record, column and
value. Needs torch, numpy, pyarrow and pydantic: no TorchRec.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
import pyarrow as pa
import torch

from dlrm_dist.errors import DlrmError
from dlrm_dist.features.schema import FeatureSchema
from dlrm_dist.serving.load import LoadedExport, load_export
from dlrm_dist.serving.manifest import ExportError, ExportManifest, read_manifest
from dlrm_dist.serving.pipeline import FeaturePipeline, ModelInputs
from dlrm_dist.serving.records import (RECORDS, FieldProblem, InputColumn, RecordError, as_trained, detached,
                                       input_columns, integer_columns, numeric_columns, problems_of, records_batch,
                                       typed, unknown_rule)

__all__ = ["FieldProblem", "InputColumn", "Predictor", "RecordError"]
BATCH_ROWS = 4096  # rows encoded and scored at a time: bounds memory whatever a call is given


class Predictor:
    """A checked export and its fitted feature pipeline: raw rows in, click probabilities out."""

    def __init__(self, directory: Path, export: LoadedExport, pipeline: FeaturePipeline,
                 batch_rows: int = BATCH_ROWS) -> None:
        self.directory, self.export, self.pipeline, self.batch_rows = directory, export, pipeline, batch_rows
        self.schema = pipeline.schema
        self.row_schema = detached(pipeline.schema)  # rows not from a text file: named by row, never re-scanned
        self.integers = integer_columns(pipeline.schema)  # what a number in an int_modulo column meant in training

    @classmethod
    def load(cls, export_dir: str | Path, batch_rows: int = BATCH_ROWS, *,
             deltas: Sequence[str | Path] = ()) -> "Predictor":
        """The export at ``export_dir``, every file checked (ExportError naming what is wrong); with
        ``deltas``, that chain of delta exports applied to it in order (serving/delta.py checks each link)."""
        directory = Path(export_dir)
        pipeline = FeaturePipeline.load(directory, read_manifest(directory))
        loaded = load_export(directory)
        if deltas:
            from dlrm_dist.serving.delta import apply_deltas  # (only a chain needs it)

            loaded = apply_deltas(directory, loaded, [Path(d) for d in deltas])
        return cls(directory, loaded, pipeline, batch_rows)

    # -- what it serves ----------------------------------------------------------------------
    @property
    def columns(self) -> list[InputColumn]:
        """The columns a record holds: the features' (required) and the label / time (optional)."""
        return input_columns(self.schema)

    def metadata(self) -> dict[str, Any]:
        """What a client may want to know, JSON-able: the schema, the step, quantization and its cost,
        the managed tables' frozen remappers, and the chain of deltas applied (if any)."""
        from dlrm_dist.serving.delta import chain_metadata  # ({} for an export without deltas)

        m = self.export.manifest
        quantization = m.quantization.model_dump(mode="json") if m.quantization is not None else None
        return {"schema": self.schema.stable_dict(), "schema_fingerprint": m.schema_fingerprint, "step": m.step,
                "checkpoint": m.checkpoint, "quantize": m.quantize, "quantization": quantization,
                "metrics": _metrics_at_export(m),
                "remappers": {t: r.model_dump(mode="json") for t, r in m.remappers.items()},
                "columns": [{"name": c.name, "kind": c.kind, "required": c.required} for c in self.columns],
                **chain_metadata(self.export)}

    # -- scoring -----------------------------------------------------------------------------
    def score(self, records: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """float64 [len(records)] click probabilities; RecordError names every bad record (0-based)."""
        if isinstance(records, (str, bytes, Mapping)) or not isinstance(records, Sequence):
            raise RecordError([FieldProblem(0, "", None, f"give a list of records (objects), not a "
                                            f"{type(records).__name__}")])
        out = []
        for lo in range(0, len(records), self.batch_rows):
            raw, problems = records_batch(records[lo:lo + self.batch_rows], self.row_schema, first=lo,
                                          integers=self.integers)
            if problems:
                raise RecordError(problems)
            out.append(self.score_raw(raw, RECORDS, "record", lambda i, lo=lo: lo + i))
        return np.concatenate(out) if out else np.zeros(0, np.float64)

    def score_batch(self, batch: pa.RecordBatch) -> np.ndarray:
        """The same for a record batch, its columns read as preprocessing reads a Parquet file's
        (typed columns; a string column's empty cells are values, its nulls missing)."""
        missing = [c.name for c in self.columns if c.required and c.name not in batch.schema.names]
        if missing:
            raise RecordError([FieldProblem(0, c, None, f"the batch has no column {c!r} (it has "
                                            f"{batch.schema.names})") for c in missing])
        return np.concatenate([self.score_raw(batch.slice(lo, self.batch_rows), RECORDS, "record",
                                              lambda i, lo=lo: lo + i)
                               for lo in range(0, max(batch.num_rows, 1), self.batch_rows)])

    def score_raw(self, raw: pa.RecordBatch, origin: str, unit: str, number: Callable[[int], int],
                  already_typed: bool = False, schema: Optional[FeatureSchema] = None) -> np.ndarray:
        """Scores a raw batch (or one read.py already typed); a refused row is named as ``unit number(i)``."""
        return self.run(self.prepare(raw, origin, unit, number, already_typed, schema)[1])

    def prepare(self, raw: pa.RecordBatch, origin: str, unit: str, number: Callable[[int], int],
                already_typed: bool = False, schema: Optional[FeatureSchema] = None) -> tuple[pa.RecordBatch, ModelInputs]:
        """(the typed batch, the program's inputs) of a raw batch; RecordError names the rows refused."""
        schema = schema or self.row_schema
        if not already_typed:
            raw = self._numbers_as_trained(raw, number, origin, unit)
        read_rows = (lambda b: b) if already_typed else (lambda b: typed(b, schema, origin, 0))
        step = lambda b: (t := read_rows(b), self.pipeline.inputs(t, schema))  # noqa: E731
        try:
            return step(raw)
        except (DlrmError, pa.ArrowException):
            problems = problems_of(step, raw, number, origin, schema)
            raise RecordError(problems or [FieldProblem(number(0), "", None, "refused by the reader")], origin,
                              unit) from None

    def _numbers_as_trained(self, raw: pa.RecordBatch, number: Callable[[int], int], origin: str,
                            unit: str) -> pa.RecordBatch:
        """Number columns of int_modulo features read by the rule training used; refused by name when
        the export cannot tell that rule (records.integer_columns)."""
        unknown = [c for c, rule in numeric_columns(raw, self.integers).items() if rule == "unknown"]
        if unknown:
            raise RecordError([FieldProblem(number(0) if raw.num_rows else 0, c, None, unknown_rule(c, self.schema))
                               for c in unknown], origin, unit)
        return as_trained(raw, self.integers)

    @torch.no_grad()
    def run(self, inputs: ModelInputs) -> np.ndarray:
        """The program on encoded inputs; NaN scores (damaged weights the checks missed) are refused."""
        rows = inputs[0].shape[0]
        if rows == 0:
            return np.zeros(0, np.float64)
        probs = self.export.module(*(_two_rows(inputs) if rows == 1 else inputs)).double().numpy()[:rows]
        if not np.isfinite(probs).all():
            raise ExportError(f"{self.directory}: the model scored {int((~np.isfinite(probs)).sum())} of "
                              f"{len(probs)} rows NaN or infinite; no scores returned")
        return probs


def _two_rows(inputs: ModelInputs) -> ModelInputs:
    """A one-row batch as two copies of it: torch.export specializes a traced size of 1, so the
    program's guards refuse a batch of one row (and accept any other size)."""
    dense, ids, offsets = inputs
    return (torch.cat([dense, dense]), [torch.cat([i, i]) for i in ids],
            [torch.cat([o, o[1:] + o[-1]]) for o in offsets])


def _metrics_at_export(m: ExportManifest) -> dict[str, Any]:
    """The served model's metrics known at export, each part naming its split and step: ``eval``
    (measured at export on the eval split: int8, or float with --data; int8 with float's alongside)
    and ``best`` (the training run's best evaluation, from the checkpoint manifest; ``exported``
    says whether the export is that step). Empty parts are left out: {} when nothing is known."""
    out: dict[str, Any] = {}
    known = m.metrics
    if known is not None and known.eval is not None:
        out["eval"] = {"source": "measured at export", **known.eval.model_dump(mode="json")}
    q = m.quantization
    if q is not None and q.measured:
        out.setdefault("eval", {"source": "measured at export", "split": q.split, "step": m.step,
                                "samples": q.samples, "auc": q.int8_auc, "logloss": q.int8_logloss})
        out["eval"].update(float_auc=q.float_auc, float_logloss=q.float_logloss)
    if known is not None and known.best is not None:
        out["best"] = {"source": "checkpoint manifest (best evaluation of the run)",
                       **known.best.model_dump(mode="json"), "exported": known.best.step == m.step}
    return out
