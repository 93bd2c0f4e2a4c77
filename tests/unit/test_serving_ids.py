"""Ids scoring computes as training did, what an export refuses, and the metrics it carries.

- An ``int_modulo`` feature's numbers mean their value when the model was trained on Parquet
  (an integer column), their decimal text in base 16 when it was trained on text files, and are
  refused by name when the export cannot tell (input.format unset): records, JSON lines and
  record batches alike.
- ``dlrm-export`` refuses a model with managed features by name, before any work.
- ``Predictor.metadata()["metrics"]`` of a float export says what the checkpoint knew.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dlrm_dist.data.columnar.preprocess import Options, preprocess
from dlrm_dist.features.schema import from_dict
from dlrm_dist.serving.predictor import Predictor, RecordError
from tests.serving_helper import make_export

MODEL = ["--model.embedding_dim=8", "--model.top_mlp=16-1", "--train.global_batch_size=32", "--train.progress=false",
         "--model.bottom_mlp=1-8"]
ROWS = 40


def _schema(fmt: Optional[str]) -> dict:
    return {"name": "ids", "label": {"column": "clicked"}, "input": {"format": fmt} if fmt else {},
            "split": {"by": "random", "fractions": [0.6, 0.2, 0.2], "seed": 3},
            "dense": [{"name": "price"}],
            "sparse": [{"name": "uid", "kind": "hash", "hash": "int_modulo", "buckets": 13, "dim": 8},
                       {"name": "city", "kind": "hash", "buckets": 7, "dim": 8}]}


def _table() -> pa.Table:
    rng = np.random.default_rng(0)
    return pa.table({"price": rng.random(ROWS), "uid": rng.integers(0, 10**6, ROWS).astype(np.int64),
                     "city": [f"c{i % 5}" for i in range(ROWS)], "clicked": (rng.random(ROWS) < 0.5).astype(np.int64)})


@functools.lru_cache(maxsize=None)
def _export(tmp: Path, fmt: Optional[str]) -> Predictor:
    """A model trained (random weights) on a Parquet file whose int_modulo column holds integers."""
    pq.write_table(_table(), tmp / "rows.parquet")
    data = tmp / f"data-{fmt}"
    preprocess(Options(from_dict(_schema(fmt)), [tmp / "rows.parquet"], data, progress=False))
    make_export(tmp / f"export-{fmt}", ["--data.source=columnar", f"--data.data_dir={data}", *MODEL])
    return Predictor.load(tmp / f"export-{fmt}")


@pytest.fixture(scope="module")
def tmp(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ids")


def _records(table: pa.Table) -> list[dict]:
    return table.drop(["clicked"]).to_pylist()


def test_parquet_trained_int_modulo_records_take_the_integer_value(tmp) -> None:
    """Records and JSON lines give the ids the Parquet file's integer column gave in training (the
    value modulo buckets), so they score as score_batch does on the same Parquet rows; a whole float
    is that integer; a string keeps the text rule (base 16); numbers and strings in one batch are
    refused by record (a Parquet column has one type)."""
    p, table = _export(tmp, "parquet"), _table()
    batch = table.to_batches()[0]
    want = p.score_batch(batch)
    uid = p.schema.sparse[0]
    _, ids, _ = p.prepare(*_records_raw(p, _records(table)))[1]
    assert np.array_equal(ids[p.pipeline.feature_names.index("uid")].numpy(),
                          table.column("uid").to_numpy() % p.schema.table_rows(uid.table))
    assert np.abs(p.score(_records(table)) - want).max() < 1e-12
    floats = [{**r, "uid": float(r["uid"])} for r in _records(table)]
    assert np.abs(p.score(floats) - want).max() < 1e-12
    rec = _records(table)[0]
    assert p.score([{**rec, "uid": format(rec["uid"], "x")}])[0] == pytest.approx(want[0], abs=1e-12)
    with pytest.raises(RecordError) as e:
        p.score([rec, {**rec, "uid": "7"}, {**rec, "uid": 3}])
    assert [(q.record, q.column) for q in e.value.problems] == [(1, "uid")]
    with pytest.raises(RecordError, match=r"record 0, column 'uid' \(value 1.5\): 1.5 is not a whole number"):
        p.score([{**rec, "uid": 1.5}])


def _records_raw(p: Predictor, records: list[dict]):
    from dlrm_dist.serving.records import RECORDS, records_batch

    raw, problems = records_batch(records, p.row_schema, integers=p.integers)
    assert not problems
    return raw, RECORDS, "record", lambda i: i


def test_a_number_is_refused_when_the_export_cannot_tell_the_training_rule(tmp) -> None:
    """input.format unset (the format from each file's name): a number for an int_modulo feature is
    refused by name, in records and in a record batch; its text is scored."""
    p, table = _export(tmp, None), _table()
    with pytest.raises(RecordError, match=r"record 0, column 'uid' .*input.format is unset"):
        p.score(_records(table)[:1])
    with pytest.raises(RecordError, match=r"column 'uid'.*input.format is unset"):
        p.score_batch(table.to_batches()[0])
    assert len(p.score([{**r, "uid": format(r["uid"], "x")} for r in _records(table)])) == ROWS


def test_text_trained_int_modulo_reads_a_number_column_as_its_text(tmp) -> None:
    """A model trained on CSV read '17' in base 16: a record batch's integer column 17 means that cell,
    not the value 17 (read as the Parquet rule would read it)."""
    p = _export(tmp, "parquet")
    text_schema = from_dict(_schema("csv"))
    text = Predictor(p.directory, p.export, type(p.pipeline)(text_schema, p.pipeline.vocabs,
                                                             p.pipeline.feature_names))
    table = _table()
    as_text = table.set_column(1, "uid", pa.array([str(v) for v in table.column("uid").to_pylist()]))
    want = text.score_batch(as_text.to_batches()[0])
    assert np.abs(text.score_batch(table.to_batches()[0]) - want).max() < 1e-12
    assert np.abs(text.score(_records(table)) - want).max() < 1e-12
    assert np.abs(p.score_batch(table.to_batches()[0]) - want).max() > 1e-6  # the two rules differ here
