"""Ids scoring computes as training did, what an export refuses, and the metrics it carries.

- An ``int_modulo`` feature's numbers mean their value when the model was trained on Parquet
  (an integer column), their decimal text in base 16 when it was trained on text files, and are
  refused by name when the export cannot tell (input.format unset): records, JSON lines and
  record batches alike.
- A managed feature's raw 64-bit ids keep their width through the pipeline (int64, never int32).
- ``Predictor.metadata()["metrics"]`` of a float export says what the checkpoint knew.
"""

from __future__ import annotations

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


BEST = {"step": 5, "metric": "auc", "mode": "max", "value": 0.625}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Predictor:
    """A model (random weights, step 7, a best evaluation at step 5) of a Parquet file whose int_modulo
    column holds integers, exported float with --data (its eval split scored at export)."""
    from dlrm_dist.checkpoint.manifest import BestMark

    tmp = tmp_path_factory.mktemp("ids")
    pq.write_table(_table(), tmp / "rows.parquet")
    data = tmp / "data"
    preprocess(Options(from_dict(_schema("parquet")), [tmp / "rows.parquet"], data, progress=False))
    make_export(tmp / "export", ["--data.source=columnar", f"--data.data_dir={data}", *MODEL], step=7,
                data_dir=str(data), best=BestMark(**BEST))
    return Predictor.load(tmp / "export")


def _trained_on(p: Predictor, fmt: Optional[str]) -> Predictor:
    """The same model as if its schema had said input.format ``fmt`` (None: from each file's name)."""
    schema = from_dict(_schema(fmt))
    return Predictor(p.directory, p.export, type(p.pipeline)(schema, p.pipeline.vocabs, p.pipeline.feature_names))


def _records(table: pa.Table) -> list[dict]:
    return table.drop(["clicked"]).to_pylist()


def test_parquet_trained_int_modulo_records_take_the_integer_value(trained) -> None:
    """Records and JSON lines give the ids the Parquet file's integer column gave in training (the
    value modulo buckets), so they score as score_batch does on the same Parquet rows; a whole float
    is that integer; a string keeps the text rule (base 16); numbers and strings in one batch are
    refused by record (a Parquet column has one type)."""
    p, table = trained, _table()
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


def test_a_number_is_refused_when_the_export_cannot_tell_the_training_rule(trained) -> None:
    """input.format unset (the format from each file's name): a number for an int_modulo feature is
    refused by name, in records and in a record batch; its text is scored."""
    p, table = _trained_on(trained, None), _table()
    with pytest.raises(RecordError, match=r"record 0, column 'uid' .*input.format is unset"):
        p.score(_records(table)[:1])
    with pytest.raises(RecordError, match=r"column 'uid'.*input.format is unset"):
        p.score_batch(table.to_batches()[0])
    assert len(p.score([{**r, "uid": format(r["uid"], "x")} for r in _records(table)])) == ROWS


def test_text_trained_int_modulo_reads_a_number_column_as_its_text(trained) -> None:
    """A model trained on CSV read '17' in base 16: a record batch's integer column 17 means that cell,
    not the value 17 (read as the Parquet rule would read it)."""
    p, text = trained, _trained_on(trained, "csv")
    table = _table()
    as_text = table.set_column(1, "uid", pa.array([str(v) for v in table.column("uid").to_pylist()]))
    want = text.score_batch(as_text.to_batches()[0])
    assert np.abs(text.score_batch(table.to_batches()[0]) - want).max() < 1e-12
    assert np.abs(text.score(_records(table)) - want).max() < 1e-12
    assert np.abs(p.score_batch(table.to_batches()[0]) - want).max() > 1e-6  # the two rules differ here


# -- managed features (their export and scoring: tests/unit/test_managed_export.py) ---------------------
def test_pipeline_ids_keep_the_width_of_their_id_range() -> None:
    """The pipeline casts ids to the stored width of the feature's id range (schema.id_range), so a
    managed feature's raw ids past 2**31 are kept whole (int32, a table's width, would cut them)."""
    from dlrm_dist.serving.pipeline import FeaturePipeline

    schema = from_dict({"name": "m", "label": {"column": "clicked"}, "input": {"format": "parquet"},
                        "dense": [{"name": "price"}],
                        "sparse": [{"name": "uid", "kind": "managed", "hash": "int_modulo", "buckets": 8}]})
    big = [2**40 + 5, 3, 2**33]
    batch = pa.record_batch({"text:uid": pa.array(big, pa.int64()), "num:price": pa.array([1.0, 2.0, 3.0]),
                             "num:clicked": pa.array([0.0, 1.0, 0.0])})
    ids, _ = FeaturePipeline(schema, {}, ("uid",)).bags(batch)["uid"]
    assert ids.tolist() == big


# -- metrics at export ---------------------------------------------------------------------------------
def test_a_float_export_carries_the_metrics_the_checkpoint_and_its_eval_split_give(trained, capsys) -> None:
    """metadata()["metrics"]: the checkpoint manifest's best evaluation (its split, step, metric and
    value, and whether the export is that step) and, with --data, the float model's metrics on the
    eval split as dlrm-predict measures them there; {} when neither is known (an older export.json)."""
    import json

    from dlrm_dist.cli import predict_main
    from dlrm_dist.serving.predictor import _metrics_at_export

    metrics = trained.metadata()["metrics"]
    assert metrics["best"] == {"source": "checkpoint manifest (best evaluation of the run)", "split": "val",
                               **BEST, "exported": False}
    capsys.readouterr()
    out = trained.directory.parent / "val.npy"
    assert predict_main.main([str(trained.directory), "--data", str(trained.directory.parent / "data"), "--split",
                              "val", "--out", str(out), "--no-progress", "--json"]) == 0
    ref = json.loads(capsys.readouterr().out)
    ev = metrics["eval"]
    assert (ev["source"], ev["split"], ev["step"], ev["samples"]) == ("measured at export", "val", 7, ref["samples"])
    assert ev["auc"] == pytest.approx(ref["metrics"]["auc"], abs=1e-9)
    assert ev["logloss"] == pytest.approx(ref["metrics"]["logloss"], abs=1e-9)
    assert _metrics_at_export(trained.export.manifest.model_copy(update={"metrics": None})) == {}
