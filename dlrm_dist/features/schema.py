"""The feature schema: every input column of a job, its transform, and the tables it feeds.

One declarative description (a TOML/JSON file, or a ``[features]`` section of the job
config) drives preprocessing, the loader, the synthetic generator, the model's tables, the
planner's inputs and checkpoints. Nothing else in the package knows how many dense or
sparse features a job has.

    dense   a numeric column; ``transform`` is a chain applied in order:
            none | log1p | clip (needs ``clip = [lo, hi]``) | standardize | minmax
            (standardize/minmax last: their statistics come from the training split)
    sparse  identity ids in [0, buckets), values through a vocabulary (``min_count``,
            ``oov_buckets``) or hashed modulo ``buckets``; ``delimiter`` makes a multi-hot
            list column, pooled by ``sum`` or ``mean``; features naming the same ``table``
            share it (they must agree on everything that describes the table)
    label   a column, 0/1 or thresholded (``threshold = 4``: value >= 4 -> 1)
    split   train/val/test by ``random`` (seeded, per row) or by a ``time`` column

Tables are derived (``tables(default_dim)``), as TorchRec's ``EmbeddingBagConfig`` holds
them: several ``feature_names`` per table, a per-table dim, a pooling.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any, Optional

from dlrm_dist.features.errors import SchemaError
from dlrm_dist.names import TABLE_PREFIX

DENSE_TRANSFORMS = ("none", "log1p", "clip", "standardize", "minmax")
FITTED_TRANSFORMS = ("standardize", "minmax")  # statistics from the training split
SPARSE_KINDS = ("identity", "vocab", "hash")
POOLINGS = ("sum", "mean")
SPLITS = ("train", "val", "test")
SPLIT_BY = ("random", "time")
INPUT_FORMATS = ("csv", "tsv", "parquet")


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
    min_count: int = 1  # vocab: values seen fewer times in training map to an OOV bucket
    oov_buckets: int = 1  # vocab: rows reserved for unseen values (ids 0 .. oov_buckets-1)
    delimiter: Optional[str] = None  # multi-hot list column when set
    pooling: str = "sum"
    dim: Optional[int] = None  # None: the model's embedding_dim
    prefix: Optional[int] = None  # use only the first N characters of each value (e.g. a zip prefix)

    @property
    def multi_hot(self) -> bool:
        return self.delimiter is not None


@dataclass(frozen=True)
class Label:
    column: str
    threshold: Optional[float] = None


@dataclass(frozen=True)
class SplitSpec:
    by: str = "random"
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    seed: int = 0
    column: Optional[str] = None  # by = "time": the timestamp column


@dataclass(frozen=True)
class InputFormat:
    format: Optional[str] = None  # csv | tsv | parquet; None: from the file name
    delimiter: Optional[str] = None  # csv: ",", tsv: "\t"
    header: bool = True  # the first line names the columns
    columns: Optional[tuple[str, ...]] = None  # the names, when there is no header
    null_values: tuple[str, ...] = ()  # cells read as missing besides empty ones (e.g. "unknown")


@dataclass(frozen=True)
class TableDef:
    """One embedding table as the model and planner see it."""

    name: str
    rows: int
    dim: int
    features: tuple[str, ...]
    pooling: str


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
            out.append(TableDef(t, self.table_rows(t), fs[0].dim or default_dim,
                                tuple(f.name for f in fs), fs[0].pooling))
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

    @classmethod
    def from_dict(cls, data: dict[str, Any], origin: str = "schema") -> "FeatureSchema":
        return from_dict(data, origin)

    def fingerprint(self) -> str:
        """A short hash of what the schema says (fitted statistics included)."""
        text = json.dumps(self.to_dict(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def with_fitted(self, vocab_rows: dict[str, int], scales: dict[str, tuple[float, float]]) -> "FeatureSchema":
        """A copy holding what preprocessing learned from the training split."""
        dense = tuple(dataclasses.replace(d, scale=scales.get(d.name, d.scale)) for d in self.dense)
        return dataclasses.replace(self, dense=dense, vocab_rows=tuple(sorted(vocab_rows.items())))

    def without_fitted(self) -> "FeatureSchema":
        """The schema as a user wrote it (for comparing a job's schema with a directory's)."""
        dense = tuple(dataclasses.replace(d, scale=None) for d in self.dense)
        return dataclasses.replace(self, dense=dense, vocab_rows=())


def _plain(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


# -- reading ---------------------------------------------------------------------------------
_DENSE_KEYS = {"name", "column", "transform", "clip", "fill", "scale"}
_SPARSE_KEYS = {"name", "column", "kind", "table", "buckets", "min_count", "oov_buckets", "delimiter", "pooling",
                "dim", "prefix"}
_TOP_KEYS = {"name", "dense", "sparse", "label", "split", "input", "vocab_rows"}


def _keys(d: Any, allowed: set[str], where: str) -> dict[str, Any]:
    if not isinstance(d, dict):
        raise SchemaError(f"{where} must be a table of keys, not {type(d).__name__}")
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise SchemaError(f"{where}: unknown key(s) {unknown}; valid keys: {', '.join(sorted(allowed))}")
    return d


def _dense(d: dict[str, Any], where: str) -> DenseFeature:
    d = _keys(d, _DENSE_KEYS, where)
    if "name" not in d:
        raise SchemaError(f"{where} needs a name")
    t = d.get("transform", ())
    chain = tuple(x for x in ([t] if isinstance(t, str) else t) if x != "none")
    clip = tuple(float(v) for v in d["clip"]) if d.get("clip") is not None else None
    scale = tuple(float(v) for v in d["scale"]) if d.get("scale") is not None else None
    return DenseFeature(d["name"], d.get("column", d["name"]), chain, clip, float(d.get("fill", 0.0)), scale)


def _sparse(d: dict[str, Any], where: str) -> SparseFeature:
    d = _keys(d, _SPARSE_KEYS, where)
    if "name" not in d:
        raise SchemaError(f"{where} needs a name")
    name = d["name"]
    return SparseFeature(
        name=name, column=d.get("column", name), kind=d.get("kind", "vocab"),
        table=d.get("table", TABLE_PREFIX + name), buckets=d.get("buckets"),
        min_count=int(d.get("min_count", 1)), oov_buckets=int(d.get("oov_buckets", 1)),
        delimiter=d.get("delimiter"), pooling=d.get("pooling", "sum"), dim=d.get("dim"), prefix=d.get("prefix"),
    )


def from_dict(data: dict[str, Any], origin: str = "schema") -> FeatureSchema:
    """Builds and checks a schema; every error names ``origin`` and the offending entry."""
    try:
        data = _keys(data, _TOP_KEYS, origin)
        dense = tuple(_dense(d, f"{origin}: dense[{i}]") for i, d in enumerate(data.get("dense", [])))
        sparse = tuple(_sparse(s, f"{origin}: sparse[{i}]") for i, s in enumerate(data.get("sparse", [])))
        label = Label(**_keys(data.get("label", {"column": "label"}), {"column", "threshold"}, f"{origin}: [label]"))
        split_d = dict(_keys(data.get("split", {}), {"by", "fractions", "seed", "column"}, f"{origin}: [split]"))
        if "fractions" in split_d:
            split_d["fractions"] = tuple(float(x) for x in split_d["fractions"])
        input_d = dict(_keys(data.get("input", {}), {"format", "delimiter", "header", "columns", "null_values"},
                             f"{origin}: [input]"))
        for key in ("columns", "null_values"):
            if input_d.get(key) is not None:
                input_d[key] = tuple(input_d[key])
        vocab_rows = tuple(sorted((str(k), int(v)) for k, v in dict(data.get("vocab_rows", {})).items()))
        return FeatureSchema(dense, sparse, label, SplitSpec(**split_d), InputFormat(**input_d),
                             name=str(data.get("name", "custom")), vocab_rows=vocab_rows)
    except SchemaError as e:
        msg = str(e)
        raise SchemaError(msg if msg.startswith(origin) else f"{origin}: {msg}") from None
    except (TypeError, ValueError) as e:
        raise SchemaError(f"{origin}: {e}") from None


# -- checks ----------------------------------------------------------------------------------
def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _check_dense(d: DenseFeature) -> None:
    where = f"dense feature {d.name!r}"
    bad = [t for t in d.transform if t not in DENSE_TRANSFORMS]
    if bad:
        raise SchemaError(f"{where}: transform {bad[0]!r} is not one of {', '.join(DENSE_TRANSFORMS)}")
    fitted = [i for i, t in enumerate(d.transform) if t in FITTED_TRANSFORMS]
    if fitted and fitted != [len(d.transform) - 1]:
        raise SchemaError(f"{where}: standardize/minmax must be the last transform, and only one of them")
    if "clip" in d.transform and (d.clip is None or len(d.clip) != 2 or not d.clip[0] <= d.clip[1]):
        raise SchemaError(f"{where}: transform clip needs clip = [lo, hi] with lo <= hi")
    if d.scale is not None and (len(d.scale) != 2 or not all(map(math.isfinite, d.scale)) or d.scale[1] <= 0):
        raise SchemaError(f"{where}: scale {d.scale} must be (shift, divisor > 0), finite")


def _check_sparse(s: SparseFeature) -> None:
    where = f"sparse feature {s.name!r}"
    if s.kind not in SPARSE_KINDS:
        raise SchemaError(f"{where}: kind {s.kind!r} is not one of {', '.join(SPARSE_KINDS)}")
    if s.kind in ("identity", "hash") and not (_is_int(s.buckets) and s.buckets > 0):
        raise SchemaError(f"{where}: kind {s.kind} needs buckets = a positive integer (the table's rows)")
    if s.kind == "vocab" and s.buckets is not None:
        raise SchemaError(f"{where}: kind vocab takes its rows from the vocabulary; remove buckets "
                          "(or use kind = \"hash\" to cap the rows)")
    if s.pooling not in POOLINGS:
        raise SchemaError(f"{where}: pooling {s.pooling!r} is not one of {', '.join(POOLINGS)}")
    if s.dim is not None and not (_is_int(s.dim) and s.dim > 0):
        raise SchemaError(f"{where}: dim={s.dim!r} must be a positive integer")
    if s.prefix is not None and not (_is_int(s.prefix) and s.prefix > 0):
        raise SchemaError(f"{where}: prefix={s.prefix!r} must be a positive number of characters")
    if s.min_count < 1 or s.oov_buckets < 1:
        raise SchemaError(f"{where}: min_count and oov_buckets must be >= 1")
    if s.delimiter is not None and (not isinstance(s.delimiter, str) or not s.delimiter):
        raise SchemaError(f"{where}: delimiter must be a non-empty string")


_TABLE_FIELDS = ("kind", "buckets", "min_count", "oov_buckets", "pooling", "dim")


def _check_shared(schema: FeatureSchema) -> None:
    for t in schema.table_names:
        fs = schema.features_of(t)
        for attr in _TABLE_FIELDS:
            values = {f.name: getattr(f, attr) for f in fs}
            if len(set(values.values())) > 1:
                raise SchemaError(f"table {t!r} is shared by features that disagree on {attr}: "
                                  + ", ".join(f"{n}={v!r}" for n, v in values.items()))


def _check_split(s: SplitSpec) -> None:
    if s.by not in SPLIT_BY:
        raise SchemaError(f"split.by={s.by!r} is not one of {', '.join(SPLIT_BY)}")
    if s.by == "time" and not s.column:
        raise SchemaError("split.by=time needs split.column (the timestamp column)")
    f = s.fractions
    if len(f) != 3 or min(f) < 0 or abs(sum(f) - 1.0) > 1e-6 or f[0] == 0:
        raise SchemaError(f"split.fractions={list(f)} must be three shares (train, val, test) summing to 1, train > 0")


def check_schema(schema: FeatureSchema) -> None:
    """Everything a schema can get wrong on its own, each named."""
    if not schema.sparse:
        raise SchemaError("a schema needs at least one sparse feature (an embedding table)")
    names = schema.dense_names + schema.sparse_names
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise SchemaError(f"feature name(s) used twice: {dup}")
    for d in schema.dense:
        _check_dense(d)
    for s in schema.sparse:
        _check_sparse(s)
    _check_shared(schema)
    _check_split(schema.split)
    fmt = schema.input.format
    if fmt is not None and fmt not in INPUT_FORMATS:
        raise SchemaError(f"input.format={fmt!r} is not one of {', '.join(INPUT_FORMATS)}")
    if not schema.input.header and not schema.input.columns and fmt != "parquet":
        raise SchemaError("input.header=false needs input.columns (the column names, in file order)")
    known = dict(schema.vocab_rows)
    stale = sorted(set(known) - set(schema.table_names))
    if stale:
        raise SchemaError(f"vocab_rows names tables the schema does not have: {stale}")
