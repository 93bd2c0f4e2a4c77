"""The fitted feature pipeline an export carries, and raw typed rows turned into the model's inputs.

What preprocessing learned is the fitted schema (the export config's ``features``: hash
settings, dense transforms with their fitted statistics, multi-hot delimiters, vocabulary
sizes) plus the vocabularies, which dlrm-export copies from the data directory into
``DIR/vocab/<table>.json`` (byte for byte, each sha256 in export.json). Loading checks all of
it before use: every vocabulary file named, present, of its checksum, a JSON array of one
kind (strings, or integers), as long as the schema's table says and without repeats; the
config's schema is the one the manifest's fingerprint names. Nothing is unpickled or run.

Encoding is data/columnar/encode.py's, the one encoder: ``dense_matrix`` and, per sparse
feature, ``bags_of`` + ``encode_ids`` with these vocabularies (unseen values go to the OOV
rows as in training), then ids and bag offsets as the exported program takes them
(serving/model.py). Needs torch, numpy and pyarrow; no TorchRec (except to apply a
``multi_hot.sizes`` expansion, which lives with the TorchRec data loader).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import pyarrow as pa
import torch

from dlrm_dist.config.loader import config_from_dict
from dlrm_dist.config.sections import Config
from dlrm_dist.data.columnar import encode, layout
from dlrm_dist.errors import DlrmError
from dlrm_dist.features.schema import FeatureSchema
from dlrm_dist.fileio import atomic_write_bytes, disk_full
from dlrm_dist.serving.manifest import MANIFEST_FILE, ExportError, ExportManifest, Pipeline, VocabularyFile

logger = logging.getLogger(__name__)
MAX_VOCAB_BYTES = 8 << 30  # a vocabulary of 100M short strings is ~2 GB: more is not one of ours

ModelInputs = tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]


def vocab_tables(schema: FeatureSchema) -> list[str]:
    """The tables whose ids come from a vocabulary (their values are files, not schema entries)."""
    return [t for t in schema.table_names if schema.features_of(t)[0].kind == "vocab"]


def export_config(manifest: ExportManifest) -> Config:
    """The training config an export carries, refused (ExportError) unless it is valid and its fitted
    schema is the one the manifest's fingerprint names."""
    origin = "export.json config"
    try:
        cfg = config_from_dict(manifest.config, origin)
        schema = FeatureSchema.from_dict(cfg.features or {}, f"{origin} features")
    except DlrmError as e:
        raise ExportError(f"{origin} is damaged: {e}") from None
    if schema.fingerprint() != manifest.schema_fingerprint:
        raise ExportError(f"export.json is damaged: schema_fingerprint {manifest.schema_fingerprint} is not its "
                          f"config's schema ({schema.fingerprint()})")
    if manifest.sparse_features != schema.sparse_names or manifest.dense_features != schema.num_dense:
        raise ExportError(f"export.json is damaged: sparse_features/dense_features {manifest.sparse_features}/"
                          f"{manifest.dense_features} are not its config's schema's {schema.sparse_names}/"
                          f"{schema.num_dense}")
    return cfg


# -- dlrm-export: the vocabularies copied in ---------------------------------------------------
def source_directory(config: Config, data_dir: Optional[str]) -> Optional[Path]:
    """Where the vocabularies are: the directory named, else the training config's columnar data."""
    if data_dir:
        return Path(data_dir)
    return Path(config.data.data_dir) if config.data.source == "columnar" and config.data.data_dir else None


