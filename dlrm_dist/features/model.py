"""The feature schema's file format as declared pydantic models (strict: see dlrm_dist/validation.py).

This is what a schema file (TOML/JSON), a ``[features]`` section or a stored ``meta.json``
may say, and every rule about it: types, ranges, choices, names, and the checks across
fields (shared tables agree, standardize/minmax last, clip needs bounds, fractions sum to
1, ...). ``validate_schema`` runs it and turns a ``ValidationError`` into one SchemaError
listing every problem by path. schema.py builds its frozen dataclasses from the result.

Names that become file names (``<feature>.ids.npy``, ``vocab/<table>.json``) or TorchRec
names are identifiers; column names are whatever the data's header says.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Callable, Literal, Optional

from pydantic import BeforeValidator, Field, ValidationError, field_validator, model_validator

from dlrm_dist.config.validation import (
    IDENTIFIER_TEXT,
    Identifier,
    TableName,
    Count,
    Finite,
    Says,
    finite,
    joined,
    messages,
    problems,
)
from dlrm_dist.features.errors import SchemaError
from dlrm_dist.names import TABLE_PREFIX
from dlrm_dist.validation import Strict

DENSE_TRANSFORMS = ("none", "log1p", "clip", "standardize", "minmax")
FITTED_TRANSFORMS = ("standardize", "minmax")  # statistics from the training split
SPARSE_KINDS = ("identity", "vocab", "hash", "managed")
HASHES = ("fnv1a", "int_modulo")  # kind hash: FNV-1a 64 of the text, or the integer value modulo buckets
# kind managed: raw ids (the same two hashes, modulo MANAGED_ID_SPACE) remapped to rows by TorchRec's
# MCHManagedCollisionModule, which evicts the least frequently (lfu) or least recently (lru) used id.
EVICTIONS = ("lfu", "lru")
MANAGED_ID_SPACE = 2**63 - 1  # TorchRec's input_hash_size; its empty-slot sentinel (2**63 - 1) is never a raw id
ORDERS = ("frequency", "value")  # kind vocab: most frequent first (ties by value), or ascending by value
POOLINGS = ("sum", "mean")
SPLITS = ("train", "val", "test")
SPLIT_BY = ("random", "time", "day")
INPUT_FORMATS = ("csv", "tsv", "parquet", "criteo_tsv")
DEFAULT_FRACTIONS = (0.8, 0.1, 0.1)
CRITEO_TSV_FIELDS = 40  # label, 13 integer columns, 26 hex columns

Column = Annotated[str, Says("a column name (a string)")]
def _infinite_text(value: Any) -> Any:
    """JSON has no infinity: an open clip bound is stored as "inf" / "-inf" (schema.to_dict)."""
    return {"inf": math.inf, "+inf": math.inf, "-inf": -math.inf}.get(value, value) if isinstance(value, str) else value


Bound = Annotated[Annotated[float, Field(allow_inf_nan=True)], BeforeValidator(_infinite_text)]  # clip = [0, inf]: below only
Clip = Annotated[list[Bound], Field(min_length=2, max_length=2),
                 Says("[lo, hi], two numbers with lo <= hi (lo may be -inf, hi may be inf; no nan)")]
Scale = Annotated[list[Finite], Field(min_length=2, max_length=2),
                  Says("[shift, divisor], two finite numbers with divisor > 0")]
Fractions = Annotated[list[finite(ge=0.0)], Field(min_length=3, max_length=3),
                      Says("three finite numbers >= 0 (train, val, test) summing to 1, train > 0")]
Seed = Annotated[int, Field(ge=0, le=2**63 - 1), Says("an integer in [0, 2**63 - 1]")]
FieldDelimiter = Annotated[str, Field(pattern=r'^[^\r\n"]$'),
                           Says("one character (not a newline or '\"')")]
ListDelimiter = Annotated[str, Field(min_length=1), Says("a non-empty string")]


class DenseModel(Strict):
    """``[[dense]]``: a numeric column and its transform chain."""

    name: Identifier
    column: Optional[Column] = None
    transform: list[Literal[DENSE_TRANSFORMS]] = []
    clip: Optional[Clip] = None
    fill: Finite = 0.0
    scale: Optional[Scale] = None

    @field_validator("transform", mode="before")
    @classmethod
    def _one_transform(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value  # transform = "log1p" is a chain of one

    @model_validator(mode="after")
    def _chain(self) -> "DenseModel":
        found = []
        chain = [t for t in self.transform if t != "none"]
        fitted = [i for i, t in enumerate(chain) if t in FITTED_TRANSFORMS]
        if fitted and fitted != [len(chain) - 1]:
            found.append((("transform",), "standardize/minmax must be the last transform, and only one of them"))
        if "clip" in chain and self.clip is None:
            found.append((("clip",), "transform clip needs clip = [lo, hi] with lo <= hi"))
        if self.clip is not None:
            lo, hi = self.clip
            if math.isnan(lo) or math.isnan(hi) or lo == math.inf or hi == -math.inf or lo > hi:
                found.append((("clip",), f"must be [lo, hi] with lo <= hi, no nan, lo < inf, hi > -inf; "
                                         f"got {self.clip}"))
            elif "clip" not in chain:
                found.append((("clip",), "is given but transform has no clip: add \"clip\" to transform "
                                         "or remove clip"))
        if self.scale is not None and self.scale[1] <= 0:
            found.append((("scale",), f"divisor must be > 0, got {self.scale[1]}"))
        problems(found)
        return self


class SparseModel(Strict):
    """``[[sparse]]``: a categorical column, how it becomes ids, and the table it looks up."""

    name: Identifier
    column: Optional[Column] = None
    kind: Literal[SPARSE_KINDS] = "vocab"
    hash: Literal[HASHES] = "fnv1a"
    order: Literal[ORDERS] = "frequency"
    table: Optional[TableName] = None
    buckets: Optional[Count] = None
    min_count: Count = 1
    oov_buckets: Count = 1
    delimiter: Optional[ListDelimiter] = None
    pooling: Literal[POOLINGS] = "sum"
    dim: Optional[Count] = None
    prefix: Optional[Count] = None
    eviction: Literal[EVICTIONS] = "lfu"
    eviction_interval: Count = 1
    decay_exponent: Annotated[float, Field(gt=0.0, allow_inf_nan=False),
                              Says("a finite number > 0 (LRU's score: 1 / age ** decay_exponent)")] = 1.0

    @property
    def table_name(self) -> str:
        return self.table if self.table is not None else TABLE_PREFIX + self.name

    @model_validator(mode="after")
    def _kind(self) -> "SparseModel":
        found = []
        if self.kind in ("identity", "hash", "managed") and self.buckets is None:
            found.append((("buckets",), f"kind {self.kind} needs buckets = a positive integer (the table's rows)"))
        if self.kind == "vocab" and self.buckets is not None:
            found.append((("buckets",), "kind vocab takes its rows from the vocabulary; remove buckets "
                                        "(or use kind = \"hash\" to cap the rows)"))
        for key in ("min_count", "oov_buckets"):
            if self.kind != "vocab" and getattr(self, key) != 1:
                found.append(((key,), f"applies to kind vocab only (this feature is kind {self.kind})"))
        if self.kind not in ("hash", "managed") and self.hash != "fnv1a":
            found.append((("hash",), f"applies to kinds hash and managed only (this feature is kind {self.kind})"))
        found += self._managed()
        if self.kind != "vocab" and self.order != "frequency":
            found.append((("order",), f"applies to kind vocab only (this feature is kind {self.kind})"))
        if self.table is None and "." in self.name:
            found.append((("table",), f"the default table name {self.table_name!r} (from the feature's name) "
                                      "cannot hold '.' (TorchRec module names); give table = a name without '.'"))
        problems(found)
        return self

    def _managed(self) -> list:
        """The remapper's keys apply to kind managed; its table needs a row besides the one TorchRec
        keeps for ids it has not admitted yet (the last row of each shard)."""
        found = []
        defaults = {"eviction": "lfu", "eviction_interval": 1, "decay_exponent": 1.0}
        if self.kind != "managed":
            for key, default in defaults.items():
                if getattr(self, key) != default:
                    found.append(((key,), f"applies to kind managed only (this feature is kind {self.kind})"))
            return found
        if self.buckets is not None and self.buckets < 2:
            found.append((("buckets",), f"kind managed needs buckets >= 2 (one row holds ids not admitted yet), "
                                        f"got {self.buckets}"))
        if self.eviction != "lru" and self.decay_exponent != 1.0:
            found.append((("decay_exponent",), "applies to eviction = \"lru\" only (this feature's eviction is "
                                               f"{self.eviction})"))
        return found


LabelText = Annotated[str, Field(min_length=1, pattern=r"^\S(.*\S)?$"),
                      Says("a non-empty string without surrounding whitespace (cells are compared trimmed)")]
LabelValues = Annotated[list[LabelText], Field(min_length=1),
                        Says("a non-empty list of strings (label cells' texts, e.g. [\">50K\"])")]


class LabelModel(Strict):
    """``[label]``: the target column: numeric (0/1, or thresholded) or categorical (text values).

    ``positive = [...]`` makes the label categorical: a cell whose text (surrounding whitespace
    trimmed) is listed is a positive (1), any other a negative (0); with ``negative = [...]``
    too, a value in neither list is an error. A numeric column's cells are compared as their
    text (``positive = ["1"]`` matches the integer 1).
    """

    column: Column = "label"
    threshold: Optional[Finite] = None
    positive: Optional[LabelValues] = None
    negative: Optional[LabelValues] = None

    @property
    def categorical(self) -> bool:
        return self.positive is not None

    @model_validator(mode="after")
    def _values(self) -> "LabelModel":
        found = []
        if self.negative is not None and self.positive is None:
            found.append((("negative",), "needs positive = [...] too (the values that are 1)"))
        if self.positive is not None and self.threshold is not None:
            found.append((("threshold",), "applies to a numeric label; positive/negative name a categorical "
                                          "label's values: give one or the other"))
        both = sorted(set(self.positive or ()) & set(self.negative or ()))
        if both:
            found.append((("negative",), f"{both} also listed in positive: a value is either 1 or 0"))
        problems(found)
        return self


def _label_column(value: Any) -> Any:
    """``label = "clicked"`` is ``label = { column = "clicked" }``."""
    return {"column": value} if isinstance(value, str) else value


LabelEntry = Annotated[LabelModel, BeforeValidator(_label_column),
                  Says("a column name, or a table with keys column, threshold, positive, negative")]


class SplitModel(Strict):
    """``[split]``: train/val/test by a seeded per-row draw, by a time column, or by day.

    ``by = "day"``: every day but the last is train; the last day's first ceil(n/2) valid rows
    are val, the rest test (TorchRec's Criteo convention). ``days = N`` cuts the inputs' lines,
    in input order, into N equal pseudo-days by line count (malformed lines counted: Kaggle's
    train.txt); without it each input file is one day. Fractions do not apply (the halves of
    the last day are fixed), so only the default is accepted: a share given would be ignored.
    """

    by: Literal[SPLIT_BY] = "random"
    fractions: Fractions = list(DEFAULT_FRACTIONS)
    seed: Seed = 0
    column: Optional[Column] = None
    days: Optional[Annotated[int, Field(ge=2), Says("an integer >= 2 (the last day is val/test)")]] = None

    @model_validator(mode="after")
    def _shares(self) -> "SplitModel":
        found = []
        if self.by == "time" and not self.column:
            found.append((("column",), "is required when by = \"time\" (the timestamp column)"))
        if self.by != "day" and self.days is not None:
            found.append((("days",), f"applies to by = \"day\" only (this split is by {self.by})"))
        if self.by == "day" and tuple(self.fractions) != DEFAULT_FRACTIONS:
            found.append((("fractions",), "do not apply to by = \"day\" (train = every day but the last, val and "
                                          "test = the last day's halves); remove fractions"))
        f = self.fractions
        if abs(sum(f) - 1.0) > 1e-6 or f[0] == 0:
            found.append((("fractions",), f"must be three shares (train, val, test) summing to 1, train > 0; "
                                          f"got {f}"))
        problems(found)
        return self


class InputModel(Strict):
    """``[input]``: how the data files are read."""

    format: Optional[Literal[INPUT_FORMATS]] = None
    delimiter: Optional[FieldDelimiter] = None
    header: bool = True
    columns: Optional[Annotated[list[Column], Field(min_length=1)]] = None
    null_values: list[str] = []

    @model_validator(mode="after")
    def _names(self) -> "InputModel":
        found = []
        if not self.header and not self.columns and self.format not in ("parquet", "criteo_tsv"):
            found.append((("columns",), "is required when header = false (the column names, in file order)"))
        if self.format == "criteo_tsv":
            found += self._criteo_tsv()
        seen: dict[str, int] = {}
        for i, c in enumerate(self.columns or ()):
            if c in seen:
                found.append((("columns", i), f"{c!r} is also columns[{seen[c]}]: column names must differ"))
            seen.setdefault(c, i)
        problems(found)
        return self

    def _criteo_tsv(self) -> list:
        """criteo_tsv is a fixed layout read by its own parser: no header, tabs, 40 named fields."""
        found = []
        if self.header:
            found.append((("header",), "must be false with format criteo_tsv (Criteo files have no header)"))
        if self.delimiter not in (None, "\t"):
            found.append((("delimiter",), f"must be a tab with format criteo_tsv, got {self.delimiter!r}"))
        if self.columns is not None and len(self.columns) != CRITEO_TSV_FIELDS:
            found.append((("columns",), f"names {len(self.columns)} columns; format criteo_tsv has "
                                        f"{CRITEO_TSV_FIELDS} (label, 13 integer columns, 26 hex columns)"))
        if self.null_values:
            found.append((("null_values",), "do not apply to format criteo_tsv (an empty field is missing)"))
        return found


def _pairs_to_table(value: Any) -> Any:
    """``vocab_rows`` as stored (a list of [table, rows] pairs) or as a table; else left for the error."""
    if isinstance(value, list) and all(isinstance(p, list) and len(p) == 2 and isinstance(p[0], str) for p in value):
        return {p[0]: p[1] for p in value} if len({p[0] for p in value}) == len(value) else value
    return value


class SchemaModel(Strict):
    """A whole feature schema."""

    name: Identifier = "custom"
    dense: list[DenseModel] = []
    sparse: list[SparseModel] = []
    label: LabelEntry = LabelModel()
    split: SplitModel = SplitModel()
    input: InputModel = InputModel()
    vocab_rows: Annotated[dict[TableName, Count], Says("a table of vocab table = rows (set by preprocessing)")] = {}

    @field_validator("vocab_rows", mode="before")
    @classmethod
    def _vocab_rows(cls, value: Any) -> Any:
        return _pairs_to_table(value)

    @model_validator(mode="after")
    def _across(self) -> "SchemaModel":
        problems([*self._no_sparse(), *self._duplicates(), *self._shared_tables(), *self._vocab_tables(),
                  *self._days(), *self._criteo_fields()])
        return self

    def _days(self) -> list:
        if self.split.days is not None and self.input.format != "criteo_tsv":
            return [(("split", "days"), "cuts the lines of criteo_tsv inputs into pseudo-days; with format "
                                        f"{self.input.format or '(from the file name)'} give one input file per day "
                                        "and leave days unset")]
        return []

    def _criteo_fields(self) -> list:
        """criteo_tsv's parser reads categorical fields as integers (the hex value), not text."""
        if self.input.format != "criteo_tsv":
            return []
        found = []
        for i, s in enumerate(self.sparse):
            if s.kind in ("hash", "managed") and s.hash == "fnv1a":
                found.append((("sparse", i, "hash"), "format criteo_tsv reads categorical fields as integers: "
                                                     "use hash = \"int_modulo\" (MLPerf's value % buckets)"))
            for key in ("delimiter", "prefix"):
                if getattr(s, key) is not None:
                    found.append((("sparse", i, key), "does not apply to format criteo_tsv (one hex value per field)"))
        if self.label.categorical:
            found.append((("label", "positive"), "does not apply to format criteo_tsv (its label field is 0 or 1)"))
        return found

    def _no_sparse(self) -> list:
        return [] if self.sparse else [(("sparse",), "a schema needs at least one sparse feature (an embedding table)")]

    def _duplicates(self) -> list:
        first: dict[str, str] = {}
        found = []
        for section, items in (("dense", self.dense), ("sparse", self.sparse)):
            for i, f in enumerate(items):
                if f.name in first:
                    found.append(((section, i, "name"), f"feature name {f.name!r} is used twice "
                                                        f"(also {first[f.name]}.name)"))
                first.setdefault(f.name, f"{section}[{i}]")
        return found

    def _shared_tables(self) -> list:
        found = []
        by_table: dict[str, list[int]] = {}
        for i, s in enumerate(self.sparse):
            by_table.setdefault(s.table_name, []).append(i)
        for table, idx in by_table.items():
            for attr in ("kind", "hash", "order", "buckets", "min_count", "oov_buckets", "pooling", "dim",
                         "eviction", "eviction_interval", "decay_exponent"):
                values = {self.sparse[i].name: getattr(self.sparse[i], attr) for i in idx}
                if len(set(values.values())) > 1:
                    odd = next(i for i in idx if getattr(self.sparse[i], attr) != getattr(self.sparse[idx[0]], attr))
                    found.append((("sparse", odd, attr), f"table {table!r} is shared by features that disagree on "
                                  f"{attr}: " + ", ".join(f"{n}={v!r}" for n, v in values.items())))
            if len(idx) > 1 and self.sparse[idx[0]].kind == "managed":
                found.append((("sparse", idx[1], "table"), f"table {table!r} is kind managed: a managed table holds "
                              "one feature's id space (TorchRec's sharded remapper takes one feature per table); "
                              "give each managed feature a table of its own"))
        return found

    def _vocab_tables(self) -> list:
        vocab = {s.table_name for s in self.sparse if s.kind == "vocab"}
        tables = {s.table_name for s in self.sparse}
        found = []
        for t in self.vocab_rows:
            if t not in vocab:
                what = "a table of kind identity/hash" if t in tables else "a table the schema does not have"
                found.append((("vocab_rows", t), f"names {what}; vocab_rows holds vocab tables' rows only"))
        return found


def _feature_named(data: Any) -> Callable[[tuple], Optional[str]]:
    """``where`` for messages: the feature a path is in, by its name as written (if it has one)."""
    def where(loc: tuple) -> Optional[str]:
        if len(loc) < 2 or loc[0] not in ("dense", "sparse") or not isinstance(loc[1], int):
            return None
        try:
            name = data[loc[0]][loc[1]]["name"]
        except (KeyError, IndexError, TypeError):
            return None
        return f"{loc[0]} feature {name!r}" if isinstance(name, str) else None
    return where


def schema_problems(data: Any, prefix: tuple = ()) -> list[str]:
    """The problems of ``data`` as lines; ``prefix`` puts them under a job config's ``features``."""
    if not isinstance(data, dict):
        return [f"{'.'.join(map(str, prefix)) or '(top level)'}: must be a table of keys (a schema), "
                f"got {type(data).__name__}"]
    try:
        SchemaModel.model_validate(data)
        return []
    except ValidationError as e:
        return messages(e, SchemaModel, prefix, _feature_named(data))


def validate_schema(data: Any, origin: str) -> SchemaModel:
    """The validated model of ``data``; every problem is named in one SchemaError."""
    found = schema_problems(data)
    if found:
        raise SchemaError(joined(origin, found))
    return SchemaModel.model_validate(data)


__all__ = ["CRITEO_TSV_FIELDS", "DEFAULT_FRACTIONS", "DenseModel", "EVICTIONS", "HASHES", "MANAGED_ID_SPACE", "IDENTIFIER_TEXT", "ORDERS", "InputModel", "LabelModel", "SchemaModel", "SparseModel",
           "SplitModel", "schema_problems", "validate_schema"]
