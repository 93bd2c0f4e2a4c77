"""The fit's state and its files: dense moments, vocabularies, the id maps they give.

- ``Moments``: count, mean, sum of squared deviations, minimum and maximum of a dense feature
  over the training rows, merged block by block (standardize / minmax scales);
- vocabularies: a text table's values interned with dense ids (kernels.Interner; two texts with
  one FNV-1a 64 hash are an error naming both) and counted per distinct id (``Vocabulary``); an
  integer table's (criteo_tsv's hex fields) staged as they are and counted as merged (value,
  count) pairs (``IntVocabulary``); ordered as encode's vocabularies are (most frequent first,
  ties by value; or by value) and written as json.dumps writes the list (``vocab_json``);
- ``IdMaps``: each table's staged value -> model id (oov_buckets + its vocabulary position;
  otherwise an OOV bucket by the FNV-1a of the value's text, as encode.encode_ids gives it).

staging.py runs the fit over its staged columns with these.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dlrm_dist.data.columnar import kernels, layout
from dlrm_dist.data.columnar.job import vocab_tables
from dlrm_dist.data.columnar.kernels import Collision, Interner, text_order
from dlrm_dist.data.errors import PreprocessError
from dlrm_dist.features.schema import FeatureSchema, SparseFeature

_EMPTY = np.uint64(0xCBF29CE484222325)  # FNV-1a 64 of "" (the offset basis): a missing value's OOV hash
_PLAIN = bytes(b for b in range(0x20, 0x7F) if b not in b'"\\')  # bytes json.dumps writes as themselves in a string


class Moments:
    """Count, mean, sum of squared deviations (merged per batch: no catastrophic sum of squares),
    minimum and maximum of one dense feature over the training split."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.n, self.mean, self.m2, self.min, self.max = 0, 0.0, 0.0, np.inf, -np.inf

    def add(self, x: np.ndarray) -> None:
        if not x.size:
            return
        with np.errstate(over="ignore", invalid="ignore"):
            n, mean = x.size, float(x.mean())
            m2 = float(((x - mean) ** 2).sum())
            total = self.n + n
            delta = mean - self.mean
            self.m2 += m2 + delta * delta * self.n * n / total
            self.mean += delta * n / total
        self.n = total
        self.min, self.max = min(self.min, float(x.min())), max(self.max, float(x.max()))

    def scale(self, kind: str) -> tuple[float, float]:
        """(shift, divisor) of standardize/minmax; a constant feature keeps divisor 1."""
        if self.n == 0:
            return 0.0, 1.0
        with np.errstate(over="ignore", invalid="ignore"):
            shift, divisor = (self.min, self.max - self.min) if kind == "minmax" else \
                (self.mean, float(np.sqrt(max(self.m2 / self.n, 0.0))))
        if not (np.isfinite(shift) and np.isfinite(divisor)):
            raise PreprocessError(
                f"dense feature {self.name!r}: its {kind} statistics over the training split overflow (values "
                f"from {self.min:g} to {self.max:g}); add log1p or clip = [lo, hi] before {kind}")
        # A constant feature's std comes out as rounding noise (~1e-16 of its mean), which would
        # blow that noise up to +-1: below float precision of the values it counts as zero.
        constant = divisor <= 1e-12 * max(abs(shift), abs(self.min), abs(self.max))
        return shift, 1.0 if divisor <= 0 or constant else divisor


# -- distinct values ------------------------------------------------------------------------------
def interners(schema: FeatureSchema) -> dict[str, Interner]:
    """An interner per vocabulary table of texts; criteo_tsv's tables hold integers, staged as they are."""
    return {} if schema.input.format == "criteo_tsv" else {t: Interner() for t in vocab_tables(schema)}


def staged_integers(values: pa.Array) -> np.ndarray:
    """Integer vocabulary values as staged: int64, -1 for a missing one (criteo_tsv's are >= 0)."""
    return (pc.fill_null(values, -1) if values.null_count else values).to_numpy(zero_copy_only=False).astype(np.int64)


def intern(tables: dict[str, Interner], table: str, values: pa.Array) -> np.ndarray:
    """The ids of ``values`` among their table's distinct texts (int32, -1: missing); two texts with
    one hash are an error naming both, as is a table past Interner.MAX_IDS texts."""
    try:
        return tables[table].ids(values)
    except Collision as c:
        raise PreprocessError(f"vocabulary table {table!r}: the values {c.first!r} and {c.second!r} have the same "
                              f"FNV-1a 64 hash ({c.hash:#018x}), which preprocessing tells values apart by; rename "
                              "one of them in the data, or make the feature kind = \"hash\"") from None
    except OverflowError as e:
        raise PreprocessError(f"vocabulary table {table!r}: {e}; make the feature kind = \"hash\"") from None


