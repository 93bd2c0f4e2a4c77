"""csv_kernel's tokenizer reads a byte range exactly as pyarrow's parse and columns.typed read it
(the same numbers to the bit, the same nulls, the same texts), and refuses (None: pyarrow reads
the range) every line or cell it does not serve; a file read in byte ranges gives the same
batches with the tokenizer as without it, ranges it refuses included."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pytest

from dlrm_dist.data.columnar import byte_ranges, columns, csv_kernel, read
from dlrm_dist.features.schema import from_dict

SCHEMA = from_dict({
    "name": "tok",
    "label": {"column": "y"},
    "split": {"by": "time", "column": "ts", "fractions": [0.8, 0.1, 0.1]},
    "dense": [{"name": "x"}],
    "sparse": [{"name": "c", "kind": "vocab"}, {"name": "t", "kind": "vocab", "delimiter": "|"}],
})
NAMES = ["y", "skip", "x", "c", "t", "ts"]  # (a column no feature reads: skipped, whatever it holds)


def pyarrow_read(raw: bytes, schema=SCHEMA, names: list[str] = NAMES, delimiter: str = ",") -> pa.RecordBatch:
    """The batch byte_ranges' pyarrow path gives for ``raw`` (its options; columns.typed)."""
    wanted, text = schema.columns(), set(columns.text_columns(schema))
    table = pa_csv.read_csv(pa.BufferReader(raw), read_options=pa_csv.ReadOptions(column_names=names, use_threads=False),
                            parse_options=pa_csv.ParseOptions(delimiter=delimiter,  # (byte_ranges': no quoting in a TSV)
                                                              quote_char=False if delimiter == "\t" else '"'),
                            convert_options=pa_csv.ConvertOptions(
                                include_columns=wanted, null_values=[""], strings_can_be_null=True,
                                quoted_strings_can_be_null=False,
                                column_types={c: pa.string() if c in text else pa.float64() for c in wanted}))
    return columns.typed(table.combine_chunks().to_batches()[0], schema, Path("f.csv"), 0)


def assert_same(ours: pa.RecordBatch, theirs: pa.RecordBatch) -> None:
    assert ours.schema.names == theirs.schema.names and ours.num_rows == theirs.num_rows
    for name in ours.schema.names:
        a, b = ours.column(name), theirs.column(name)
        assert a.type == b.type, name
        assert a.is_null().to_pylist() == b.is_null().to_pylist(), name
        if pa.types.is_floating(a.type):  # to the bit (the sign of a zero too), where present
            present = ~np.asarray(a.is_null())
            assert a.to_numpy(zero_copy_only=False)[present].tobytes() == \
                b.to_numpy(zero_copy_only=False)[present].tobytes(), name
        else:
            assert a.to_pylist() == b.to_pylist(), name


def tokens(raw: bytes, schema=SCHEMA, names: list[str] = NAMES, delimiter: str = ",") -> Optional[pa.RecordBatch]:
    plan = csv_kernel.plan(schema, names, delimiter)
    assert plan is not None
    return csv_kernel.parse(plan, raw)


NUMBERS = ["0", "-0", "1", "12.5", "-3.25", "007.100", "0.1", "0.3", "2.675", "1401.47", "0.4394", "1700000016",
           "9007199254740991", "900719925474099.1", "-0.00000000000000001", "0.0000000000000000000000"[:18], "1234567890123456", ""]


@pytest.mark.parametrize("delimiter", [",", "\t", ";"])
def test_the_tokenizer_reads_what_pyarrow_reads(delimiter: str) -> None:
    lines = []
    for i, x in enumerate(NUMBERS):
        c = ["k1", "", "a b", "Z" * 40, "x\"y"][i % 5] if delimiter != "," else ["k1", "", "a b", "Z" * 40, "q"][i % 5]
        lines.append(delimiter.join([str(i % 2), "junk", x, c, ["a|b", "", "|c||d|", "e"][i % 4], str(1000 + i)]))
    raw = ("\n".join(lines)).encode()  # (the last line without its line end)
    ours = tokens(raw, delimiter=delimiter)
    assert ours is not None and ours.num_rows == len(NUMBERS)
    assert_same(ours, pyarrow_read(raw, delimiter=delimiter))
    assert np.signbit(ours.column("num:x").to_numpy(zero_copy_only=False)[1])  # "-0" is -0.0, as pyarrow reads it


@pytest.mark.parametrize("line", [
    "1,s,1e5,a,b,1", "1,s,+1,a,b,1", "1,s, 1,a,b,1", "1,s,1.,a,b,1", "1,s,.5,a,b,1", "1,s,nan,a,b,1",
    "1,s,inf,a,b,1", "1,s,-,a,b,1", "1,s,1234567890123456789,a,b,1", "1,s,9007199254740993,a,b,1",
    "1,s,1,é,b,1", "1,é,1,a,b,1", "1,s,1,a,b", "1,s,1,a,b,1,2", "", "1,s,1,a,b,1\r",
])
def test_lines_and_cells_it_does_not_serve_are_left_to_pyarrow(line: str) -> None:
    raw = f"0,s,2.5,k,a|b,7\n{line}\n1,s,3,k,c,8\n".encode()
    assert tokens(raw) is None


