"""Labels: the plain form (a numeric column) and the categorical one (texts listed as positive,
optionally as negative), from the schema's declaration to the labels preprocessing writes.

The expected labels are computed here from the rows' texts by plain Python (strip, membership),
independently of pyarrow's ``is_in``; the end-to-end tests run ``dlrm-data preprocess`` in-process
and read every label back by the row's id (a dense column without a transform).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dlrm_dist.data.columnar import encode, read
from dlrm_dist.data.errors import PreprocessError
from dlrm_dist.features import SchemaError, load_schema
from dlrm_dist.features.schema import FeatureSchema, from_dict

SPARSE = [{"name": "work", "kind": "hash", "buckets": 16}]
CENSUS = {"name": "census", "sparse": SPARSE, "dense": [{"name": "id"}],
          "split": {"by": "random", "fractions": [0.6, 0.2, 0.2], "seed": 1}}
POSITIVE = [">50K", ">50K."]


def schema(label: object, **extra: object) -> FeatureSchema:
    return from_dict({**CENSUS, "label": label, **extra})


# -- the declaration --------------------------------------------------------------------------------
def test_the_label_forms_read_to_one_dataclass() -> None:
    assert schema("income").label == schema({"column": "income"}).label
    lab = schema({"column": "income", "positive": POSITIVE, "negative": ["<=50K"]}).label
    assert lab.categorical and lab.positive == tuple(POSITIVE) and lab.negative == ("<=50K",)
    assert not schema({"column": "y", "threshold": 4}).label.categorical


def test_a_categorical_label_round_trips_and_changes_the_fingerprint() -> None:
    s = schema({"column": "income", "positive": POSITIVE})
    assert from_dict(json.loads(json.dumps(s.to_dict()))) == s
    assert s.stable_dict()["label"] == {"column": "income", "threshold": None, "positive": POSITIVE}
    plain = schema("income")
    assert s.fingerprint() != plain.fingerprint()
    # a plain label keeps the form (and so the fingerprint) stored before the categorical keys existed
    assert plain.stable_dict()["label"] == {"column": "income", "threshold": None}


def test_a_schema_without_the_new_keys_keeps_its_stored_fingerprint() -> None:
    root = Path(__file__).resolve().parents[2]
    assert load_schema(str(root / "examples" / "clicks.toml")).fingerprint() == "b75d64b07c6cde17"  # stored before


@pytest.mark.parametrize("label, words", [
    ({"column": "y", "negative": ["a"]}, "label.negative: needs positive = [...] too"),
    ({"column": "y", "positive": []}, "label.positive: must be a non-empty list of strings"),
    ({"column": "y", "positive": "a"}, "label.positive: must be a non-empty list of strings"),
    ({"column": "y", "positive": [1]}, "label.positive[0]: must be a non-empty string"),
    ({"column": "y", "positive": ["a", ""]}, "label.positive[1]: must be a non-empty string"),
    ({"column": "y", "positive": [" a"]}, "label.positive[0]: must be a non-empty string without surrounding "
                                          "whitespace"),
    ({"column": "y", "positive": ["a", "b"], "negative": ["b", "c"]}, "label.negative: ['b'] also listed in positive"),
    ({"column": "y", "positive": ["a"], "threshold": 1}, "label.threshold: applies to a numeric label"),
    ({"column": "y", "positive": ["a"], "values": ["b"]}, "label.values: unknown key; valid keys: column, negative, "
                                                          "positive, threshold"),
    (3, "label: must be a column name, or a table with keys column, threshold, positive, negative, got 3"),
])
def test_a_bad_label_entry_is_named(label: object, words: str) -> None:
    with pytest.raises(SchemaError) as e:
        schema(label)
    assert words in str(e.value), str(e.value)


def test_criteo_tsv_refuses_a_categorical_label() -> None:
    with pytest.raises(SchemaError, match=r"label.positive: does not apply to format criteo_tsv"):
        from_dict({"sparse": [{"name": "c", "kind": "hash", "hash": "int_modulo", "buckets": 9, "column": "C1"}],
                   "label": {"column": "label", "positive": ["1"]},
                   "input": {"format": "criteo_tsv", "header": False}, "split": {"by": "day"}})


# -- labels_of on a block -------------------------------------------------------------------------------
def _rows(path: Path, s: FeatureSchema) -> list[pa.RecordBatch]:
    return list(read.read_file(path, s, read.BadLines()))


def _labels(path: Path, s: FeatureSchema) -> list[float]:
    return [float(x) for b in _rows(path, s) for x in encode.labels_of(b, s)]


def test_listed_texts_are_one_every_other_value_zero(tmp_path: Path) -> None:
    cells = [" >50K", "<=50K", ">50K.", " <=50K.", "?", ">50k", '">50K"']  # ">50k": case counts
    data = tmp_path / "d.csv"
    data.write_text("id,work,income\n" + "".join(f"{i},w,{c}\n" for i, c in enumerate(cells)))
    want = [1.0 if c.strip().strip('"') in POSITIVE else 0.0 for c in cells]
    assert _labels(data, schema({"column": "income", "positive": POSITIVE})) == want == [1, 0, 1, 0, 0, 0, 1]


def test_with_negative_an_unlisted_value_is_named_by_file_line_and_value(tmp_path: Path) -> None:
    data = tmp_path / "d.csv"
    data.write_text('id,work,income\n0,w,>50K\n1,"two\nlines",<=50K\n2,w, ?\n')
    s = schema({"column": "income", "positive": POSITIVE, "negative": ["<=50K", "<=50K."]})
    with pytest.raises(PreprocessError) as e:
        _labels(data, s)
    assert str(e.value).startswith(f"{data} line 5: label '?' in column 'income' is in neither label.positive "
                                   "['>50K', '>50K.'] nor label.negative ['<=50K', '<=50K.']"), str(e.value)


def test_an_empty_categorical_label_is_named(tmp_path: Path) -> None:
    data = tmp_path / "d.csv"
    data.write_text("id,work,income\n0,w,>50K\n1,w,\n")
    with pytest.raises(PreprocessError, match=r"d.csv line 3: label column 'income' is empty"):
        _labels(data, schema({"column": "income", "positive": POSITIVE}))


def test_numbers_are_compared_as_their_text(tmp_path: Path) -> None:
    """A Parquet integer (or float, or boolean) label column: its cells as Arrow writes them."""
    data = tmp_path / "d.parquet"
    pq.write_table(pa.table({"id": [0.0, 1, 2, 3], "work": ["a", "b", "c", "d"], "n": [1, 0, 2, 1],
                             "f": [1.0, 0.5, 2.0, 0.0], "b": [True, False, True, False]}), data)
    assert _labels(data, schema({"column": "n", "positive": ["1"]})) == [1, 0, 0, 1]
    assert _labels(data, schema({"column": "f", "positive": ["1", "0.5"]})) == [1, 1, 0, 0]
    assert _labels(data, schema({"column": "b", "positive": ["true"], "negative": ["false"]})) == [1, 0, 1, 0]
    with pytest.raises(PreprocessError, match=r"d.parquet row 3: label '2' in column 'n' is in neither"):
        _labels(data, schema({"column": "n", "positive": ["1"], "negative": ["0"]}))


def test_a_text_label_in_the_plain_form_names_the_categorical_form_not_null_values(tmp_path: Path) -> None:
    """pyarrow's own conversion (the label-only CSV column) and the cast of a column that is also
    text, and a Parquet string column: each says what a label may be."""
    csv = tmp_path / "d.csv"
    csv.write_text("id,work,income\n0,w,1\n1,w, >50K\n")  # (pyarrow names the value trimmed: its line still found)
    parquet = tmp_path / "d.parquet"
    pq.write_table(pa.table({"id": [0.0, 1.0], "work": ["a", "b"], "income": ["0", ">50K"]}), parquet)
    for path in (csv, parquet):
        with pytest.raises(PreprocessError) as e:
            _labels(path, schema("income"))
        text = str(e.value)
        assert "'>50K' is not a number" in text and "null_values" not in text, text
        assert "label = { column = 'income', positive = [...] }" in text, text
        assert (f"{csv} line 3" if path == csv else f"{parquet} row 2") + ", column 'income'" in text, text


def test_a_plain_label_not_zero_or_one_names_threshold_and_the_categorical_form(tmp_path: Path) -> None:
    data = tmp_path / "d.csv"
    data.write_text("id,work,stars\n0,w,1\n1,w,4\n")
    with pytest.raises(PreprocessError) as e:
        _labels(data, schema("stars"))
    assert "line 3: label 4.0 in column 'stars' is not 0 or 1; give label.threshold" in str(e.value)
    assert "positive = [...]" in str(e.value)
    assert _labels(data, schema({"column": "stars", "positive": ["4", "5"]})) == [0, 1]


# -- end to end: dlrm-data preprocess ------------------------------------------------------------------
def _census(tmp_path: Path, rows: int = 60, name: str = "adult.csv", first: int = 0) -> tuple[Path, dict[int, float]]:
    """A census-like CSV (the UCI file's leading spaces, its test file's trailing dots) and each row's label."""
    values = [" <=50K", " >50K", " <=50K.", " >50K."]
    lines, want = ["id,work,income"], {}
    for i in range(first, first + rows):
        v = values[(i * 7) % 4]
        lines.append(f"{i},w{i % 5},{v}")
        want[i] = 1.0 if v.strip() in POSITIVE else 0.0
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path, want


