"""Raw rows that cannot be read are named by file, line and column, never a traceback.

Reads through serving/records.py's FileRows and records_batch on the every-kind schema
(no model: the reads fail before any scoring). The review of issue 21 (findings 1-4, 9).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dlrm_dist.errors import EXIT_BAD_INPUT
from dlrm_dist.serving.records import RecordError, records_batch
from dlrm_dist.serving.row_files import FileRows
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


def _lines(good) -> list[str]:
    return good["csv"].read_text().splitlines()


def test_a_csv_that_is_not_utf8_is_named_with_its_byte_offset(good, tmp_path) -> None:
    path = tmp_path / "utf16.csv"
    path.write_bytes(b"\xff\xfe" + "\n".join(_lines(good)).encode() + b"\n")
    with pytest.raises(RecordError, match=r"utf16.csv line 1: not UTF-8 text \(byte 0xff at offset 0\)") as e:
        _read(path)
    assert e.value.exit_code == EXIT_BAD_INPUT


def test_malformed_csv_lines_are_named_at_their_line_and_column(good, tmp_path) -> None:
    lines = _lines(good)
    extra = tmp_path / "extra.csv"  # an extra field on line 3 (the header is line 1)
    extra.write_text("\n".join([*lines[:2], lines[2] + ",EXTRA", *lines[3:]]) + "\n")
    with pytest.raises(RecordError, match=r"extra.csv line 3: cannot be read as CSV \(.*Expected"):
        _read(extra)
    cells = lines[4].split(",")
    city = rh.EVERY_KIND_COLUMNS.index("city")
    cells[city] = "x"
    bad = tmp_path / "badutf.csv"  # a data cell that is not UTF-8 on line 5
    bad.write_bytes("\n".join(lines[:4]).encode() + b"\n" + ",".join(cells).encode().replace(b",x,", b",\xff,")
                    + b"\n" + "\n".join(lines[5:]).encode() + b"\n")
    for keep in ((), ("row_id",)):
        with pytest.raises(RecordError) as e:
            _read(bad, keep)
        assert [(p.record, p.column) for p in e.value.problems] == [(5, "city")], str(e.value)


def test_keep_with_json_lines_refuses_a_line_without_the_column(good, tmp_path) -> None:
    recs = good["records"]
    path = rh.write_jsonl(tmp_path / "keep.jsonl", [{**recs[0], "order": 1}, recs[1]])
    with pytest.raises(RecordError, match=r"keep.jsonl line 2, column 'order'.*--keep"):
        _read(path, ("order",))
    assert _read(path) == 2
    path = rh.write_jsonl(tmp_path / "keep2.jsonl", [{**recs[0], "order": 1}, {**recs[1], "order": "\udfff"}])
    with pytest.raises(RecordError, match=r"keep2.jsonl line 2, column 'order'.*not valid UTF-8"):
        _read(path, ("order",))
    with pytest.raises(RecordError, match=r"keep2.jsonl line 1, column 'nosuch'"):
        _read(path, ("nosuch",))


@pytest.mark.parametrize("name, text", [("header.csv", None), ("empty.jsonl", "\n\n"), ("blank.csv", "")])
def test_an_input_with_no_rows_is_refused_naming_the_file(good, tmp_path, name, text) -> None:
    path = tmp_path / name
    path.write_text(_lines(good)[0] + "\n" if text is None else text)
    with pytest.raises(RecordError) as e:
        _read(path)
    assert str(e.value).startswith(f"{path}: ") and "line 0" not in str(e.value), str(e.value)
    with pytest.raises(RecordError, match=rf"^{tmp_path / 'nothere.csv'}: no such file$"):
        _read(tmp_path / "nothere.csv")


def test_keep_repeated_keeps_every_column() -> None:
    """`--keep user_id --keep item` keeps both (a repeated option used to replace the earlier one)."""
    from dlrm_dist.cli.predict_main import build_parser

    args = build_parser().parse_args(["EXPORT", "--input", "rows.csv", "--keep", "user_id", "--keep", "item", "ts"])
    assert args.keep == ["user_id", "item", "ts"]
