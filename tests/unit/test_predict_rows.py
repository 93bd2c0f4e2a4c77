"""Raw rows scored through the export's fitted pipeline give the preprocessed split's scores.

The acceptance line of issue 21 item 3: the raw rows that landed in the test split, scored by
``dlrm-predict --input`` (CSV/TSV, JSON lines, Parquet) and by ``Predictor.score``, give the
scores ``dlrm-predict --data DIR --split test`` gives on the preprocessed split, within 1e-6:
on a schema with every feature kind (a trained checkpoint, float and int8 exports) and on
MovieLens' schema (examples/movielens100k.toml). Then: scoring needs no TorchRec; no label is
needed; unseen values take OOV rows; bad rows are named by record or file line, column and
value; a damaged or edited pipeline file is refused by name.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dlrm_dist.cli import export_main, predict_main
from dlrm_dist.errors import EXIT_BAD_INPUT, EXIT_BAD_STATE
from dlrm_dist.serving.manifest import ExportError
from dlrm_dist.serving.predictor import Predictor, RecordError
from dlrm_dist.serving.records import records_batch, typed
from dlrm_dist.serving.score_rows import score_file
from tests import rows_helper as rh
from tests.checkpoint_helper import train_here
from tests.serving_helper import make_export

ROOT = Path(__file__).resolve().parents[2]
MODEL = ["--model.embedding_dim=8", "--model.top_mlp=16-1", "--train.global_batch_size=32", "--train.progress=false"]


@functools.lru_cache(maxsize=None)
def _predictor(export: Path) -> Predictor:
    """One load per export (a load is about a second: the archive inspected, the program rebuilt)."""
    return Predictor.load(export)


def _scores(capsys, *args: str) -> tuple[np.ndarray, dict]:
    out = Path(args[args.index("--out") + 1])
    capsys.readouterr()  # (what the fixtures printed)
    assert predict_main.main([*args, "--no-progress", "--json"]) == 0, capsys.readouterr().err
    return np.load(out), json.loads(capsys.readouterr().out)


def _case(tmp: Path, name: str, rows: list[list[str]], header: list[str], delimiter: str) -> dict:
    raw = rh.write_table(tmp / f"{name}.{'tsv' if delimiter == chr(9) else 'csv'}", header, rows, delimiter)
    data = rh.preprocessed(tmp, name, rh.schema_of(name), raw)
    codes = rh.split_codes(raw, data)
    test_rows = [r for r, c in zip(rows, codes) if c == 2]
    test_raw = rh.write_table(tmp / f"{name}-test{raw.suffix}", header, test_rows, delimiter)
    return {"raw": raw, "data": data, "rows": test_rows, "header": header, "test_raw": test_raw,
            "schema": rh.schema_of(name)}


@pytest.fixture(scope="module")
def every_kind(tmp_path_factory) -> dict:
    """The every-kind schema's data, a checkpoint trained on it (12 steps, one rank in this process),
    its float and int8 exports."""
    tmp = tmp_path_factory.mktemp("every_kind")
    case = _case(tmp, "every_kind", rh.every_kind_rows(600), rh.EVERY_KIND_COLUMNS, ",")
    train_here(["--data.source=columnar", f"--data.data_dir={case['data']}", "--model.bottom_mlp=5-8", *MODEL,
                "--train.steps=12", "--train.eval_interval=0", "--train.device=cpu",
                f"--checkpoint-dir={tmp / 'ckpt'}", f"--run-dir={tmp / 'run'}"], base=[])
    for quantize in ("none", "int8"):
        assert export_main.main([str(tmp / "ckpt"), "--out", str(tmp / f"export-{quantize}"), "--quantize", quantize,
                                 "--no-progress"]) == 0
    return {**case, "tmp": tmp, "exports": {q: tmp / f"export-{q}" for q in ("none", "int8")}}


@pytest.fixture(scope="module")
def movielens(tmp_path_factory) -> dict:
    """MovieLens' schema over rows of its shape; a model of it (random weights) exported float."""
    tmp = tmp_path_factory.mktemp("movielens")
    case = _case(tmp, "movielens", rh.movielens_rows(600), rh.MOVIELENS_COLUMNS, "\t")
    job = ["--data.source=columnar", f"--data.data_dir={case['data']}", "--model.bottom_mlp=2-8", *MODEL]
    make_export(tmp / "export", job)
    return {**case, "tmp": tmp, "exports": {"none": tmp / "export"}}


