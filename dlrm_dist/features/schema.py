"""The feature schema: every input column of a job, its transform, and the tables it feeds.

One declarative description (a TOML/JSON file, or a ``[features]`` section of the job
config) drives preprocessing, the loader, the synthetic generator, the model's tables, the
planner's inputs and checkpoints. Nothing else in the package knows how many dense or
sparse features a job has.

    dense   a numeric column; ``transform`` is a chain applied in order:
            none | log1p | clip (needs ``clip = [lo, hi]``) | standardize | minmax
            (standardize/minmax last: their statistics come from the training split)
    sparse  identity ids in [0, buckets), values through a vocabulary (``min_count``,
            ``oov_buckets``; ``order`` = frequency (most frequent first) | value (ascending))
            or hashed modulo ``buckets`` (``hash`` = fnv1a (FNV-1a 64 of the text) |
            int_modulo (the integer value, base 16 for text, MLPerf's)); ``delimiter`` makes a multi-hot
            list column, pooled by ``sum`` or ``mean``; features naming the same ``table``
            share it (they must agree on everything that describes the table);
            ``managed``: raw ids (FNV-1a 64 of the text, or the integer value with
            ``hash = "int_modulo"``, modulo 2**63 - 1) that TorchRec's managed-collision
            module remaps to ``buckets`` rows, a new id to a row of its own, evicting by
            ``eviction`` = lfu | lru (``decay_exponent``) every ``eviction_interval`` steps
    label   a column (``label = "clicked"``), 0/1 or thresholded (``threshold = 4``: value >= 4 -> 1),
            or categorical: ``{ column = "income", positive = [">50K"] }`` (listed texts -> 1,
            others -> 0; with ``negative = [...]`` a value in neither list is an error)
    split   train/val/test by ``random`` (seeded, per row), by a ``time`` column, or by
            ``day`` (every day but the last is train, the last day's halves val and test;
            ``days = N`` pseudo-days by line count, else one day per input file)
    input   csv | tsv | parquet | criteo_tsv (Criteo's fixed 40-field layout, its own parser)

Tables are derived (``tables(default_dim)``), as TorchRec's ``EmbeddingBagConfig`` holds
them: several ``feature_names`` per table, a per-table dim, a pooling.

The file format and every rule about it are declared once, in model.py (pydantic); this
module holds the frozen dataclasses the rest of the package uses, built from the validated
model, and re-checks any schema built in code (built-ins, ``with_fitted``) by the same rules.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any, Optional

from dlrm_dist.features.errors import SchemaError
from dlrm_dist.features.model import (
    DENSE_TRANSFORMS,
    EVICTIONS,
    FITTED_TRANSFORMS,
    HASHES,
    MANAGED_ID_SPACE,
    INPUT_FORMATS,
    ORDERS,
    POOLINGS,
    SPARSE_KINDS,
    SPLIT_BY,
    SPLITS,
    DenseModel,
    LabelModel,
    SchemaModel,
    SparseModel,
    validate_schema,
)

__all__ = ["DENSE_TRANSFORMS", "EVICTIONS", "FITTED_TRANSFORMS", "HASHES", "MANAGED_ID_SPACE", "INPUT_FORMATS", "ORDERS", "POOLINGS", "SPARSE_KINDS", "SPLITS",
           "SPLIT_BY", "DenseFeature", "Remapper", "FeatureSchema", "InputFormat", "Label", "SparseFeature", "SplitSpec",
           "TableDef", "check_schema", "from_dict"]


@dataclass(frozen=True)
class DenseFeature:
    """A numeric input; ``scale = (shift, divisor)`` is fitted by preprocessing."""

    name: str
    column: str
    transform: tuple[str, ...] = ()
    clip: Optional[tuple[float, float]] = None
    fill: float = 0.0  # value of a missing cell, before the transform
    scale: Optional[tuple[float, float]] = None

    @property
    def fitted(self) -> Optional[str]:
        """standardize / minmax if the chain ends in one (it needs ``scale``), else None."""
        return self.transform[-1] if self.transform and self.transform[-1] in FITTED_TRANSFORMS else None


@dataclass(frozen=True)
class SparseFeature:
    """A categorical input looking up ``table``."""

    name: str
    column: str
    kind: str
    table: str
    buckets: Optional[int] = None  # identity: id range; hash: modulo; vocab: unused
    hash: str = "fnv1a"  # kind hash: fnv1a (of the text) | int_modulo (the integer value % buckets)
    order: str = "frequency"  # kind vocab: frequency (most frequent first, ties by value) | value
    min_count: int = 1  # vocab: values seen fewer times in training map to an OOV bucket
    oov_buckets: int = 1  # vocab: rows reserved for unseen values (ids 0 .. oov_buckets-1)
    delimiter: Optional[str] = None  # multi-hot list column when set
    pooling: str = "sum"
    dim: Optional[int] = None  # None: the model's embedding_dim
    prefix: Optional[int] = None  # use only the first N characters of each value (e.g. a zip prefix)
    eviction: str = "lfu"  # managed: lfu | lru (TorchRec's LFU_/LRU_EvictionPolicy)
    eviction_interval: int = 1  # managed: training steps between the remapper's admissions/evictions
    decay_exponent: float = 1.0  # managed, lru: TorchRec's LRU decay exponent

    @property
    def multi_hot(self) -> bool:
        return self.delimiter is not None

    @property
    def managed(self) -> bool:
        """True when the stored ids are raw ids that the model's remapper maps to rows."""
        return self.kind == "managed"

    @property
    def integer_ids(self) -> bool:
        """True when ids come from the integer value (``int_modulo``) rather than the text's hash."""
        return self.kind in ("hash", "managed") and self.hash == "int_modulo"


