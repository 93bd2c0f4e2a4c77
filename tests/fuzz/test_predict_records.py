"""Fuzzing raw-row scoring: generated records either score, row by row as in a batch, or are refused
as a RecordError naming records and columns that exist; never another exception.

One export per module (the every-kind schema: every dense transform and sparse kind, with
vocabularies), then generated records: keys of the schema's columns (some dropped, some
foreign), values of every JSON type and Python's odd floats, texts with delimiters and hex
digits. A list of records scores to one probability per record, each equal to that record
scored alone (a batch of one is padded: torch.export's guard), or fails with problems whose
record indexes and columns are the input's; the same rows as a JSON-lines file fail or score
alike, named by line.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dlrm_dist.serving.predictor import Predictor, RecordError
from dlrm_dist.serving.score_rows import score_file
from tests import rows_helper as rh
from tests.serving_helper import make_export


@pytest.fixture(scope="module")
def predictor(tmp_path_factory) -> Predictor:
    tmp = tmp_path_factory.mktemp("fuzz_rows")
    raw = rh.write_table(tmp / "rows.csv", rh.EVERY_KIND_COLUMNS, rh.every_kind_rows(200))
    data = rh.preprocessed(tmp, "every_kind", rh.schema_of("every_kind"), raw)
    make_export(tmp / "export", ["--data.source=columnar", f"--data.data_dir={data}", "--model.bottom_mlp=5-8",
                                 "--model.embedding_dim=8", "--model.top_mlp=16-1", "--train.global_batch_size=32",
                                 "--train.progress=false"])
    return Predictor.load(tmp / "export")


CELLS = (st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True, allow_infinity=True)
         | st.text(alphabet="0123456789abcdefxyz|;.-e+ ", max_size=8) | st.sampled_from(["", "c1", "news|film", "k1;k2"])
         | st.lists(st.text(alphabet="ab|;", max_size=3) | st.integers(0, 9), max_size=3)
         | st.dictionaries(st.text(max_size=2), st.integers(), max_size=1)
         | st.sampled_from(["\udfff", "a\ud800", ["x", "\udc80"]]))  # lone surrogates: no UTF-8 form
COLUMNS = [c for c in rh.EVERY_KIND_COLUMNS if c != "row_id"] + ["foreign"]


BASE = rh.jsonl_records(rh.EVERY_KIND_COLUMNS, rh.every_kind_rows(8, seed=9), rh.schema_of("every_kind"))


@st.composite
def records(draw) -> list:
    """Real rows (numbers, lists, nulls) with a few cells replaced, dropped or added."""
    out = []
    for _ in range(draw(st.integers(0, 4))):
        rec = dict(draw(st.sampled_from(BASE)))
        for key in draw(st.lists(st.sampled_from(COLUMNS), unique=True, max_size=2)):
            how = draw(st.integers(0, 5))
            if how == 0:
                rec.pop(key, None)
            elif how < 3:  # another row's value, or null: still a valid row
                rec[key] = draw(st.sampled_from([None, *(b.get(key) for b in BASE)]))
            else:
                rec[key] = draw(CELLS)
        out.append(rec)
    if draw(st.integers(0, 5)) == 0 and out:
        out[0] = draw(st.sampled_from([None, 3, "text", ["a"]]))  # not a record at all
    return out


def _well_named(err: RecordError, n: int, columns: set[str], first: int = 0) -> None:
    assert err.problems and "\n" not in str(err)
    for p in err.problems:
        assert first <= p.record < first + n, p
        assert p.column in columns or p.column == "", p
        assert p.message


@given(rows=records())
def test_records_score_row_by_row_or_are_refused_by_record_and_column(predictor: Predictor, rows: list,
                                                                      tmp_path_factory) -> None:
    columns = {c.name for c in predictor.columns}
    try:
        scores = predictor.score(rows)
    except RecordError as e:
        _well_named(e, len(rows), columns)
        outcome = "refused"
    else:
        assert scores.shape == (len(rows),) and scores.dtype == np.float64
        # probabilities; an extreme dense value (views = -1313) saturates float32's sigmoid to exactly 0 or 1
        assert all(0.0 <= s <= 1.0 for s in scores)
        for i, rec in enumerate(rows):  # the independent check: each row scores alone as in the batch
            assert abs(predictor.score([rec])[0] - scores[i]) < 1e-6
        outcome = "scored"
    if not rows or any(not isinstance(r, dict) for r in rows) or any(
            isinstance(v, float) and not math.isfinite(v) for r in rows for v in r.values()):
        return  # (JSON has no NaN or non-objects lines of ours to compare)
    path = Path(tmp_path_factory.mktemp("jsonl")) / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    try:
        got = score_file(predictor, path, [], 3, None, False).all_scores()
    except RecordError as e:
        assert outcome == "refused", str(e)
        _well_named(e, len(rows), columns, first=1)  # lines from 1
    else:
        assert outcome == "scored"
        assert np.abs(got - scores).max() < 1e-6
