"""A time split reports the fractions it realised, and warns when ties move one far from the schema's.

Rows with one time stay in one split, so a time column with many ties cannot be cut at the
fractions asked: preprocessing says what it came to (Report.split_fractions, meta.json, the
``dlrm-data preprocess`` output) and warns when a split is off by more than 0.02, in the
one-read path and in the driver's own passes alike.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dlrm_dist.cli.data_main import main as data_main
from dlrm_dist.data.columnar import layout
from dlrm_dist.data.columnar.job import FRACTION_SLACK
from dlrm_dist.data.columnar.preprocess import Options, preprocess
from dlrm_dist.features.schema import SPLITS, from_dict

FRACTIONS = [0.8, 0.1, 0.1]


def _schema() -> dict:
    return {"name": "ties", "label": {"column": "y"}, "dense": [{"name": "x"}],
            "sparse": [{"name": "c", "kind": "hash", "buckets": 7}],
            "split": {"by": "time", "column": "ts", "fractions": FRACTIONS}}


def _csv(path: Path, times: list[int]) -> Path:
    rows = [f"{i % 2},{i * 0.5},k{i % 5},{t}" for i, t in enumerate(times)]
    path.write_text("y,x,c,ts\n" + "\n".join(rows) + "\n")
    return path


def _realised(out: Path) -> dict[str, float]:
    rows = {s: json.loads((out / layout.META).read_text())["splits"][s]["rows"] for s in SPLITS}
    return {s: n / sum(rows.values()) for s, n in rows.items()}


TIED = [0] * 60 + [1] * 30 + [2] * 10  # the 0.8 quantile is time 1: train gets only 60%
DISTINCT = list(range(100))


def test_ties_report_the_realised_fractions_and_warn(tmp_path: Path) -> None:
    out = tmp_path / "out"
    report = preprocess(Options(from_dict(_schema()), [_csv(tmp_path / "d.csv", TIED)], out, progress=False))
    assert report.split_fractions == pytest.approx(_realised(out)) == {"train": 0.6, "val": 0.3, "test": 0.1}
    assert json.loads((out / layout.META).read_text())["split_fractions"] == report.split_fractions
    [warning] = report.warnings
    assert "'ts'" in warning and "train 0.600 (asked 0.8)" in warning and "['train', 'val']" in warning


def test_distinct_times_realise_the_fractions_without_a_warning(tmp_path: Path) -> None:
    out = tmp_path / "out"
    report = preprocess(Options(from_dict(_schema()), [_csv(tmp_path / "d.csv", DISTINCT)], out, progress=False))
    assert all(abs(report.split_fractions[s] - f) <= FRACTION_SLACK for s, f in zip(SPLITS, FRACTIONS))
    assert report.warnings == []


@pytest.mark.parametrize("fractions, rows", [([1.0, 0.0, 0.0], (100, 0, 0)), ([0.5, 0.5, 0.0], (50, 50, 0)),
                                             ([0.9, 0.0, 0.1], (90, 0, 10))])
def test_a_split_of_fraction_0_gets_no_row(tmp_path: Path, fractions: list[float], rows: tuple[int, ...]) -> None:
    """A fraction of 0 is a split not wanted: it gets no row, those at the latest time included, and its
    cut-off is recorded as null (none is reached; meta.json, strict JSON, holds no infinity)."""
    out, schema = tmp_path / "out", _schema()
    schema["split"]["fractions"] = fractions
    preprocess(Options(from_dict(schema), [_csv(tmp_path / "d.csv", DISTINCT[:99] + [98])], out, progress=False))
    meta = json.loads((out / layout.META).read_text())
    assert tuple(meta["splits"][s]["rows"] for s in SPLITS) == rows
    assert [c is None for c in meta["time_cutoffs"]] == [fractions[1] + fractions[2] == 0, fractions[2] == 0]


def test_the_cli_prints_the_fractions_and_the_warning(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    schema = tmp_path / "ties.json"
    schema.write_text(json.dumps(_schema()))
    args = ["preprocess", "--schema", str(schema), "--input", str(_csv(tmp_path / "d.csv", TIED)),
            "--out", str(tmp_path / "out"), "--no-progress"]
    assert data_main(args) == 0
    got = capsys.readouterr()
    assert "time split fractions: train 0.600  val 0.300  test 0.100" in got.out
    assert got.err.count("dlrm-data: warning:") == 1 and "off by more than 0.02" in got.err
    assert data_main(args) == 0  # a rerun of the complete job still says what the split came to
    assert "time split fractions: train 0.600" in capsys.readouterr().out