@dataclass(frozen=True)
class Label:
    """The target: a numeric column (0/1, or ``threshold``: value >= it -> 1), or a categorical one
    (``positive``: texts that are 1, every other value 0; with ``negative``, a value in neither
    list is an error). Cells are compared by their text, surrounding whitespace trimmed."""

    column: str
    threshold: Optional[float] = None
    positive: Optional[tuple[str, ...]] = None
    negative: Optional[tuple[str, ...]] = None

    @property
    def categorical(self) -> bool:
        """True when the column is read as text and mapped by ``positive`` / ``negative``."""
        return self.positive is not None


@dataclass(frozen=True)
class SplitSpec:
    by: str = "random"
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    seed: int = 0
    column: Optional[str] = None  # by = "time": the timestamp column
    days: Optional[int] = None  # by = "day": pseudo-days by line count (None: one day per input file)


@dataclass(frozen=True)
class InputFormat:
    format: Optional[str] = None  # csv | tsv | parquet | criteo_tsv; None: from the file name
    delimiter: Optional[str] = None  # csv: ",", tsv: "\t"
    header: bool = True  # the first line names the columns
    columns: Optional[tuple[str, ...]] = None  # the names, when there is no header
    null_values: tuple[str, ...] = ()  # cells read as missing besides empty ones (e.g. "unknown")


@dataclass(frozen=True)
class Remapper:
    """A managed table's remapper (TorchRec's MCHManagedCollisionModule): how it admits new ids."""

    eviction: str = "lfu"  # lfu | lru
    interval: int = 1  # training steps between admissions/evictions
    decay_exponent: float = 1.0  # lru only


@dataclass(frozen=True)
class TableDef:
    """One embedding table as the model and planner see it."""

    name: str
    rows: int
    dim: int
    features: tuple[str, ...]
    pooling: str
    remapper: Optional[Remapper] = None  # kind managed: raw ids are remapped to the rows first