# -- vocabularies ---------------------------------------------------------------------------------
class Vocabulary:
    """A table's vocabulary fitted from the staged ids: counts over the training rows per distinct
    value; ``vocabulary`` orders them as encode's vocabularies are ordered."""

    def __init__(self, f: SparseFeature, distinct: Interner) -> None:
        self.order, self.distinct = f.order, distinct
        self.counts = np.zeros(distinct.n, np.int64)
        self.kept: Optional[np.ndarray] = None  # the vocabulary's values (their distinct ids), in id order

    @property
    def size(self) -> int:
        return self.distinct.n

    def add(self, staged: np.ndarray, train: np.ndarray, lengths: Optional[np.ndarray]) -> None:
        """Counts the staged ids of a block's training rows (``lengths``: its rows' bag lengths)."""
        kernels.count_ids(np.asarray(staged), train, np.zeros(0, np.int64) if lengths is None else lengths,
                          self.counts)

    def kept_count(self, min_count: int) -> int:
        """How many values the vocabulary keeps: those seen at least ``min_count`` times."""
        return int(np.count_nonzero(self.counts >= min_count))

    def vocabulary(self, min_count: int) -> pa.Array:
        """The values seen at least ``min_count`` times in id order (frequency: most frequent
        first, ties by value, as encode's vocabularies; value: ascending)."""
        kept = np.flatnonzero(self.counts >= min_count)
        texts = self.distinct.texts()
        order = text_order(texts, -self.counts[kept] if self.order == "frequency" else None,
                           kept if len(kept) < len(texts) else None)  # (every value kept: no index)
        self.kept = kept[order]
        return pc.take(texts, pa.array(self.kept))  # (one copy of the kept texts, in their order)

    def id_map(self, oov_buckets: int) -> "_Interned":
        """The model id of each distinct value: oov_buckets + its vocabulary position, or -1 (OOV)."""
        ids = np.full(len(self.counts), -1, np.int64)
        ids[self.kept] = oov_buckets + np.arange(len(self.kept))
        return _Interned(self.distinct, ids)


class IntVocabulary:
    """A vocabulary of integer values (criteo_tsv's hex fields, staged as they are, -1 missing):
    counted block by block and merged as (value, count) pairs, 16 bytes a distinct value (an
    interner of their texts would hold several times that); ordered as numbers."""

    MERGE_EVERY = 64  # blocks' counts held before they are merged

    def __init__(self, f: SparseFeature) -> None:
        self.order = f.order
        self.parts: list[tuple[np.ndarray, np.ndarray]] = []
        self.values = np.zeros(0, np.int64)  # the vocabulary, in id order

    @property
    def size(self) -> int:
        return sum(len(u) for u, _ in self.parts)

    def add(self, staged: np.ndarray, train: np.ndarray, lengths: Optional[np.ndarray]) -> None:
        v = np.asarray(staged)[train if lengths is None else np.repeat(train, lengths)]
        self.parts.append(np.unique(v[v >= 0], return_counts=True))
        if len(self.parts) >= self.MERGE_EVERY:
            self.parts = [self._merged()]

    def kept_count(self, min_count: int) -> int:
        """As ``Vocabulary.kept_count``. Merges the blocks' counts into one part first (kept so:
        ``vocabulary`` then finds them merged and does not merge again)."""
        self.parts = [self._merged()]
        return int(np.count_nonzero(self.parts[0][1] >= min_count))

    def _merged(self) -> tuple[np.ndarray, np.ndarray]:
        if not self.parts:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        if len(self.parts) == 1:  # (np.unique's, or a merge's: already distinct and sorted)
            return self.parts[0]
        values, where = np.unique(np.concatenate([u for u, _ in self.parts]), return_inverse=True)
        counts = np.bincount(where, weights=np.concatenate([c for _, c in self.parts]), minlength=len(values))
        return values, counts.astype(np.int64)

    def vocabulary(self, min_count: int) -> pa.Array:
        """As ``Vocabulary.vocabulary``, the values compared as numbers."""
        values, counts = self._merged()
        keep = counts >= min_count
        values, counts = values[keep], counts[keep]
        self.values = values[np.lexsort((values, -counts))] if self.order == "frequency" else values  # (ascending)
        return pa.array(self.values)

    def id_map(self, oov_buckets: int) -> "_Integers":
        return _Integers(self.values, oov_buckets)