def copy_vocabularies(schema: FeatureSchema, source: Optional[Path], out: Path) -> Optional[Pipeline]:
    """``out/vocab/<table>.json`` for every vocabulary table of ``schema``, copied from ``source``
    (checked to be as long as the fitted schema says); None, with a warning, when they are not at
    hand (the export then scores preprocessed data only)."""
    tables = vocab_tables(schema)
    if not tables:
        return Pipeline()
    why = _not_usable(schema, source, tables)
    if why:
        logger.warning("the vocabularies of table(s) %s are not at hand (%s): this export scores preprocessed "
                       "data only; re-export with --data DIR (the preprocessed directory) to score raw rows",
                       tables, why)
        return None
    entries = {}
    for table in tables:
        data = layout.vocab_file(source, table).read_bytes()
        rows = schema.table_rows(table) - schema.features_of(table)[0].oov_buckets
        _vocabulary(data, table, rows, f"{layout.vocab_file(source, table)}")  # the data's own, checked
        target = layout.vocab_file(out, table)
        target.parent.mkdir(parents=True, exist_ok=True)
        with disk_full(target, len(data)):
            atomic_write_bytes(target, data)
        entries[table] = VocabularyFile(file=f"{layout.VOCAB_DIR}/{target.name}", sha256=_sha256(data), values=rows)
    return Pipeline(vocabularies=entries)


def _not_usable(schema: FeatureSchema, source: Optional[Path], tables: list[str]) -> Optional[str]:
    """Why ``source`` cannot give this model's vocabularies (None: it can). A directory preprocessed
    again since training (another fitted schema) would give other ids to the same values."""
    if source is None:
        return "no data directory"
    missing = [t for t in tables if not layout.vocab_file(source, t).is_file()]
    if missing:
        return f"{source} has no vocab/ file of {missing}"
    try:
        stored = layout.stored_schema(source)
    except DlrmError as e:
        return str(e)
    if stored.fingerprint() != schema.fingerprint():
        return (f"{source} was preprocessed with another fitted schema (fingerprint {stored.fingerprint()}, the "
                f"model's {schema.fingerprint()})")
    return None


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- loading: every file checked ---------------------------------------------------------------
def _vocabulary(data: bytes, table: str, rows: int, where: str) -> pa.Array:
    """A vocabulary file's values, refused (ExportError naming the file) unless they are a JSON
    array of strings or of integers, ``rows`` long, without repeats."""
    try:
        values = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ExportError(f"{where} is damaged: not a readable JSON array ({type(e).__name__})") from None
    if not isinstance(values, list) or not layout.one_kind(values):  # the layout's rule for a vocabulary
        raise ExportError(f"{where} is damaged: a vocabulary is a JSON array of strings, or of integers")
    if len(values) != rows:
        raise ExportError(f"{where} holds {len(values):,} values; table {table!r} of the fitted schema has "
                          f"{rows:,} vocabulary rows (besides its OOV buckets): the file is not this model's")
    if len(set(values)) != len(values):
        raise ExportError(f"{where} is damaged: it lists a value twice (every value has one id)")
    return pa.array(values, pa.string() if values and isinstance(values[0], str) else pa.int64())


def load_vocabularies(directory: Path, manifest: ExportManifest, schema: FeatureSchema) -> dict[str, pa.Array]:
    """Every vocabulary of the export at ``directory``, each checked against export.json and the schema."""
    where = directory / MANIFEST_FILE
    if manifest.pipeline is None:
        raise ExportError(f"{directory} was exported without its feature pipeline (an older dlrm-export, or its "
                          "vocabularies were not at hand): it scores preprocessed data only (--data DIR); re-run "
                          "dlrm-export with --data DIR (the preprocessed directory) to score raw rows")
    named, wanted = set(manifest.pipeline.vocabularies), set(vocab_tables(schema))
    if named != wanted:
        raise ExportError(f"{where} is damaged: pipeline.vocabularies names table(s) {sorted(named)}, the fitted "
                          f"schema's vocabulary tables are {sorted(wanted)}")
    return {t: _checked_file(directory, t, manifest.pipeline.vocabularies[t], schema) for t in sorted(wanted)}