@pytest.mark.parametrize("name, quantize", [("every_kind", "none"), ("every_kind", "int8"), ("movielens", "none")])
def test_raw_test_rows_score_as_the_preprocessed_test_split(request, capsys, name, quantize) -> None:
    case = request.getfixturevalue(name)
    export, tmp = case["exports"][quantize], case["tmp"]
    want, ref = _scores(capsys, str(export), "--data", str(case["data"]), "--split", "test",
                        "--out", str(tmp / f"ref-{quantize}.npy"))
    got, report = _scores(capsys, str(export), "--input", str(case["test_raw"]), "--out", str(tmp / f"got-{quantize}.npy"))
    assert len(want) == len(case["rows"]) == report["samples"] > 50
    assert np.abs(got - want).max() < 1e-6
    # the rows carry their label: the metrics are the --data path's
    assert report["metrics"]["auc"] == pytest.approx(ref["metrics"]["auc"], abs=1e-6)
    assert report["metrics"]["logloss"] == pytest.approx(ref["metrics"]["logloss"], abs=1e-6)
    # the Python API on the same rows as records (numbers as numbers, lists for multi-hot, nulls),
    # and as a record batch of the file's cells
    records = rh.jsonl_records(case["header"], case["rows"], case["schema"])
    assert np.abs(_predictor(export).score(records) - want).max() < 1e-6
    nulls = {"", *case["schema"].input.null_values}
    cells = [{c: (None if v in nulls else v) for c, v in zip(case["header"], r)} for r in case["rows"]]
    batch = pa.RecordBatch.from_pylist(cells, schema=pa.schema([(c, pa.string()) for c in case["header"]]))
    assert np.abs(_predictor(export).score_batch(batch) - want).max() < 1e-6


def test_jsonl_parquet_and_csv_with_kept_ids_score_alike_without_a_label(every_kind, capsys) -> None:
    tmp, export = every_kind["tmp"], str(every_kind["exports"]["none"])
    want = np.load(tmp / "ref-none.npy") if (tmp / "ref-none.npy").exists() else _scores(
        capsys, export, "--data", str(every_kind["data"]), "--split", "test", "--out", str(tmp / "ref-none.npy"))[0]
    header, rows = every_kind["header"], every_kind["rows"]
    records = rh.jsonl_records(header, rows, every_kind["schema"])
    for r in records:
        del r["clicked"]  # not needed to score
    jsonl = rh.write_jsonl(tmp / "rows.jsonl", records)
    numeric = ("price", "views", "age", "score")  # Parquet columns typed as a dataframe would write them
    table = pa.table({c: pa.array([None if r[k] == "" else float(r[k]) if c in numeric else r[k] for r in rows],
                                  pa.float64() if c in numeric else pa.string())
                      for k, c in enumerate(header) if c != "clicked"})
    pq.write_table(table, tmp / "rows.parquet")
    for path in (jsonl, tmp / "rows.parquet"):  # (dlrm-predict --input's own loop, on a loaded export)
        got = score_file(_predictor(Path(export)), path, [], 64, None, False)
        assert np.abs(got.all_scores() - want).max() < 1e-6, path
        assert got.metrics is None and got.labels is None
    assert predict_main.main([export, "--input", str(every_kind["test_raw"]), "--out", str(tmp / "got.csv"),
                              "--keep", "row_id", "--no-progress"]) == 0
    out = np.genfromtxt(tmp / "got.csv", delimiter=",", names=True, dtype=None, encoding="utf-8")
    assert list(out["row_id"]) == [r[0] for r in rows]
    assert np.abs(out["score"] - want).max() < 1e-6