def test_schemas_it_does_not_serve_have_no_plan() -> None:
    def schema(**more: object) -> object:
        return from_dict({"name": "s", "label": {"column": "y"}, "dense": [{"name": "x"}],
                          "sparse": [{"name": "c", "kind": "vocab"}], **more})

    both = schema(sparse=[{"name": "x_id", "column": "x", "kind": "hash", "buckets": 10}])
    assert csv_kernel.plan(both, ["y", "x"], ",") is None  # (a column read as a number and as text)
    assert csv_kernel.plan(schema(input={"null_values": ["NA"]}), ["y", "x", "c"], ",") is None
    assert csv_kernel.plan(schema(), ["y", "x", "c"], "é") is None
    assert csv_kernel.plan(schema(), ["y", "x", "c"], ",") is not None


def test_an_empty_line_in_a_file_of_one_column_is_left_to_pyarrow() -> None:
    one_column = csv_kernel.Plan(44, np.array([csv_kernel.TEXT], np.int8), np.zeros(1, np.int64), [], ["c"])
    assert csv_kernel.parse(one_column, b"a\nb\n").num_rows == 2
    assert csv_kernel.parse(one_column, b"a\n\nb\n") is None  # (pyarrow skips it: it is no row with a missing cell)


def test_a_file_in_byte_ranges_reads_the_same_with_and_without_the_tokenizer(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(columns, "BLOCK_BYTES", 1 << 11)
    lines = [f"{i % 2},s,{i * 0.25},k{i % 13},{'a|b' if i % 3 else ''},{i}" for i in range(1200)]
    lines[300], lines[700], lines[901] = "1,s,1e3,k,a,300", "0,s,5,ké,a,700", ""  # three ranges left to pyarrow
    path = tmp_path / "d.csv"
    path.write_text("y,skip,x,c,t,ts\n" + "\n".join(lines) + "\n", encoding="utf-8")
    csv_kernel.warm(csv_kernel.plan(SCHEMA, NAMES, ",")).wait()  # (loaded: every range is offered to the tokenizer)
    served: list[bool] = []
    parse = csv_kernel.parse
    monkeypatch.setattr(csv_kernel, "parse", lambda p, raw: served.append(parse(p, raw) is not None) or parse(p, raw))

    def batches(tokenizer: bool) -> list[tuple[int, pa.RecordBatch]]:
        monkeypatch.setattr(byte_ranges, "TOKENIZER", tokenizer)
        return [(read.origin(b)[1], b) for b in read.read_file(path, SCHEMA, read.BadLines())]

    ours, theirs = batches(True), batches(False)
    assert served.count(False) == 3 and served.count(True) >= 8
    assert [first for first, _ in ours] == [first for first, _ in theirs]
    for (_, a), (_, b) in zip(ours, theirs):
        assert_same(a, b)
        assert a.schema.metadata == b.schema.metadata  # (the origin: file and first row)


def test_a_range_of_tiny_cells_is_served_too() -> None:
    raw = "".join(f"{i % 2},,{i % 10},,,{i % 3}\n" for i in range(500)).encode()  # (2 bytes a cell: ends recounted)
    ours = tokens(raw)
    assert ours is not None and ours.num_rows == 500
    assert_same(ours, pyarrow_read(raw))


class _Loading:
    """csv_kernel's ready event while its kernels are still loading (and the wait at a read's end)."""

    def is_set(self) -> bool:
        return False

    def wait(self, timeout: Optional[float] = None) -> bool:
        return True


def test_ranges_read_while_the_kernels_load_are_parsed_by_pyarrow(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(columns, "BLOCK_BYTES", 1 << 11)
    path = tmp_path / "d.csv"
    path.write_text("y,skip,x,c,t,ts\n" + "".join(f"{i % 2},s,{i},k{i % 5},a|b,{i}\n" for i in range(600)))
    csv_kernel.warm(csv_kernel.plan(SCHEMA, NAMES, ",")).wait()
    reference = list(read.read_file(path, SCHEMA, read.BadLines()))  # (every range by the tokenizer)
    offered: list[bool] = []
    parse_chunk = byte_ranges._parse_chunk
    monkeypatch.setattr(byte_ranges, "_parse_chunk", lambda *a: offered.append(a[-1] is not None) or parse_chunk(*a))
    monkeypatch.setattr(csv_kernel, "_WARM", _Loading())
    batches = list(read.read_file(path, SCHEMA, read.BadLines()))
    assert len(offered) > 5 and not any(offered)
    assert len(batches) == len(reference)
    for a, b in zip(batches, reference):
        assert_same(a, b)
        assert a.schema.metadata == b.schema.metadata