def _checked_file(directory: Path, table: str, entry: VocabularyFile, schema: FeatureSchema) -> pa.Array:
    path = layout.vocab_file(directory, table)  # (refuses a table name that would leave the directory)
    if entry.file != f"{layout.VOCAB_DIR}/{path.name}":
        raise ExportError(f"{directory / MANIFEST_FILE} is damaged: table {table!r}'s vocabulary is "
                          f"{layout.VOCAB_DIR}/{path.name}, not {entry.file!r}")
    rows = schema.table_rows(table) - schema.features_of(table)[0].oov_buckets
    if entry.values != rows:
        raise ExportError(f"{directory / MANIFEST_FILE} is damaged: pipeline.vocabularies.{table}.values is "
                          f"{entry.values}, the fitted schema's table has {rows} vocabulary rows")
    if not path.is_file():
        raise ExportError(f"{path} is missing (the vocabulary of table {table!r}); re-run dlrm-export")
    if path.stat().st_size > MAX_VOCAB_BYTES:
        raise ExportError(f"{path} is {path.stat().st_size:,} bytes, more than a vocabulary of ours")
    data = path.read_bytes()
    if _sha256(data) != entry.sha256:
        raise ExportError(f"{path} is damaged or edited: its sha256 {_sha256(data)[:12]}... is not export.json's "
                          f"{entry.sha256[:12]}... (re-run dlrm-export)")
    return _vocabulary(data, table, rows, str(path))


# -- typed rows -> the program's inputs --------------------------------------------------------
@dataclass(frozen=True)
class FeaturePipeline:
    """The fitted schema, its vocabularies and the load-time expansion: what turns typed rows into
    model inputs exactly as preprocessing and the loader did."""

    schema: FeatureSchema
    vocabs: dict[str, pa.Array]
    feature_names: tuple[str, ...]
    multi_hot: Optional[tuple[int, ...]] = None  # multi_hot.sizes of the training config
    seed: int = 0  # data.seed: the expansion's offsets are drawn from it

    @classmethod
    def load(cls, directory: Path, manifest: ExportManifest) -> "FeaturePipeline":
        cfg = export_config(manifest)
        schema = FeatureSchema.from_dict(cfg.features, "export.json config features")
        sizes = tuple(cfg.multi_hot.sizes) if cfg.multi_hot.sizes else None
        return cls(schema, load_vocabularies(directory, manifest, schema), tuple(manifest.feature_names), sizes,
                   cfg.data.seed)

    def dense(self, batch: pa.RecordBatch, schema: Optional[FeatureSchema] = None) -> np.ndarray:
        return encode.dense_matrix(batch, schema or self.schema)

    def bags(self, batch: pa.RecordBatch, schema: Optional[FeatureSchema] = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Per feature: (int64 ids, int64 offsets [rows + 1]), as the stored split and the loader hold them."""
        schema = schema or self.schema
        out = {}
        for f in schema.sparse:
            bags = encode.bags_of(batch, f)
            ids = encode.encode_ids(batch, schema, f, bags, self.vocabs.get(f.table)).astype(
                layout.id_dtype(schema.id_range(f)), copy=False).astype(np.int64)  # the stored width, as the loader reads it
            lengths = np.ones(batch.num_rows, np.int64) if bags.lengths is None else bags.lengths
            out[f.name] = (ids, lengths)
        return self._expanded(out)

    def _expanded(self, bags: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Bag lengths as offsets, after the loader's multi_hot.sizes expansion if training had one."""
        offsets_of = lambda lengths: np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)  # noqa: E731
        if not self.multi_hot:
            return {f: (ids, offsets_of(lengths)) for f, (ids, lengths) in bags.items()}
        from dlrm_dist.data.columnar.dataset import expand, multi_hot_offsets  # (with the loader: TorchRec)

        extra = multi_hot_offsets(self.schema, self.multi_hot, self.seed)
        rows = {f.name: self.schema.id_range(f) for f in self.schema.sparse}  # as the loader expands them
        out = {}
        for f, (ids, lengths) in bags.items():
            ids, lengths = expand(ids, lengths, extra[f], rows[f])
            out[f] = (ids, offsets_of(lengths))
        return out

    def inputs(self, batch: pa.RecordBatch, schema: Optional[FeatureSchema] = None) -> ModelInputs:
        """The exported program's inputs for a typed batch (read.py's typed reads of the raw rows)."""
        dense = torch.from_numpy(self.dense(batch, schema))
        bags = self.bags(batch, schema)
        return (dense, [torch.from_numpy(bags[f][0]) for f in self.feature_names],
                [torch.from_numpy(bags[f][1]) for f in self.feature_names])