def test_scoring_needs_no_torchrec(every_kind) -> None:
    """Predictor.load(...).score(...) in a process where torchrec and fbgemm_gpu cannot be imported."""
    records = rh.jsonl_records(every_kind["header"], every_kind["rows"][:20], every_kind["schema"])
    code = f"""
import json, sys
sys.modules['torchrec'] = None
sys.modules['fbgemm_gpu'] = None
from dlrm_dist.serving.predictor import Predictor
records = json.loads({json.dumps(json.dumps(records))})
out = {{q: Predictor.load(p).score(records).tolist() for q, p in {json.dumps({q: str(p) for q, p in every_kind['exports'].items()})}.items()}}
print(json.dumps(out))
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.splitlines()[-1])
    for q, path in every_kind["exports"].items():
        assert np.abs(np.array(got[q]) - _predictor(path).score(records)).max() < 1e-12


def test_unseen_values_take_the_oov_rows_as_in_training(every_kind) -> None:
    predictor = _predictor(every_kind["exports"]["none"])
    record = rh.jsonl_records(every_kind["header"], every_kind["rows"][:1], every_kind["schema"])[0]
    unseen = {**record, "city": "never-seen", "item": "item-new", "tags": ["news", "brand-new"], "zip": "99999"}
    raw, problems = records_batch([unseen], predictor.row_schema)
    assert not problems
    bags = predictor.pipeline.bags(typed(raw, predictor.row_schema, "records", 0), predictor.row_schema)
    assert 0 <= bags["city"][0][0] < 2  # oov_buckets = 2
    assert bags["item"][0][0] == 0 and bags["zip3"][0][0] == 0
    assert list(bags["tags"][0]) == [1 + predictor.pipeline.vocabs["t_tags"].to_pylist().index("news"), 0]
    assert 0 < predictor.score([unseen])[0] < 1


def test_bad_rows_are_named_by_record_or_line_column_and_value(every_kind, tmp_path, capsys) -> None:
    predictor = _predictor(every_kind["exports"]["none"])
    good = rh.jsonl_records(every_kind["header"], every_kind["rows"][:4], every_kind["schema"])
    bad = [good[0], {**good[1], "price": "cheap"}, {k: v for k, v in good[2].items() if k != "city"},
           {**good[3], "user": 77}]
    with pytest.raises(RecordError) as e:
        predictor.score(bad)
    assert [(p.record, p.column) for p in e.value.problems] == [(2, "city")]  # a missing key first
    with pytest.raises(RecordError) as e:
        predictor.score([bad[0], bad[1], good[2], bad[3]])
    problems = e.value.problems
    assert [(p.record, p.column, p.value) for p in problems] == [(1, "price", "cheap"), (3, "user", "77")]
    assert "not a number" in problems[0].message and "outside [0, 50)" in problems[1].message
    assert e.value.exit_code == EXIT_BAD_INPUT and str(e.value).startswith("record 1, column 'price'")
    # files: the line (header = line 1), the column and the value; a missing feature column by name
    lines = every_kind["test_raw"].read_text().splitlines()
    cells = lines[3].split(",")
    cells[every_kind["header"].index("views")] = "many"
    (tmp_path / "bad.csv").write_text("\n".join([*lines[:3], ",".join(cells), *lines[4:]]) + "\n")
    with pytest.raises(RecordError) as e:
        score_file(predictor, tmp_path / "bad.csv", [], 64, None, False)
    assert f"{tmp_path / 'bad.csv'} line 4, column 'views'" in str(e.value) and "'many' is not a number" in str(e.value)
    assert [(p.record, p.column) for p in e.value.problems] == [(4, "views")]
    header = every_kind["header"]
    drop = header.index("ad")
    (tmp_path / "noad.csv").write_text("\n".join(",".join(c for k, c in enumerate(line.split(",")) if k != drop)
                                                 for line in lines) + "\n")
    assert predict_main.main([str(every_kind["exports"]["none"]), "--input", str(tmp_path / "noad.csv")]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "column 'ad'" in err and "has no column 'ad'" in err and "Traceback" not in err, err
    (tmp_path / "bad.jsonl").write_text(json.dumps(good[0]) + "\n\n" + json.dumps({**good[1], "age": [1]}) + "\n")
    with pytest.raises(RecordError, match=r"bad.jsonl line 3, column 'age' \(value \[1\]\)"):
        score_file(predictor, tmp_path / "bad.jsonl", [], 64, None, False)


@pytest.fixture
def copy(every_kind, tmp_path) -> Path:
    d = tmp_path / "export"
    shutil.copytree(every_kind["exports"]["none"], d)
    return d


def _manifest(d: Path) -> dict:
    return json.loads((d / "export.json").read_text())


def _rewrite_vocab(d: Path, table: str, values: list, fix_checksum: bool) -> None:
    import hashlib

    data = json.dumps(values).encode()
    (d / "vocab" / f"{table}.json").write_bytes(data)
    if fix_checksum:
        m = _manifest(d)
        m["pipeline"]["vocabularies"][table]["sha256"] = hashlib.sha256(data).hexdigest()
        (d / "export.json").write_text(json.dumps(m))


@pytest.mark.parametrize("damage, words", [
    ("edited", "t_city.json is damaged or edited: its sha256"),
    ("missing", "t_city.json is missing"),
    ("repeated", "t_city.json is damaged: it lists a value twice"),
    ("shorter", "values; table 't_city' of the fitted schema has"),
    ("not_a_list", "t_city.json is damaged: a vocabulary is a JSON array"),
    ("no_pipeline", "exported without its feature pipeline"),
    ("foreign_table", "pipeline.vocabularies names table(s)"),
])
def test_a_damaged_or_edited_pipeline_file_is_refused_by_name(copy, capsys, damage, words) -> None:
    values = json.loads((copy / "vocab" / "t_city.json").read_text())
    m = _manifest(copy)
    if damage == "edited":
        _rewrite_vocab(copy, "t_city", [values[1], values[0], *values[2:]], fix_checksum=False)
    elif damage == "missing":
        (copy / "vocab" / "t_city.json").unlink()
    elif damage == "repeated":
        _rewrite_vocab(copy, "t_city", [values[0], *values[:-1]], fix_checksum=True)
    elif damage == "shorter":
        _rewrite_vocab(copy, "t_city", values[:-1], fix_checksum=True)
    elif damage == "not_a_list":
        _rewrite_vocab(copy, "t_city", {"a": 1}, fix_checksum=True)
    elif damage == "no_pipeline":
        m.pop("pipeline")
        (copy / "export.json").write_text(json.dumps(m))
    else:
        m["pipeline"]["vocabularies"]["t_other"] = m["pipeline"]["vocabularies"].pop("t_city")
        (copy / "export.json").write_text(json.dumps(m))
    with pytest.raises(ExportError, match=re.escape(words)):
        Predictor.load(copy)
    (copy / "rows.jsonl").write_text("{}\n")
    assert predict_main.main([str(copy), "--input", str(copy / "rows.jsonl")]) == EXIT_BAD_STATE
    assert words in capsys.readouterr().err


def test_criteo_lines_score_through_criteo_s_own_parser(tmp_path, capsys) -> None:
    """Criteo's fixed layout (input format criteo_tsv): the raw lines of the test split (the second half
    of the last of two pseudo-days) score as the preprocessed test split does."""
    from dlrm_dist.data.columnar.preprocess import Options, preprocess
    from dlrm_dist.features.io import load_schema
    from tests.sample_data import criteo_sample as sample

    criteo_sample = sample()
    sizes = "/".join(["100", "200", "50", "80"] * 6 + ["30", "30"])
    preprocess(Options(load_schema(f"criteo:table_sizes={sizes},days=2"), [criteo_sample], tmp_path / "data",
                       progress=False))
    make_export(tmp_path / "export", ["--data.source=columnar", f"--data.data_dir={tmp_path / 'data'}",
                                      "--model.bottom_mlp=13-8", *MODEL])
    ref, _ = _scores(capsys, str(tmp_path / "export"), "--data", str(tmp_path / "data"), "--split", "test",
                     "--out", str(tmp_path / "test.npy"))
    got, report = _scores(capsys, str(tmp_path / "export"), "--input", str(criteo_sample), "--out",
                          str(tmp_path / "got.npy"))
    assert report["samples"] == 200 and report["metrics"]["samples"] == 200
    assert len(ref) == 50 and np.abs(got[150:] - ref).max() < 1e-6  # the last pseudo-day's second half


def test_vocabularies_of_a_directory_preprocessed_again_are_not_copied(every_kind, tmp_path, monkeypatch) -> None:
    """dlrm-export takes the vocabularies from the training config's directory only while it holds the
    model's fitted schema: preprocessed again (other rows, other vocabularies), the export gets none."""
    from dlrm_dist.data.columnar.layout import stored_schema
    from dlrm_dist.serving.pipeline import copy_vocabularies

    model_schema = stored_schema(every_kind["data"])
    assert set(copy_vocabularies(model_schema, every_kind["data"], tmp_path / "a").vocabularies) == {
        "t_city", "t_item", "t_tags", "t_zip3"}
    raw = rh.write_table(tmp_path / "other.csv", rh.EVERY_KIND_COLUMNS, rh.every_kind_rows(120, seed=3))
    other = rh.preprocessed(tmp_path, "other", rh.schema_of("every_kind"), raw)
    from dlrm_dist.serving import pipeline

    warned: list[str] = []
    monkeypatch.setattr(pipeline.logger, "warning", lambda msg, *args: warned.append(msg % args))
    assert copy_vocabularies(model_schema, other, tmp_path / "b") is None
    assert "preprocessed with another fitted schema" in warned[0] and not (tmp_path / "b" / "vocab").exists()
