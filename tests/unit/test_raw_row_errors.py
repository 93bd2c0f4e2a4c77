"""Raw rows that cannot be read are named by file, line and column, never a traceback.

Reads through serving/records.py's FileRows and records_batch on the every-kind schema
(no model: the reads fail before any scoring). The review of issue 21 (findings 1-4, 9).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dlrm_dist.errors import EXIT_BAD_INPUT
from dlrm_dist.serving.records import FileRows, RecordError, records_batch
from tests import rows_helper as rh

SCHEMA = rh.schema_of("every_kind")


def _read(path: Path, keep: tuple[str, ...] = ()) -> int:
    return sum(b.raw.num_rows for b in FileRows(path, SCHEMA, keep).blocks())


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("raw_rows")
    rows = rh.every_kind_rows(6)
    records = rh.jsonl_records(rh.EVERY_KIND_COLUMNS, rows, SCHEMA)
    return {"tmp": tmp, "rows": rows, "records": records,
            "csv": rh.write_table(tmp / "ok.csv", rh.EVERY_KIND_COLUMNS, rows)}


def test_a_lone_surrogate_is_a_record_error_naming_record_and_column(good, tmp_path) -> None:
    recs = good["records"]
    _, problems = records_batch([recs[0], {**recs[1], "city": "\udfff"}], SCHEMA)
    assert [(p.record, p.column) for p in problems] == [(1, "city")] and "not valid UTF-8" in problems[0].message
    path = tmp_path / "sur.jsonl"
    path.write_text(json.dumps(recs[0]) + "\n" + json.dumps({**recs[1], "city": "\udfff"}) + "\n")
    with pytest.raises(RecordError, match=r"sur.jsonl line 2, column 'city'.*not valid UTF-8") as e:
        _read(path)
    assert e.value.exit_code == EXIT_BAD_INPUT