# -- id maps ---------------------------------------------------------------------------------------
class _Interned:
    """A text table's distinct id -> model id (-1: not in the vocabulary, to an OOV bucket by the
    value's hash; a missing value, -1: the empty text's)."""

    def __init__(self, distinct: Interner, ids: np.ndarray) -> None:
        self.distinct, self.model = distinct, ids

    def ids(self, staged: np.ndarray, oov_buckets: int) -> np.ndarray:
        out = np.empty(len(staged), np.int64)
        kernels.model_ids(staged, self.model, self.distinct.hashes(), _EMPTY, np.uint64(oov_buckets), out)
        return out


class _Integers:
    """An integer table's value -> model id (oov_buckets + its vocabulary position), found by a
    binary search; a value not in it goes to an OOV bucket by the FNV-1a of its decimal text, a
    missing one (-1) by the empty text's, as encode.encode_ids does."""

    def __init__(self, values: np.ndarray, oov_buckets: int) -> None:
        order = np.argsort(values)
        self.sorted, self.model = values[order], oov_buckets + order

    def ids(self, staged: np.ndarray, oov_buckets: int) -> np.ndarray:
        at = np.minimum(np.searchsorted(self.sorted, staged), max(len(self.sorted) - 1, 0))
        found = (staged >= 0) & (self.sorted[at] == staged) if len(self.sorted) else np.zeros(len(staged), bool)
        out = np.where(found, self.model[at] if len(self.sorted) else 0, 0).astype(np.int64)
        other = staged[~found]
        texts = pc.cast(pa.array(other, mask=other < 0), pa.string())
        out[~found] = (kernels.fnv1a(texts) % np.uint64(oov_buckets)).astype(np.int64)
        return out


class IdMaps:
    """Every vocabulary table's staged value -> model id map (``_Interned`` or ``_Integers``)."""

    def __init__(self, tables: dict[str, Any]) -> None:
        self.tables = tables

    @classmethod
    def from_vocabularies(cls, out: Path, schema: FeatureSchema, distinct: dict[str, Interner]) -> "IdMaps":
        """From the written vocabularies (a rerun after the fit): text values interned among
        ``distinct`` (ids 0..: first), integer ones as they are."""
        tables = {}
        for t in vocab_tables(schema):
            f, values = schema.features_of(t)[0], layout.read_vocab(out, t)
            if t not in distinct:
                tables[t] = _Integers(np.array(values, np.int64), f.oov_buckets)
                continue
            vocab = intern(distinct, t, pa.array(values, pa.string()))
            ids = np.full(distinct[t].n, -1, np.int64)
            ids[vocab] = f.oov_buckets + np.arange(len(vocab), dtype=np.int64)
            tables[t] = _Interned(distinct[t], ids)
        return cls(tables)

    def ids(self, f: SparseFeature, staged: np.ndarray) -> np.ndarray:
        """Model ids of a feature's staged values: the vocabulary's, else (unseen, rare or missing)
        an OOV bucket by the value's hash."""
        return self.tables[f.table].ids(np.asarray(staged), f.oov_buckets)


def vocab_json(texts: pa.Array) -> bytes:
    """A vocabulary file's bytes for ``texts`` (``json.dumps`` of the list, a newline: what
    ``layout.read_vocab`` reads), built from the Arrow buffers for integers, or for texts whose every
    byte is printable ASCII other than a quote or a backslash (what json.dumps copies as is), else
    by json.dumps itself."""
    if not len(texts):
        return b"[]\n"
    if pa.types.is_integer(texts.type):  # (json.dumps writes an integer as its decimal text)
        joined = pc.binary_join(pa.ListArray.from_arrays(pa.array([0, len(texts)], pa.int32()),
                                                         pc.cast(texts, pa.string())), ", ")
        return b"".join((b"[", joined[0].as_buffer(), b"]\n"))  # (one copy of the joined text)
    offsets, data = kernels.buffers(texts)
    body = data[offsets[0]: offsets[-1]]
    # (bytes.translate deleting the plain bytes leaves the others: 2-3x faster than a table lookup)
    if len(body) > 1 << 30 or body.tobytes().translate(None, _PLAIN):  # (one Arrow string holds under 2 GB)
        return (json.dumps(texts.to_pylist(), allow_nan=False) + "\n").encode()
    texts = pc.cast(texts, pa.string())  # (under 1 GB: a plain string array holds it)
    joined = pc.binary_join(pa.ListArray.from_arrays(pa.array([0, len(texts)], pa.int32()), texts), '", "')
    return b"".join((b'["', joined[0].as_buffer(), b'"]\n'))
