"""Input data checked cell by cell, columns with several uses, and a CLI that never aborts at exit.

Every expected value is worked out here from the CSV text (FNV-1a, statistics, line numbers),
independently of the code under test.
"""

from __future__ import annotations

import datetime
import gzip
import io
import json
import os
import subprocess
import sys
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest

from dlrm_dist.cli.data_main import main as data_main
from dlrm_dist.data.columnar import columns, csv_kernel, locate, read
from dlrm_dist.data.columnar.dataset import ColumnarDataset
from dlrm_dist.data.columnar.preprocess import Options, preprocess
from dlrm_dist.data.errors import DataError, PreprocessError
from dlrm_dist.features import SchemaError
from dlrm_dist.features.schema import SPLITS, from_dict
from tests.data.reference import fnv1a

ROOT = Path(__file__).resolve().parents[2]
BASE = {
    "name": "cells",
    "label": {"column": "y"},
    "split": {"by": "random", "fractions": [0.5, 0.25, 0.25], "seed": 1},
    "dense": [{"name": "x", "fill": 7.0}],
    "sparse": [{"name": "c", "kind": "hash", "buckets": 10}],
}


def _csv(tmp: Path, text: str, name: str = "d.csv") -> Path:
    p = tmp / name
    p.write_text(text)
    return p


def _rows(n: int) -> str:
    return "x,c,y\n" + "".join(f"{i},k{i % 3},{i % 2}\n" for i in range(n))


def _run(tmp: Path, inputs: list[Path], schema: dict = BASE, out: str = "out", **kw):
    return preprocess(Options(from_dict(schema), inputs, tmp / out, progress=False, **kw))



def _all(out: Path, name: str) -> np.ndarray:
    """A file's arrays of the three splits, concatenated (random split: row order within splits kept)."""
    return np.concatenate([np.load(out / s / name) for s in ("train", "val", "test")])


def _refused(tmp: Path, inputs: list[Path], schema: dict, *words: str, error=PreprocessError) -> str:
    with pytest.raises(error) as e:
        _run(tmp, inputs, schema)
    for w in words:
        assert w in str(e.value), f"{w!r} not in: {e.value}"
    assert not (tmp / "out" / "meta.json").exists()
    return str(e.value)


# -- item 12: cells ---------------------------------------------------------------------------------
@pytest.mark.parametrize("cell", ["inf", "-inf", "nan", "NaN", "1e400"])
def test_a_non_finite_dense_cell_is_refused_by_file_line_and_column(tmp_path: Path, cell: str) -> None:
    data = _csv(tmp_path, f"x,c,y\n1,a,0\n2,b,1\n{cell},a,1\n4,b,0\n")
    _refused(tmp_path, [data], BASE, f"{data} line 4", "column 'x'", repr(cell), "not a finite number",
             "null_values")


def test_a_non_finite_cell_listed_in_null_values_is_missing(tmp_path: Path) -> None:
    data = _csv(tmp_path, "x,c,y\n1,a,0\n2,b,1\nnan,a,1\n4,b,0\n-inf,a,0\n6,b,1\n")
    _run(tmp_path, [data], {**BASE, "input": {"null_values": ["nan", "-inf"]}})
    assert sorted(_all(tmp_path / "out", "dense.npy")[:, 0].tolist()) == [1, 2, 4, 6, 7, 7]  # fill = 7


@pytest.mark.parametrize("column, row", [("y", "1,a,inf"), ("ts", "1,a,0,nan")])
def test_a_non_finite_label_or_time_is_refused(tmp_path: Path, column: str, row: str) -> None:
    schema = dict(BASE)
    head = "x,c,y"
    if column == "ts":
        schema["split"] = {"by": "time", "column": "ts", "fractions": [0.5, 0.25, 0.25]}
        head += ",ts"
        rows = [f"{i},a,0,{i}" for i in range(1, 4)]
    else:
        rows = [f"{i},a,0" for i in range(1, 4)]
    data = _csv(tmp_path, "\n".join([head, *rows, row]) + "\n")
    _refused(tmp_path, [data], schema, f"{data} line 5", f"column {column!r}", "not a finite number")