@dataclass(frozen=True)
class FeatureSchema:
    """Every input of a job; see the module docstring for the file format."""

    dense: tuple[DenseFeature, ...]
    sparse: tuple[SparseFeature, ...]
    label: Label = Label("label")
    split: SplitSpec = SplitSpec()
    input: InputFormat = InputFormat()
    name: str = "custom"
    vocab_rows: tuple[tuple[str, int], ...] = ()  # vocab tables' rows, set by preprocessing

    def __post_init__(self) -> None:
        check_schema(self)

    # -- derived views ---------------------------------------------------------------------------
    @property
    def num_dense(self) -> int:
        return len(self.dense)

    @property
    def dense_names(self) -> list[str]:
        return [d.name for d in self.dense]

    @property
    def sparse_names(self) -> list[str]:
        return [s.name for s in self.sparse]

    def table_rows(self, table: str) -> int:
        """Rows of ``table``: its bucket count, or vocabulary + OOV rows once preprocessed."""
        f = self.features_of(table)[0]
        if f.kind != "vocab":
            return int(f.buckets)
        rows = dict(self.vocab_rows).get(table)
        if rows is None:
            raise SchemaError(
                f"table {table!r} (feature {f.name!r}) takes its rows from a vocabulary that does "
                "not exist yet: run `dlrm-data preprocess` and train on its output directory"
            )
        return rows

    def id_range(self, f: SparseFeature) -> int:
        """The ids ``f``'s files hold and the loader hands over lie in [0, id_range): the table's
        rows, or for a managed feature the raw id space its remapper maps to rows."""
        return MANAGED_ID_SPACE if f.managed else self.table_rows(f.table)

    def features_of(self, table: str) -> list[SparseFeature]:
        return [s for s in self.sparse if s.table == table]

    @property
    def table_names(self) -> list[str]:
        return list(dict.fromkeys(s.table for s in self.sparse))

    def tables(self, default_dim: int) -> list[TableDef]:
        """The embedding tables, in order of first use."""
        out = []
        for t in self.table_names:
            fs = self.features_of(t)
            f = fs[0]
            remapper = Remapper(f.eviction, f.eviction_interval, f.decay_exponent) if f.managed else None
            out.append(TableDef(t, self.table_rows(t), f.dim or default_dim,
                                tuple(f.name for f in fs), f.pooling, remapper))
        return out

    @property
    def needs_preprocessing(self) -> bool:
        """True while a vocabulary or a fitted dense statistic is still missing."""
        known = dict(self.vocab_rows)
        return any(s.kind == "vocab" and s.table not in known for s in self.sparse) or any(
            d.fitted and d.scale is None for d in self.dense)

    def columns(self) -> list[str]:
        """Every input column the schema reads (label, split column, dense, sparse)."""
        cols = [self.label.column] + ([self.split.column] if self.split.column else [])
        cols += [d.column for d in self.dense] + [s.column for s in self.sparse]
        return list(dict.fromkeys(cols))

    # -- files ---------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))

    def stable_dict(self) -> dict[str, Any]:
        """``to_dict`` without the entries added to the format since, where they hold their defaults:
        what job records compare, so a directory written before them is still this job's."""
        return _without_added(self.to_dict())

    @classmethod
    def from_dict(cls, data: dict[str, Any], origin: str = "schema") -> "FeatureSchema":
        return from_dict(data, origin)

    def fingerprint(self) -> str:
        """A short hash of what the schema says (fitted statistics included).

        Computed over a canonical form that leaves out entries added to the format since
        fingerprints were first stored, where they hold their defaults (they say what the
        older format meant), and writes open clip bounds as the numbers they are: a schema
        that uses nothing new keeps the fingerprint checkpoints, exports and data
        directories already carry.
        """
        text = json.dumps(_canonical(dataclasses.asdict(self)), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def with_fitted(self, vocab_rows: dict[str, int], scales: dict[str, tuple[float, float]]) -> "FeatureSchema":
        """A copy holding what preprocessing learned from the training split."""
        # plain int/float: preprocessing's numbers may be numpy scalars, which a strict check refuses
        dense = tuple(dataclasses.replace(d, scale=tuple(map(float, scales[d.name])) if d.name in scales else d.scale)
                      for d in self.dense)
        rows = tuple(sorted((str(t), int(n)) for t, n in vocab_rows.items()))
        return dataclasses.replace(self, dense=dense, vocab_rows=rows)

    def without_fitted(self) -> "FeatureSchema":
        """The schema as a user wrote it (for comparing a job's schema with a directory's)."""
        dense = tuple(dataclasses.replace(d, scale=None) for d in self.dense)
        return dataclasses.replace(self, dense=dense, vocab_rows=())


# Entries added after the first stored fingerprints, with the defaults that mean the old behaviour.
_ADDED = {"sparse": {"hash": "fnv1a", "order": "frequency", "eviction": "lfu", "eviction_interval": 1,
                     "decay_exponent": 1.0}, "split": {"days": None},
          "label": {"positive": None, "negative": None}}


def _without_added(d: dict[str, Any]) -> dict[str, Any]:
    """A schema dict without the entries added since the first stored records, where they hold
    the defaults that mean the older format's behaviour."""
    out = dict(d)
    out["sparse"] = [{k: v for k, v in f.items() if not (k in _ADDED["sparse"] and v == _ADDED["sparse"][k])}
                     for f in out["sparse"]]
    for section in ("split", "label"):
        added = _ADDED[section]
        out[section] = {k: v for k, v in out[section].items() if not (k in added and v == added[k])}
    return out


def _canonical(d: dict[str, Any]) -> dict[str, Any]:
    """``asdict`` output as fingerprints have always hashed it (see ``fingerprint``)."""
    return _without_added(json.loads(json.dumps(_lists(d))))  # tuples -> lists; float("inf") stays a float


def _lists(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _lists(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_lists(v) for v in x]
    return x


def _plain(x: Any) -> Any:
    """Plain JSON data: lists for tuples, and an infinite (clip) bound as "inf" / "-inf", which
    JSON cannot hold as a number and the model reads back as one."""
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, float) and math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return x


# -- reading: the validated model -> the dataclasses ---------------------------------------------
def _dense(m: DenseModel) -> DenseFeature:
    return DenseFeature(
        name=m.name, column=m.column if m.column is not None else m.name,
        transform=tuple(t for t in m.transform if t != "none"),
        clip=tuple(m.clip) if m.clip is not None else None, fill=m.fill,
        scale=tuple(m.scale) if m.scale is not None else None,
    )


def _sparse(m: SparseModel) -> SparseFeature:
    return SparseFeature(
        name=m.name, column=m.column if m.column is not None else m.name, kind=m.kind, table=m.table_name,
        buckets=m.buckets, hash=m.hash, order=m.order, min_count=m.min_count, oov_buckets=m.oov_buckets, delimiter=m.delimiter,
        pooling=m.pooling, dim=m.dim, prefix=m.prefix, eviction=m.eviction, eviction_interval=m.eviction_interval,
        decay_exponent=m.decay_exponent,
    )


def _label(m: LabelModel) -> Label:
    def values(v: Optional[list[str]]) -> Optional[tuple[str, ...]]:
        return tuple(v) if v is not None else None
    return Label(m.column, m.threshold, values(m.positive), values(m.negative))


def _schema(m: SchemaModel) -> FeatureSchema:
    i = m.input
    return FeatureSchema(
        dense=tuple(map(_dense, m.dense)), sparse=tuple(map(_sparse, m.sparse)),
        label=_label(m.label),
        split=SplitSpec(m.split.by, tuple(m.split.fractions), m.split.seed, m.split.column, m.split.days),
        input=InputFormat(i.format, i.delimiter, i.header, tuple(i.columns) if i.columns is not None else None,
                          tuple(i.null_values)),
        name=m.name, vocab_rows=tuple(sorted(m.vocab_rows.items())),
    )


def from_dict(data: dict[str, Any], origin: str = "schema") -> FeatureSchema:
    """Builds a schema from plain data; every problem is named (with ``origin``) in one SchemaError."""
    return _schema(validate_schema(data, origin))


def check_schema(schema: FeatureSchema) -> None:
    """Everything a schema can get wrong on its own, each named: the same rules as a file's."""
    validate_schema(schema.to_dict(), f"schema {schema.name!r}")