def _preprocess(tmp_path: Path, data: Path | list[Path], label: dict, capsys: pytest.CaptureFixture,
                **extra: object) -> tuple[int, str]:
    from dlrm_dist.cli.data_main import main as data_main

    schema_file = tmp_path / "census.json"
    schema_file.write_text(json.dumps({**CENSUS, "label": label, **extra}))
    inputs = [str(p) for p in (data if isinstance(data, list) else [data])]
    code = data_main(["preprocess", "--schema", str(schema_file), "--input", *inputs, "--out",
                      str(tmp_path / "out"), "--no-progress"])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("split", [{}, {"split": {"by": "time", "column": "id", "fractions": [0.6, 0.2, 0.2]}},
                                   {"split": {"by": "day"}}])
def test_preprocess_writes_each_rows_label_from_its_text(tmp_path: Path, capsys, split: dict) -> None:
    """Random split (every block finished as read), time split (labels staged, then written) and
    day split (the driver's own passes: a day per file, the second one val and test)."""
    data, want = _census(tmp_path)
    if split.get("split", {}).get("by") == "day":
        later, more = _census(tmp_path, name="adult.test.csv", first=60)
        data, want = [data, later], {**want, **more}
    code, err = _preprocess(tmp_path, data, {"column": "income", "positive": POSITIVE,
                                             "negative": ["<=50K", "<=50K."]}, capsys, **split)
    assert code == 0, err
    got: dict[int, float] = {}
    for s in ("train", "val", "test"):
        ids = np.load(tmp_path / "out" / s / "dense.npy")[:, 0]
        got.update(zip(ids.astype(int).tolist(), np.load(tmp_path / "out" / s / "labels.npy").tolist()))
    assert got == want
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert meta["schema"]["label"]["positive"] == POSITIVE


def test_preprocess_refuses_an_unlisted_label_with_exit_2_and_one_line(tmp_path: Path, capsys) -> None:
    data, _ = _census(tmp_path, rows=10)
    with data.open("a") as f:
        f.write("10,w0, unknown\n")
    code, err = _preprocess(tmp_path, data, {"column": "income", "positive": POSITIVE, "negative": ["<=50K"]}, capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert f"{data} line 4: label '<=50K.' in column 'income' is in neither" in err  # row 2: " <=50K."
    assert not (tmp_path / "out" / "meta.json").exists()
