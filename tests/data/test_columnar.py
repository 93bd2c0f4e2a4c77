"""Schema-driven preprocessing and loading, checked against computations written here.

Inputs are small files written by the tests (CSV, gzip, Parquet), so every expected id,
statistic and split can be worked out independently of the code under test.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dlrm_dist.config import load_config
from dlrm_dist.data.columnar import layout
from dlrm_dist.data.columnar.dataset import ColumnarDataset
from dlrm_dist.data.columnar.layout import DataError
from dlrm_dist.data.columnar.preprocess import Options, preprocess
from dlrm_dist.data.columnar.read import PreprocessError
from dlrm_dist.features import SchemaError
from dlrm_dist.features.schema import from_dict
from dlrm_dist.training.build import validate_job
from tests.data.reference import fnv1a

HEADER = "uid,color,tags,price,ts,rating"
ROWS = [  # ts 1..10: with fractions 0.6/0.2/0.2 the time split is train 1-6, val 7-8, test 9-10
    "3,red,a|b,10,1,5", "1,blue,,20,2,1", "3,red,b,,3,4", "0,green,a|c|b,40,4,2", "2,red,c,50,5,5",
    "1,blue,a,60,6,3", "4,pink,b|a,70,7,4", "0,red,,80,8,1", "2,blue,z,90,9,5", "1,green,c,100,10,2",
]
SCHEMA = {
    "name": "tiny",
    "label": {"column": "rating", "threshold": 4},
    "split": {"by": "time", "column": "ts", "fractions": [0.6, 0.2, 0.2]},
    "dense": [{"name": "price", "transform": "standardize", "fill": 30.0}],
    "sparse": [
        {"name": "uid", "kind": "identity", "buckets": 5, "dim": 8},
        {"name": "color", "kind": "vocab", "min_count": 2},
        {"name": "color_h", "column": "color", "kind": "hash", "buckets": 7},
        {"name": "tags", "kind": "vocab", "delimiter": "|", "pooling": "mean"},
    ],
}


def _write(tmp: Path, rows: list[str] = ROWS, name: str = "data.csv") -> Path:
    p = tmp / name
    p.write_text("\n".join([HEADER, *rows]) + "\n")
    return p


def _run(tmp: Path, inputs: list[Path], schema: dict = SCHEMA, out: str = "out", **kw):
    return preprocess(Options(from_dict(schema), inputs, tmp / out, progress=False, **kw))



def _arrays(out: Path, split: str) -> dict[str, np.ndarray]:
    return {p.name: np.load(p) for p in sorted((out / split).glob("*.npy"))}


def test_outputs_match_an_independent_computation(tmp_path: Path) -> None:
    report = _run(tmp_path, [_write(tmp_path)])
    assert report.rows == {"train": 6, "val": 2, "test": 2} and report.skipped == 0
    out = tmp_path / "out"
    train = _arrays(out, "train")
    assert train["labels.npy"].tolist() == [1, 0, 1, 0, 1, 0]  # rating >= 4
    prices = np.array([10, 20, 30, 40, 50, 60], float)  # the missing price filled with 30
    expected = (prices - prices.mean()) / prices.std()
    np.testing.assert_allclose(train["dense.npy"][:, 0], expected, rtol=1e-6)
    assert train["uid.ids.npy"].tolist() == [3, 1, 3, 0, 2, 1]
    # vocab over the training rows, min_count 2: red (3), blue (2); id 0 is the OOV row
    assert json.loads((out / "vocab" / "t_color.json").read_text()) == ["red", "blue"]
    assert train["color.ids.npy"].tolist() == [1, 2, 1, 0, 1, 2]
    assert _arrays(out, "val")["color.ids.npy"].tolist() == [0, 1]  # pink unseen, red known
    assert train["color_h.ids.npy"].tolist() == [fnv1a(c) % 7 for c in ["red", "blue", "red", "green", "red", "blue"]]
    # multi-hot: tag vocabulary by count (a 3, b 3, c 2; ties by value), bags as offsets
    assert json.loads((out / "vocab" / "t_tags.json").read_text()) == ["a", "b", "c"]
    assert train["tags.offsets.npy"].tolist() == [0, 2, 2, 3, 6, 7, 8]
    assert train["tags.ids.npy"].tolist() == [1, 2, 2, 1, 3, 2, 3, 1]
    assert _arrays(out, "test")["tags.ids.npy"].tolist() == [0, 3]  # z is out of vocabulary
    meta = layout.read_meta(out)
    assert meta["splits"]["train"]["bag_lengths"]["tags"] == pytest.approx(8 / 6)
    schema = layout.stored_schema(out)
    assert dict(schema.vocab_rows) == {"t_color": 3, "t_tags": 4}
    assert schema.dense[0].scale == pytest.approx((prices.mean(), prices.std()))


def test_gzip_and_parquet_give_the_same_arrays(tmp_path: Path) -> None:
    _run(tmp_path, [_write(tmp_path)], out="csv")
    gz = tmp_path / "data.csv.gz"
    gz.write_bytes(gzip.compress(_write(tmp_path).read_bytes()))
    _run(tmp_path, [gz], out="gz")
    table = pa.csv.read_csv(_write(tmp_path)) if hasattr(pa, "csv") else None
    import pyarrow.csv as pa_csv

    table = pa_csv.read_csv(_write(tmp_path), convert_options=pa_csv.ConvertOptions(
        column_types={"tags": pa.string(), "color": pa.string()}, strings_can_be_null=False))
    pq.write_table(table, tmp_path / "data.parquet")
    _run(tmp_path, [tmp_path / "data.parquet"], out="pq")
    for split in ("train", "val", "test"):
        ref = _arrays(tmp_path / "csv", split)
        for other in ("gz", "pq"):
            got = _arrays(tmp_path / other, split)
            assert ref.keys() == got.keys()
            for k in ref:
                np.testing.assert_array_equal(ref[k], got[k], err_msg=f"{other}/{split}/{k}")


def test_malformed_lines_are_counted_by_file_and_line(tmp_path: Path) -> None:
    rows = ROWS[:3] + ["7,oops"] + ROWS[3:]
    report = _run(tmp_path, [_write(tmp_path, rows)])
    assert report.skipped == 1 and report.rows_read == 11
    assert report.examples == [f"{tmp_path / 'data.csv'}:5: 2 fields, expected 6"]
    with pytest.raises(PreprocessError, match=r"data.csv:5.*--strict"):
        _run(tmp_path, [_write(tmp_path, rows)], out="strict", strict=True)


def test_rerun_resumes_refuses_another_job_or_starts_over(tmp_path: Path) -> None:
    data = _write(tmp_path)
    _run(tmp_path, [data])
    assert _run(tmp_path, [data]).up_to_date
    other = json.loads(json.dumps(SCHEMA))
    other["sparse"][2]["buckets"] = 50
    with pytest.raises(PreprocessError, match=r"another job \(schema sparse\).*--overwrite"):
        _run(tmp_path, [data], other)
    second = _write(tmp_path, ROWS[:8], "other.csv")
    with pytest.raises(PreprocessError, match=r"inputs .*data.csv.* -> .*other.csv"):
        _run(tmp_path, [second])
    assert _run(tmp_path, [second], overwrite=True).rows == {"train": 5, "val": 1, "test": 2}  # ts 1..8
    assert layout.read_meta(tmp_path / "out")["rows_read"] == 8


@pytest.mark.parametrize("rows, change, words", [
    (ROWS, {"sparse": [{"name": "shape", "kind": "vocab"}]}, ["['shape']", "does not have", "uid"]),
    (["3,red,a,cheap,1,5"] + ROWS[1:], {}, ["line 2", "'cheap' is not a number", "null_values"]),
    (ROWS, {"sparse": [{"name": "color", "kind": "vocab", "min_count": 99}]}, ["'color'", "no value seen", "min_count"]),
    (ROWS, {"label": {"column": "rating"}}, ["label 5.0", "not 0 or 1", "threshold"]),
    (["9,red,a,10,1,5"] + ROWS[1:], {}, ["identity feature 'uid'", "id 9", "[0, 5)"]),
])
def test_bad_input_is_named(tmp_path: Path, rows: list[str], change: dict, words: list[str]) -> None:
    with pytest.raises((SchemaError, PreprocessError)) as e:  # the schema itself, or the data against it
        _run(tmp_path, [_write(tmp_path, rows)], {**SCHEMA, **change})
    for w in words:
        assert w in str(e.value), f"{w!r} not in: {e.value}"


@pytest.fixture()
def out(tmp_path: Path) -> Path:
    _run(tmp_path, [_write(tmp_path)])
    return tmp_path / "out"


def test_loader_slices_pads_and_pools(out: Path) -> None:
    ds = ColumnarDataset(out, eval_split="val", shuffle=False)
    full = next(ds.batches("train", 6, 0, 1, 1))
    parts = [next(ds.batches("train", 6, r, 2, 1)) for r in range(2)]
    assert full.labels.tolist() == parts[0].labels.tolist() + parts[1].labels.tolist()
    assert full.sparse_features["tags"].lengths().tolist() == [2, 0, 1, 3, 1, 1]
    ev = list(ds.batches("eval", 4, 0, 1))  # 2 val rows in a batch of 4: padded
    assert len(ev) == 1 and ev[0].labels.tolist() == [1, 0, -1, -1]
    assert ev[0].sparse_features["tags"].lengths().tolist() == [2, 0, 2, 2]  # padding repeats row 0
    assert ds.bag_lengths()["tags"] == pytest.approx(8 / 6)


@pytest.mark.parametrize("damage, words", [
    (lambda d: np.save(d / "train" / "labels.npy", np.zeros(5, np.float32)), ["labels.npy", "shape (5,)", "(6)"]),
    (lambda d: np.save(d / "train" / "dense.npy", np.zeros((6, 1), np.float64)), ["dense.npy", "float64"]),
    (lambda d: (d / "val" / "uid.ids.npy").write_bytes((d / "val" / "uid.ids.npy").read_bytes()[:-4]),
     ["uid.ids.npy", "truncated or corrupt"]),
    (lambda d: (d / "test" / "tags.ids.npy").write_bytes(b"\x93NUMPY garbage"), ["tags.ids.npy", "not a readable"]),
    (lambda d: (d / "train" / "color.ids.npy").unlink(), ["color.ids.npy", "missing"]),
    (lambda d: np.save(d / "train" / "tags.offsets.npy", np.array([0, 2, 2, 3, 6, 7, 9])), ["tags.offsets.npy", "holds 8 ids"]),
])
def test_loader_refuses_inconsistent_files_by_name(out: Path, damage, words: list[str]) -> None:
    damage(out)
    with pytest.raises(DataError) as e:
        ColumnarDataset(out)
    for w in words:
        assert w in str(e.value), f"{w!r} not in: {e.value}"


def test_out_of_range_id_fails_naming_file_and_feature(out: Path) -> None:
    ids = np.load(out / "train" / "uid.ids.npy")
    ids[2] = 5  # the table has 5 rows
    np.save(out / "train" / "uid.ids.npy", ids)
    ds = ColumnarDataset(out, shuffle=False)
    with pytest.raises(DataError, match=r"uid.ids.npy: feature 'uid' has id 5 outside its table of 5 rows"):
        next(ds.batches("train", 6, 0, 1, 1))


def test_job_schema_must_match_the_directory(out: Path, tmp_path: Path) -> None:
    base = ["--data.source=columnar", f"--data.data_dir={out}", "--model.interaction=cat"]
    cfg, schema, spec = validate_job(load_config(base), world_size=1)
    assert schema.name == "tiny" and [t.rows for t in spec.tables] == [5, 3, 7, 4]
    other = json.loads(json.dumps(SCHEMA))
    other["sparse"][0]["buckets"] = 6
    (tmp_path / "other.json").write_text(json.dumps(other))
    with pytest.raises(SchemaError, match=r"differs from the one .* \(sparse feature 'uid'\)"):
        validate_job(load_config(base + [f"--data.schema={tmp_path / 'other.json'}"]), world_size=1)
    (out / "meta.json").unlink()
    with pytest.raises(DataError, match="no meta.json"):
        validate_job(load_config(base), world_size=1)


def test_an_input_given_twice_is_refused(tmp_path: Path) -> None:
    """By one name or two (a day split tells inputs apart by file: the second copy's rows took the first's day)."""
    a, b = _write(tmp_path), _write(tmp_path, name="b.csv")
    (tmp_path / "link.csv").symlink_to(a)
    with pytest.raises(PreprocessError, match="input .*data.csv is given twice: give each input file once"):
        _run(tmp_path, [a, b, a])
    with pytest.raises(PreprocessError, match=r"link.csv is given twice \(the file .*data.csv is\)"):
        _run(tmp_path, [a, tmp_path / "link.csv"])
    assert not (tmp_path / "out").exists()


def test_an_input_inside_the_outputs_folders_is_refused_and_kept(tmp_path: Path) -> None:
    """A new start (--overwrite, or another job over an incomplete directory) clears the splits: an input among
    them was deleted before it was read. It is refused; an input directly in the directory is not at risk."""
    _run(tmp_path, [_write(tmp_path)])
    out = tmp_path / "out"
    inside = _write(out / "train", name="more.csv")
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    for overwrite in (True, False):
        with pytest.raises(PreprocessError, match="more.csv lies in the folder train/ of --out"):
            _run(tmp_path, [inside], overwrite=overwrite)
        assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    (tmp_path / "ext").mkdir()
    (out / "vocab" / "link.csv").symlink_to(_write(tmp_path / "ext", name="d.csv"))  # (cleared with its folder)
    with pytest.raises(PreprocessError, match="link.csv lies in the folder vocab/ of --out"):
        _run(tmp_path, [out / "vocab" / "link.csv"], overwrite=True)
    (out / "raw").mkdir()
    beside, raw = _write(out, name="raw.csv"), _write(out / "raw", name="day.csv")  # (no job writes or clears them)
    for given in (beside, raw):
        _run(tmp_path, [given], overwrite=True)
        assert given.read_text().startswith(HEADER) and (out / layout.META).is_file()


def test_a_multi_hot_prefix_cuts_each_value(tmp_path: Path) -> None:
    """``prefix`` keeps the first characters of each value of a list cell (not of the cell: that kept one)."""
    rows = [r.replace("a|b", "apple|banana").replace("a|c|b", "avocado|cherry|blue") for r in ROWS]
    schema = {**SCHEMA, "split": {"by": "random", "fractions": [1.0, 0.0, 0.0]},
              "sparse": [{"name": "tags", "kind": "vocab", "delimiter": "|", "prefix": 2, "order": "value"}]}
    _run(tmp_path, [_write(tmp_path, rows)], schema)
    values = layout.read_vocab(tmp_path / "out", "t_tags")
    assert values == ["a", "ap", "av", "b", "ba", "bl", "c", "ch", "z"]
    got = _arrays(tmp_path / "out", "train")
    words = [values[i - 1] for i in got["tags.ids.npy"]]  # (OOV bucket 0 first)
    assert words == ["ap", "ba", "b", "av", "ch", "bl", "c", "a", "b", "a", "z", "c"]


def test_a_resumed_job_removes_the_temporaries_a_kill_left_in_vocab(tmp_path: Path) -> None:
    """A kill while a vocabulary file was written leaves its temporary (tens of MB on a large table); the rerun
    that resumes removes it, as it does the records' (under the lock no write of ours is in flight)."""
    out, job = tmp_path / "out", {"inputs": [], "settings": 1}
    out.mkdir()
    assert layout.begin_job(out, job, overwrite=False) is False
    (out / layout.VOCAB_DIR).mkdir()
    left = [out / layout.VOCAB_DIR / ".t_color.json.k3j9.tmp", out / ".fit.json.x1.tmp"]
    for p in left:
        p.write_text("[")
    (out / layout.VOCAB_DIR / "t_color.json").write_text("[]")
    assert layout.begin_job(out, job, overwrite=False) is False
    assert not any(p.exists() for p in left) and (out / layout.VOCAB_DIR / "t_color.json").is_file()


def test_an_empty_split_by_day_is_explained_by_days_not_fractions(tmp_path: Path) -> None:
    """A day split's fractions are not the user's: the refusal says what the days do (it cited 0.8/0.1/0.1)."""
    days = [_write(tmp_path, ROWS[:6], "day1.csv"), _write(tmp_path, ROWS[6:7], "day2.csv")]
    with pytest.raises(PreprocessError, match=r"split\(s\) \['test'\] would be empty \(train 6, val 1, test 0 rows "
                                              r"of 7\): a split by day trains on every day but the last") as e:
        _run(tmp_path, days, {**SCHEMA, "split": {"by": "day"}})
    assert "fractions" not in str(e.value)
