"""The export manifest (``DIR/export.json``) as a declared pydantic v2 model, and ExportError.

One model per format: ``ExportManifest`` is what dlrm-export writes (built, validated, then
dumped, so nothing is written that could not be read back) and what a loader accepts.
Strict types, finite floats, constrained ints, enums and no unknown keys (dlrm_dist.validation's
``Strict``); every problem is collected and reported at once, as ``field.path: message`` lines
of one ExportError.

Needs pydantic alone besides the standard library (no torch, no TorchRec): a server can
check a manifest without the training stack.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import Field, ValidationError, model_validator

from dlrm_dist.errors import EXIT_BAD_STATE, DlrmError
from dlrm_dist.validation import Strict, joined, messages

FORMAT = "dlrm_dist.export"
VERSION = 2  # 2: declared manifest, schema fingerprint, measured int8 cost with its limits
MODEL_FILE = "model.pt2"
MANIFEST_FILE = "export.json"
QUANTIZE = ("none", "int8")
SPLITS = ("val", "test")
INPUTS = ("dense float32 [B, D]; indices: list of int64 [n_f] per sparse feature; "
          "offsets: list of int64 [B+1] per sparse feature; returns click probability float32 [B]")


class ExportError(DlrmError):
    """An export is missing, damaged, foreign or of an unknown version; the message says which."""

    exit_code = EXIT_BAD_STATE


Count = Annotated[int, Field(ge=0)]
Rows = Annotated[int, Field(ge=1)]
Name = Annotated[str, Field(min_length=1)]
Probability = Annotated[float, Field(ge=0.0, le=1.0)]


class QuantizationCost(Strict):
    """int8 against float on an evaluation split: what quantization cost, and the limits it met."""

    measured: Literal[True] = True
    split: Literal["val", "test"]
    samples: Annotated[int, Field(ge=1)]
    float_auc: Probability
    int8_auc: Probability
    auc_difference: float  # int8 - float (negative: int8 is worse)
    float_logloss: Annotated[float, Field(ge=0.0)]
    int8_logloss: Annotated[float, Field(ge=0.0)]
    max_auc_loss: Annotated[float, Field(ge=0.0)]
    max_logloss_increase: Annotated[float, Field(ge=0.0)]


class QuantizationNotMeasured(Strict):
    """int8 whose cost could not be measured (the data was not at hand), and why."""

    measured: Literal[False] = False
    note: Name


class BestEvaluation(Strict):
    """The best evaluation of the training run when the exported checkpoint was written (early
    stopping's mark in the checkpoint manifest): its step, metric and value on the eval split."""

    split: Literal["val", "test"]
    step: Count
    metric: Name
    mode: Literal["max", "min"]
    value: float


class EvalMetrics(Strict):
    """The exported model scored on the eval split at export (float with --data; int8 always tries)."""

    split: Literal["val", "test"]
    step: Count  # the exported checkpoint's step
    samples: Annotated[int, Field(ge=1)]
    auc: Probability
    logloss: Annotated[float, Field(ge=0.0)]


class ExportMetrics(Strict):
    """What is known of the exported model's quality, each part saying where it came from."""

    best: Optional[BestEvaluation] = None  # from the checkpoint manifest (None: the run had no early stopping)
    eval: Optional[EvalMetrics] = None  # measured at export (None: the eval split was not scored)


class VocabularyFile(Strict):
    """One vocabulary table copied into the export (``vocab/<table>.json``, a JSON array)."""

    file: Annotated[str, Field(pattern=r"^vocab/[^/\\]+\.json$")]
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    values: Count  # the table's rows minus its OOV buckets


class Pipeline(Strict):
    """The fitted feature pipeline's files (the fitted schema itself is the config's ``features``)."""

    vocabularies: dict[Name, VocabularyFile] = {}


class FrozenRemapper(Strict):
    """A managed table's remapper as the program holds it, frozen (serving/remap.py): its training's
    row-wise shards (row offsets; shard s owned block s of the id space) and the ids it had admitted."""

    feature: Name
    eviction: Literal["lfu", "lru"]  # (how training admitted ids; serving admits none)
    shard_offsets: Annotated[list[Count], Field(min_length=2)]  # [0, ..., rows]
    admitted: Count

    @model_validator(mode="after")
    def _offsets_ascend(self) -> "FrozenRemapper":
        o = self.shard_offsets
        if o[0] != 0 or any(b <= a for a, b in zip(o, o[1:])):
            raise ValueError(f"shard_offsets {o[:6]} must start at 0 and ascend")
        if self.admitted > o[-1]:
            raise ValueError(f"admitted {self.admitted} is more than the table's {o[-1]} rows")
        return self


class ExportManifest(Strict):
    """``export.json``: what the program in ``model.pt2`` is, was made from, and takes."""

    format: Literal["dlrm_dist.export"] = FORMAT
    version: Literal[2] = VERSION
    checkpoint: Name
    step: Count
    quantize: Literal["none", "int8"]
    inputs: Literal[INPUTS] = INPUTS  # type: ignore[valid-type]
    dense_features: Count
    sparse_features: Annotated[list[Name], Field(min_length=1)]
    tables: dict[Name, tuple[Rows, Rows]]  # float: (rows, dim); int8: (rows, dim + 8 bytes)
    schema_fingerprint: Annotated[str, Field(pattern=r"^[0-9a-f]{16}$")]
    config: dict[str, Any]  # the training config, schema included (validated where it is used; the one
    #                         place where Infinity may appear, as in config.json: a clip bound)
    model_file: Literal["model.pt2"] = MODEL_FILE
    model_sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    quantization: Optional[Annotated[Union[QuantizationCost, QuantizationNotMeasured],
                                     Field(discriminator="measured")]] = None
    pipeline: Optional[Pipeline] = None  # None: written without its vocabularies (raw rows cannot be scored)
    metrics: Optional[ExportMetrics] = None  # None: an older dlrm-export
    remappers: dict[Name, FrozenRemapper] = {}  # managed tables (raw ids remapped in the program)

    @model_validator(mode="after")
    def _quantization_iff_int8(self) -> "ExportManifest":
        if (self.quantize == "int8") != (self.quantization is not None):
            raise ValueError("quantization is given exactly when quantize is 'int8'")
        if len(set(self.sparse_features)) != len(self.sparse_features):
            raise ValueError("sparse_features names a feature twice")
        for table, r in self.remappers.items():
            if table not in self.tables or self.tables[table][0] != r.shard_offsets[-1]:
                raise ValueError(f"remappers.{table}: not a table of {r.shard_offsets[-1]} rows in tables")
            if r.feature not in self.sparse_features:
                raise ValueError(f"remappers.{table}.feature {r.feature!r} is not one of sparse_features")
        return self

    @property
    def feature_names(self) -> list[str]:
        return list(self.sparse_features)

    def to_json(self) -> str:
        # Python mode, then json: the config keeps its infinite clip bounds (``Infinity``, as
        # config.json writes them); pydantic's JSON mode would turn them into null.
        return json.dumps(self.model_dump(mode="python"), indent=1, sort_keys=True)


def _non_finite(tree: Any, path: str = "") -> list[tuple[str, float]]:
    """Every NaN/Infinity Python's json module accepted, by its path (pydantic's parser would only say where)."""
    if isinstance(tree, float) and not math.isfinite(tree):
        return [(path or "(top level)", tree)]
    if isinstance(tree, dict):
        return [x for k, v in tree.items() for x in _non_finite(v, f"{path}.{k}" if path else str(k))]
    if isinstance(tree, list):
        return [x for i, v in enumerate(tree) for x in _non_finite(v, f"{path}[{i}]")]
    return []


def parse_manifest(text: str, origin: str) -> ExportManifest:
    """``text`` as an ExportManifest; one ExportError lists every problem by field."""
    try:
        data = json.loads(text)
    except ValueError as e:
        raise ExportError(f"{origin} is damaged: not readable JSON ({e})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise ExportError(f"{origin} is not a dlrm_dist export manifest (format {found!r}, expected {FORMAT!r})")
    odd = _non_finite({k: v for k, v in data.items() if k != "config"})  # the config may hold inf clip bounds
    if odd:
        raise ExportError(f"{origin} is not strict JSON: {', '.join(f'{p}: {v}' for p, v in odd[:5])} "
                          "(NaN and Infinity are not JSON numbers)")
    if data.get("version") != VERSION:
        raise ExportError(f"{origin} is export version {data.get('version')!r}; this dlrm_dist reads version "
                          f"{VERSION} (re-run dlrm-export with this version)")
    try:
        return ExportManifest.model_validate_json(text)
    except ValidationError as e:
        raise ExportError(joined(f"{origin} is not a valid export manifest", messages(e, ExportManifest))) from None


def read_manifest(directory: str | Path) -> ExportManifest:
    """The manifest of the export at ``directory``, checked to be ours, of a version we read, and valid."""
    d = Path(directory)
    path = d / MANIFEST_FILE
    if not d.is_dir():
        raise ExportError(f"{d} is not a directory (an export is a directory written by dlrm-export)")
    if not path.is_file():
        raise ExportError(f"{d} is not a dlrm_dist export: it has no {MANIFEST_FILE}")
    try:
        text = path.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ExportError(f"{path} is damaged: not readable JSON ({e})") from None
    return parse_manifest(text, str(path))