def test_the_line_is_found_past_embedded_newlines_malformed_lines_and_blocks(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(columns, "BLOCK_BYTES", 1 << 12)  # many record batches: the bad cell is in a later one
    lines = ["x,c,y", '1,"two\nlines",0', "2,a", *[f"{i},k,{i % 2}" for i in range(3, 600)], "oops,k,1", "9,k,0"]
    data = _csv(tmp_path, "\n".join(lines) + "\n")
    bad_line = 1 + 1 + lines.index("oops,k,1")  # physical lines: the quoted cell spans two
    _refused(tmp_path, [data], BASE, f"{data} line {bad_line}", "'oops' is not a number", "column 'x'")


@pytest.mark.parametrize("rows, words", [
    ("x,c,y\n-2,a,0\n1,b,1\n", ["line 2", "log1p of -2.0", "clip"]),
    ("x,c,y\n0,a,0\n-1,b,1\n", ["line 3", "log1p of -1.0"]),
])
def test_log1p_outside_its_domain_is_named(tmp_path: Path, rows: str, words: list[str]) -> None:
    schema = {**BASE, "dense": [{"name": "x", "transform": ["log1p", "standardize"]}]}
    _refused(tmp_path, [_csv(tmp_path, rows)], schema, "dense feature 'x'", *words)


def test_a_value_beyond_float32_is_named_and_nothing_non_finite_is_written(tmp_path: Path) -> None:
    data = _csv(tmp_path, "x,c,y\n1,a,0\n1e39,b,1\n")
    _refused(tmp_path, [data], BASE, f"{data} line 3", "dense feature 'x'", "non-finite", "clip or log1p")
    huge = {**BASE, "dense": [{"name": "x", "transform": "standardize"}]}
    rows = "x,c,y\n" + "".join(f"{s}1e300,a,{i % 2}\n" for i, s in enumerate("-+" * 20))
    _refused(tmp_path, [_csv(tmp_path, rows)], huge, "dense feature 'x'", "overflow", "log1p or clip")


def test_standardize_of_a_constant_column_writes_zeros(tmp_path: Path) -> None:
    rows = "x,c,y\n" + "".join(f"5,a,{i % 2}\n" for i in range(40))
    _run(tmp_path, [_csv(tmp_path, rows)], {**BASE, "dense": [{"name": "x", "transform": ["log1p", "standardize"]}]})
    dense = _all(tmp_path / "out", "dense.npy")
    assert np.isfinite(dense).all() and np.abs(dense).max() < 1e-6  # not rounding noise blown up to +-1


def test_header_false_with_another_field_count_is_refused_before_reading(tmp_path: Path) -> None:
    data = _csv(tmp_path, "1,a,0,extra\n2,b,1,extra\n")
    schema = {**BASE, "input": {"header": False, "columns": ["x", "c", "y"]}}
    _refused(tmp_path, [data], schema, str(data), "4 fields", "names 3", "header = false")


def _gzip_truncated(tmp: Path) -> Path:
    p = tmp / "t.csv.gz"
    p.write_bytes(gzip.compress(_rows(3000).encode())[:-40])
    return p


@pytest.mark.parametrize("make, words", [
    (lambda t: _csv(t, ""), ["is empty"]),
    (lambda t: _csv(t, "x,c,y\n"), ["no data rows"]),
    (lambda t: _csv(t, "x,c,y\n1,2\n3,4\n"), ["all of its 2 data line(s) are malformed"]),
    (_gzip_truncated, ["not a complete gzip file"]),
    (lambda t: _csv(t, _rows(5), "plain.csv.gz"), ["not a complete gzip file", "rename"]),
])
def test_unusable_files_are_named_by_the_cli(tmp_path: Path, capsys, make, words: list[str]) -> None:
    data = make(tmp_path)
    (tmp_path / "s.json").write_text(json.dumps(BASE))
    code = data_main(["preprocess", "--schema", str(tmp_path / "s.json"), "--input", str(data),
                      "--out", str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for w in [str(data), *words]:
        assert w in err, f"{w!r} not in: {err}"


def test_a_split_that_ends_up_empty_is_refused_at_preprocessing(tmp_path: Path) -> None:
    by_time = {**BASE, "split": {"by": "time", "column": "ts", "fractions": [0.8, 0.1, 0.1]}}
    data = _csv(tmp_path, "x,c,y,ts\n" + "".join(f"{i},a,{i % 2},5\n" for i in range(20)))  # one time for all
    _refused(tmp_path, [data], by_time, "['train', 'val'] would be empty", "test 20",
             "time column 'ts'")  # ties go to the later split
    _refused(tmp_path, [_csv(tmp_path, _rows(2), "two.csv")], BASE, "would be empty", "of 2")
    no_test = {**BASE, "split": {"by": "random", "fractions": [0.5, 0.5, 0.0], "seed": 1}}
    assert _run(tmp_path, [_csv(tmp_path, _rows(40))], no_test, out="ok").rows["test"] == 0  # asked for
    with pytest.raises(DataError, match=r"the test split is empty.*data.eval_split=val, \d+ rows"):
        ColumnarDataset(tmp_path / "ok", eval_split="test")  # before training, not at its final eval


# -- item 13: one column, several uses --------------------------------------------------------------
def test_a_column_serves_several_uses_each_with_its_own_typed_read(tmp_path: Path) -> None:
    rows = [(i, 20 + (i * 7) % 50, f"u{i % 5}") for i in range(60)]  # (ts, age, user)
    data = _csv(tmp_path, "ts,age,user,y\n" + "".join(f"{t},{a},{u},{t % 2}\n" for t, a, u in rows))
    schema = {
        "label": {"column": "y"},
        "split": {"by": "time", "column": "ts", "fractions": [0.5, 0.25, 0.25]},
        "dense": [{"name": "age_std", "column": "age", "transform": "standardize"}],
        "sparse": [
            {"name": "hour", "column": "ts", "kind": "identity", "buckets": 60},  # the time column, also an id
            {"name": "age_cat", "column": "age", "kind": "vocab"},  # standardised above, a category here
            {"name": "user_h7", "column": "user", "kind": "hash", "buckets": 7},
            {"name": "user_h11", "column": "user", "kind": "hash", "buckets": 11, "prefix": 1},
        ],
    }
    _run(tmp_path, [data], schema)
    out = tmp_path / "out"
    train = [r for r in rows if r[0] < 30]  # quantiles of 0..59 at 0.5 / 0.75: 29.5 and 44.25
    assert np.load(out / "train" / "hour.ids.npy").tolist() == [t for t, _, _ in train]
    ages = np.array([a for _, a, _ in train], float)
    np.testing.assert_allclose(np.load(out / "train" / "dense.npy")[:, 0], (ages - ages.mean()) / ages.std(), rtol=1e-5)
    counts: dict[str, int] = {}
    for _, a, _ in train:
        counts[str(a)] = counts.get(str(a), 0) + 1
    vocab = sorted(counts, key=lambda v: (-counts[v], v))
    assert json.loads((out / "vocab" / "t_age_cat.json").read_text()) == vocab
    assert np.load(out / "train" / "age_cat.ids.npy").tolist() == [1 + vocab.index(str(a)) for _, a, _ in train]
    assert np.load(out / "train" / "user_h7.ids.npy").tolist() == [fnv1a(u) % 7 for _, _, u in train]
    assert np.load(out / "train" / "user_h11.ids.npy").tolist() == [fnv1a(u[:1]) % 11 for _, _, u in train]
    # Parquet: the same uses of typed columns give the same arrays
    table = pa_csv.read_csv(data)
    pq.write_table(table, tmp_path / "d.parquet")
    _run(tmp_path, [tmp_path / "d.parquet"], schema, out="pq")
    for name in ("hour.ids.npy", "dense.npy", "user_h7.ids.npy", "user_h11.ids.npy"):
        np.testing.assert_array_equal(np.load(out / "test" / name), np.load(tmp_path / "pq" / "test" / name))


@pytest.mark.parametrize("use", [{"dense": [{"name": "leak", "column": "y"}]},
                                 {"sparse": [{"name": "leak", "column": "y", "kind": "hash", "buckets": 2}]}])
def test_the_label_as_an_input_is_refused(tmp_path: Path, use: dict) -> None:
    _refused(tmp_path, [_csv(tmp_path, _rows(20))], {**BASE, **use}, "column 'y' is the label", "'leak'",
             error=SchemaError)


# -- item 14: the exit abort ------------------------------------------------------------------------
class _SlowFile(io.RawIOBase):
    """A file whose later blocks take a while: Arrow's read-ahead is in flight when the reader is dropped."""

    def __init__(self, path: str) -> None:
        self._f, self._reads = open(path, "rb"), 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        self._reads += 1
        if self._reads > 2:
            time.sleep(0.2)
        return self._f.readinto(b)

    def close(self) -> None:
        self._f.close()
        super().close()


def test_a_read_ends_only_once_arrow_has_dropped_its_python_handler(tmp_path: Path, monkeypatch) -> None:
    """The cause of the exit-134 abort, deterministically: a reader dropped while Arrow reads ahead
    is destroyed on Arrow's IO thread, which then needs the GIL for our row handler. A read that
    returns (here: closed after one batch, as on an error) must leave Arrow holding no handler."""
    data = _csv(tmp_path, _rows(20000))
    monkeypatch.setattr(columns, "BLOCK_BYTES", 1 << 14)
    handlers: list[weakref.ref] = []
    real_parse, real_open = pa_csv.ParseOptions, pa_csv.open_csv

    def spy_parse(*args, **kw):
        if kw.get("invalid_row_handler") is not None:
            handlers.append(weakref.ref(kw["invalid_row_handler"]))
        return real_parse(*args, **kw)

    monkeypatch.setattr(pa_csv, "ParseOptions", spy_parse)
    monkeypatch.setattr(pa_csv, "open_csv", lambda source, **kw: real_open(_SlowFile(source), **kw))
    batches = read.read_file(data, from_dict(BASE), read.BadLines())
    assert next(batches).num_rows > 0
    batches.close()
    assert handlers and all(ref() is None for ref in handlers)


def test_the_cli_exits_0_every_time(tmp_path: Path) -> None:
    """30 fresh CLI processes, 3 at a time (contention is what exposed the abort), each exits 0.

    Before the fix about 4% of runs aborted under contention, so 30 runs catch it about 70% of
    the time; the deterministic test of the cause is the one above."""
    data = _csv(tmp_path, _rows(50))
    schema = tmp_path / "s.json"
    schema.write_text(json.dumps({**BASE, "dense": [{"name": "x", "transform": "standardize"}]}))
    env = {**os.environ, "PYTHONFAULTHANDLER": "1"}

    def once(k: int) -> tuple[int, str]:
        cmd = [sys.executable, "-m", "dlrm_dist.cli.data_main", "preprocess", "--schema", str(schema),
               "--input", str(data), "--out", str(tmp_path / f"out{k}"), "--overwrite", "--no-progress"]
        p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
        return p.returncode, p.stderr

    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(once, range(30)))
    failed = [(code, err[-300:]) for code, err in results if code != 0]
    assert not failed, failed


def test_a_malformed_line_is_named_by_its_line_past_embedded_newlines(tmp_path: Path) -> None:
    """pyarrow numbers malformed rows by record; a quoted cell holding newlines puts lines ahead of records."""
    data = _csv(tmp_path, 'x,c,y\n1,"a\nb\nc",0\n2,b\n3,c,1\n4,d,0\n5,e,1\n')
    report = _run(tmp_path, [data], {**BASE, "split": {"by": "random", "fractions": [1.0, 0.0, 0.0]}})
    assert report.skipped == 1 and report.examples == [f"{data}:5: 2 fields, expected 3"]
    with pytest.raises(PreprocessError, match=rf"{data}:5: 2 fields, expected 3 \(--strict"):
        _run(tmp_path, [data], BASE, out="strict", strict=True)


def test_a_quoted_empty_numeric_cell_is_named_by_its_line(tmp_path: Path) -> None:
    """Unquoted, an empty cell is missing (filled); quoted, it is an empty string: not a number (found by the fuzz)."""
    data = _csv(tmp_path, 'x,c,y\n,a,0\n"",b,1\n3,c,0\n')
    _refused(tmp_path, [data], BASE, f"{data} line 3", "'' is not a number", "column 'x'")


def test_int_modulo_of_an_integer_parquet_column_takes_its_value_not_its_text_in_base_16(tmp_path: Path) -> None:
    n = 40
    ids = np.arange(n, dtype=np.int64) * 37 + 10  # decimal text read in base 16 would give other ids
    pq.write_table(pa.table({"x": np.arange(n, dtype=np.float64), "c": ids, "y": np.arange(n) % 2}),
                   tmp_path / "d.parquet")
    schema = {**BASE, "split": {"by": "random", "fractions": [1.0, 0.0, 0.0], "seed": 1},
              "sparse": [{"name": "c", "kind": "hash", "hash": "int_modulo", "buckets": 1000}]}
    _run(tmp_path, [tmp_path / "d.parquet"], schema)
    assert np.array_equal(np.load(tmp_path / "out" / "train" / "c.ids.npy"), ids % 1000)
    mixed = {**schema, "sparse": [*schema["sparse"], {"name": "c2", "column": "c", "kind": "hash", "buckets": 10}]}
    with pytest.raises(SchemaError, match="int_modulo feature.*'c'.*column of their own"):
        _run(tmp_path, [tmp_path / "d.parquet"], mixed, out="out2")


def test_a_directory_whose_job_record_predates_the_new_schema_entries_is_still_this_jobs(tmp_path: Path) -> None:
    src = _csv(tmp_path, _rows(40))
    _run(tmp_path, [src])
    job = tmp_path / "out" / "job.json"
    record = json.loads(job.read_text())
    for f in record["schema"]["sparse"]:  # as the code before hash/order/days wrote it
        f.pop("hash", None), f.pop("order", None)
    record["schema"]["split"].pop("days", None)
    job.write_text(json.dumps(record))
    assert _run(tmp_path, [src]).up_to_date


def test_int_modulo_of_a_float_parquet_id_column_takes_whole_values_and_names_a_fraction(tmp_path: Path) -> None:
    ids = [None, 757.0, 407.0, 10.0] * 10  # pandas writes an integer column with gaps as float64
    pq.write_table(pa.table({"x": np.arange(40, dtype=np.float64), "c": pa.array(ids, pa.float64()),
                             "y": np.arange(40) % 2}), tmp_path / "f.parquet")
    schema = {**BASE, "split": {"by": "random", "fractions": [1.0, 0.0, 0.0], "seed": 1},
              "sparse": [{"name": "c", "kind": "hash", "hash": "int_modulo", "buckets": 1000}]}
    _run(tmp_path, [tmp_path / "f.parquet"], schema)
    assert np.array_equal(np.load(tmp_path / "out" / "train" / "c.ids.npy"), [0 if v is None else int(v) for v in ids])
    pq.write_table(pa.table({"x": [1.0, 2.0], "c": [3.0, 2.5], "y": [0, 1]}), tmp_path / "g.parquet")
    with pytest.raises(PreprocessError, match="2.5 is not a whole number"):
        _run(tmp_path, [tmp_path / "g.parquet"], schema, out="out2")


def test_an_empty_time_cell_is_named_by_its_line(tmp_path: Path) -> None:
    rows = "x,c,t,y\n" + "".join(f"{i},k{i % 3},{'' if i == 57 else i},{i % 2}\n" for i in range(100))
    schema = {**BASE, "split": {"by": "time", "column": "t", "fractions": [0.8, 0.1, 0.1]}}
    _refused(tmp_path, [_csv(tmp_path, rows)], schema, "d.csv", "59", "time column 't' is empty")


def test_parquet_columns_without_text_are_named_not_a_traceback(tmp_path: Path) -> None:
    n = 8
    base = {"x": np.arange(n, dtype=np.float64), "y": np.arange(n) % 2}
    pq.write_table(pa.table({**base, "c": pa.array([["a"]] * n)}), tmp_path / "l.parquet")
    _refused(tmp_path, [tmp_path / "l.parquet"], BASE, "column 'c' of type list", "cannot be read as text")
    pq.write_table(pa.table({**base, "c": np.arange(n)}), tmp_path / "i.parquet")
    cut = {**BASE, "sparse": [{"name": "c", "kind": "hash", "hash": "int_modulo", "buckets": 10, "prefix": 2}]}
    _refused(tmp_path, [tmp_path / "i.parquet"], cut, "holds numbers", "prefix", error=SchemaError)


def test_a_header_that_is_not_utf8_is_named(tmp_path: Path) -> None:
    """pyarrow decodes the header's names in Python: its UnicodeDecodeError was a traceback."""
    latin1 = tmp_path / "latin1.csv"
    latin1.write_bytes("x,c,y,caf\xe9\n1,a,0\n".encode("latin-1"))
    _refused(tmp_path, [latin1], BASE, "latin1.csv: its header line is not UTF-8 text", "save the file as UTF-8")
    packed = tmp_path / "packed.csv"  # gzip data under a plain name
    packed.write_bytes(gzip.compress(b"x,c,y\n1,a,0\n2,b,1\n"))
    _refused(tmp_path, [packed], BASE, "packed.csv: the file holds gzip data", "name it *.gz")


def test_a_csv_error_inside_a_good_gzip_file_is_not_called_a_broken_gzip(tmp_path: Path) -> None:
    gz = tmp_path / "d.csv.gz"
    gz.write_bytes(gzip.compress(b"x,c,y\n1,a,0\n2,\xe9,1\n"))
    text = _refused(tmp_path, [gz], BASE, "d.csv.gz line 3, column 'c': the cell is not UTF-8 text")
    assert "gzip" not in text.split("d.csv.gz", 1)[1], text
    broken = tmp_path / "broken.csv.gz"
    packed = gzip.compress(b"x,c,y\n" + b"".join(b"%d,a%d,0\n" % (i, i * 7919 % 1000) for i in range(50000)))
    broken.write_bytes(packed[: len(packed) // 2])
    _refused(tmp_path, [broken], BASE, "broken.csv.gz: not a complete gzip file")


def test_a_column_the_schema_reads_named_twice_in_the_header_is_refused(tmp_path: Path) -> None:
    twice = _csv(tmp_path, "x,c,y,x\n1,a,0,5\n2,b,1,6\n")
    _refused(tmp_path, [twice], BASE, "d.csv: the file has more than one column named ['x']", error=SchemaError)
    spare = _csv(tmp_path, "x,c,y,z,z\n1,a,0,5,5\n2,b,1,6,6\n3,a,1,7,7\n4,b,0,8,8\n", name="spare.csv")
    _run(tmp_path, [spare], BASE)  # (a repeated column the schema does not read is no one's business)


@pytest.mark.parametrize("text, unclosed", [
    ('x,c,y\n1,a,0\n2,"open,1\n3,b,0\n4,c,1\n', True),  # the rest of the file would be one cell
    ('x,c,y\n1,"a ""q"" b",0\n2,"two\nlines",1\n3,b"c,0\n', False),  # closed, escaped, mid-cell quotes
    ('\ufeff"x",c,y\n1,"a",0\n', False),
    ('x,c,y\n1,"a""\n', True),  # a doubled quote does not close
    ('x,c,y\r\n1,a,"0\r\n', True),
])
def test_a_quote_never_closed_is_found_in_any_chunking(text: str, unclosed: bool) -> None:
    data = text.encode()
    at = data.index(b'"', data.index(b"\n")) if unclosed else None  # (the first quote after the header)
    for chunk in (1, 2, 3, 1 << 20):  # (the scan's state carries across its chunks)
        assert csv_kernel.quotes(io.BytesIO(data), ",", chunk).unclosed == at, chunk


def test_a_quote_never_closed_is_refused_by_its_line(tmp_path: Path) -> None:
    """pyarrow reads the rest of the file as the open cell's text: 20 rows were lost without a word."""
    text = "x,c,y\n1,a,0\n2,\"open,1\n" + "".join(f"{i},z{i},{i % 2}\n" for i in range(20))
    plain = _csv(tmp_path, text)
    _refused(tmp_path, [plain], BASE, "d.csv line 3: a quote opens a cell there that no quote closes")
    gz = tmp_path / "d.csv.gz"
    gz.write_bytes(gzip.compress(text.encode()))
    _refused(tmp_path, [gz], BASE, "d.csv.gz line 3: a quote opens a cell")
    cr = _csv(tmp_path, text.replace("\n", "\r"), name="cr.csv")  # (lines end at CR too)
    _refused(tmp_path, [cr], BASE, "cr.csv line 3: a quote opens a cell")
    for suffix in (".zst", ".bz2"):  # (scanned as pyarrow reads them: decompressed by the name)
        with pa.output_stream(tmp_path / f"q.csv{suffix}", compression="detect") as f:
            f.write(text.replace('"open', '"open"').encode())
        _run(tmp_path, [tmp_path / f"q.csv{suffix}"], BASE, out=f"out{suffix}")


def test_parquet_timestamps_and_large_integers_are_times(tmp_path: Path) -> None:
    """A Parquet time column of timestamps, dates or epoch nanoseconds (past 2**53: not exact doubles) splits by
    time as the same instants in seconds do (they were refused as "not a number")."""
    base = datetime.datetime(2026, 1, 1)
    when = [base + datetime.timedelta(days=d) for d in (3, 1, 7, 5, 9, 2, 8, 4, 6, 0)]
    columns_of = {"x": [float(i) for i in range(10)], "c": [f"k{i % 3}" for i in range(10)],
                  "y": [i % 2 for i in range(10)]}
    schema = {**BASE, "split": {"by": "time", "column": "ts", "fractions": [0.6, 0.2, 0.2]}}
    splits = {}
    for name, ts in [("seconds", pa.array([w.timestamp() for w in when])),
                     ("timestamp", pa.array(when, pa.timestamp("ns"))),
                     ("date", pa.array([w.date() for w in when], pa.date32())),
                     ("nanos", pa.array([int(w.timestamp()) * 10**9 + 1 for w in when], pa.int64()))]:
        path = tmp_path / f"{name}.parquet"
        pq.write_table(pa.table({**columns_of, "ts": ts}), path)
        _run(tmp_path, [path], schema, out=name)
        splits[name] = {s: np.load(tmp_path / name / s / "dense.npy").ravel().tolist() for s in SPLITS}
    assert splits["seconds"]["test"] == [4.0, 6.0]  # (days 9 and 8: rows 4 and 6)
    assert all(v == splits["seconds"] for v in splits.values()), splits
    for k, unit in enumerate(("us", "ms")):  # (two files, two units: one instant is one number)
        half = slice(5 * k, 5 * k + 5)
        pq.write_table(pa.table({**{c: v[half] for c, v in columns_of.items()}, "ts": pa.array(when[half],
                                                                                               pa.timestamp(unit))}),
                       tmp_path / f"part{k}.parquet")
    _run(tmp_path, [tmp_path / "part0.parquet", tmp_path / "part1.parquet"], schema, out="units")
    assert {s: np.load(tmp_path / "units" / s / "dense.npy").ravel().tolist() for s in SPLITS} == splits["seconds"]


def test_an_identity_id_is_decimal(tmp_path: Path) -> None:
    """Arrow's cast takes "0x10" as 16; an identity id, as a dense cell, is a decimal integer."""
    schema = {**BASE, "sparse": [{"name": "c", "kind": "identity", "buckets": 100}]}
    _refused(tmp_path, [_csv(tmp_path, "x,c,y\n1,7,0\n2,0x10,1\n")], schema, "holds '0x10', not an integer id")
    _run(tmp_path, [_csv(tmp_path, "x,c,y\n1, 7 ,0\n2,16,1\n3,,0\n4,99,1\n", name="ok.csv")], schema)


def test_a_header_without_a_line_end_is_not_an_empty_file(tmp_path: Path) -> None:
    _refused(tmp_path, [_csv(tmp_path, "x,c,y")], BASE, "d.csv: it has no data rows (a header only)")
    for name, text in (("e.csv", ""), ("bom.csv", "\ufeff")):
        _refused(tmp_path, [_csv(tmp_path, text, name=name)], BASE, f"{name}: the file is empty (no header, no rows)")


@pytest.mark.parametrize("gz", [False, True])
def test_a_text_cell_not_utf8_is_named_by_line_and_column(tmp_path: Path, monkeypatch, gz: bool) -> None:
    """pyarrow names the column by index and the record (empty lines not counted), not the line."""
    monkeypatch.setattr(columns, "BLOCK_BYTES", 4096)  # (the plain file is read in byte ranges)
    lines = [b"x,c,y"] + [b"%d,a%d,%d" % (i, i, i % 2) if i % 7 else b"" for i in range(1, 3000)]
    lines[2500] = b"5,caf\xe9,1"
    data = b"\n".join(lines) + b"\n"
    path = tmp_path / ("d.csv.gz" if gz else "d.csv")
    path.write_bytes(gzip.compress(data) if gz else data)
    _refused(tmp_path, [path], BASE, f"{path.name} line 2501, column 'c': the cell is not UTF-8 text")


def test_a_numeric_cell_of_spaces_only_is_named_by_its_line(tmp_path: Path) -> None:
    text = "x,c,y\n1,a,0\n,b,1\n   ,a,1\n4,b,0\n"  # (line 3's empty cell is missing; line 4's is not a number)
    _refused(tmp_path, [_csv(tmp_path, text)], BASE, "d.csv line 4, column 'x'", "is not a number")


@pytest.mark.parametrize("chunk", [1, 2, 1 << 20])
def test_quoted_cells_holding_line_ends_are_counted(chunk: int) -> None:
    data = b'x,c,y\n1,"a\nb",0\n2,"plain",1\n3,"c\r\nd ""q""",0\n4,"end\n"'
    found = csv_kernel.quotes(io.BytesIO(data), ",", chunk)
    assert (found.unclosed, found.multiline, found.first_multiline) == (None, 3, data.index(b'"a'))


def test_a_quote_left_open_until_the_next_quoted_cell_is_a_warning(tmp_path: Path, capsys) -> None:
    """A stray quote closed by a later quoted cell reads the rows between as one cell (pyarrow and Python's csv
    alike): valid CSV, so not an error, but the report says where a quoted cell holds line ends."""
    rows = [f"{i},k{i},{i % 2}" for i in range(30)]
    rows[5], rows[20] = '5,"k5,1', '20,"k20",0'
    path = _csv(tmp_path, "x,c,y\n" + "\n".join(rows) + "\n")
    (tmp_path / "s.json").write_text(json.dumps(BASE))
    code = data_main(["preprocess", "--schema", str(tmp_path / "s.json"), "--input", str(path), "--out",
                      str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 0 and "rows read" not in err
    assert "dlrm-data: warning: " in err and "d.csv: 1 quoted cell(s) hold a line end, the first opening at line 7" in err
