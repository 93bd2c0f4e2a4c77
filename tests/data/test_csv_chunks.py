"""CSV/TSV files read in byte ranges on all cores (byte_ranges.read_ranges) give what one streaming
read from the start gives: the same record batches, the same malformed lines by file and line,
the same errors. The reference is the streaming reader itself (byte_ranges.cut_ranges patched to refuse
every file), and the line numbers are also worked out here from the text.
"""

from __future__ import annotations

import gzip
import random
import threading
from pathlib import Path

import pyarrow as pa
import pytest

from dlrm_dist.data.columnar import byte_ranges, columns, encode, read
from dlrm_dist.data.errors import PreprocessError
from dlrm_dist.features.schema import from_dict

SCHEMA = {
    "name": "chunks",
    "label": {"column": "y"},
    "split": {"by": "random", "fractions": [0.5, 0.25, 0.25], "seed": 1},
    "dense": [{"name": "x", "fill": 7.0}],
    "sparse": [{"name": "c", "kind": "vocab"}, {"name": "t", "kind": "vocab", "delimiter": "|"}],
}
BLOCK = 1 << 11  # a few dozen lines per block: many byte ranges


def _lines(n: int, bad: dict[int, str] = {}) -> list[str]:  # noqa: B006 - read only
    return [bad.get(i, f"{i * 0.5},k{i % 7},{'a|b' if i % 3 else ''},{i % 2}") for i in range(n)]


def _write(tmp: Path, lines: list[str], header: str = "x,c,t,y", sep: str = ",", end: str = "\n",
           name: str = "d.csv") -> Path:
    path = tmp / name
    text = end.join(([header] if header else []) + lines) + end
    path.write_bytes(text.replace(",", sep).encode())
    return path


def _schema(**input_keys) -> object:
    return from_dict({**SCHEMA, "input": input_keys} if input_keys else SCHEMA)


def _read(path: Path, schema, streaming: bool, monkeypatch, strict: bool = False) -> tuple[list, read.BadLines]:
    bad = read.BadLines(strict=strict)
    with monkeypatch.context() as m:
        if streaming:
            m.setattr(byte_ranges, "cut_ranges", lambda *a: None)
        else:
            cuts = byte_ranges.cut_ranges(path, schema, read.file_format(path, schema))
            assert cuts, "the file is cut in byte ranges"
        batches = [(read.origin(b)[1], b.to_pydict()) for b in read.read_file(path, schema, bad)]
    return batches, bad


@pytest.fixture(autouse=True)
def _small_blocks(monkeypatch) -> None:
    monkeypatch.setattr(columns, "BLOCK_BYTES", BLOCK)


@pytest.mark.parametrize("sep, end, header", [(",", "\n", True), (",", "\r\n", True), ("\t", "\n", True),
                                              (",", "\n", False)])
def test_byte_ranges_give_the_streaming_batches(tmp_path: Path, monkeypatch, sep: str, end: str,
                                                header: bool) -> None:
    keys = {} if header else {"header": False, "columns": ["x", "c", "t", "y"]}
    if sep == "\t":
        keys["delimiter"] = "\t"
    lines = _lines(900)
    lines[100] = ""  # an empty line: skipped by both
    path = _write(tmp_path, lines, "x,c,t,y" if header else "", sep, end)
    schema = _schema(**keys)
    chunked, bad = _read(path, schema, False, monkeypatch)
    streamed, _ = _read(path, schema, True, monkeypatch)
    assert len(chunked) > 5 and chunked == streamed and bad.count == 0
    assert sum(len(b["num:x"]) for _, b in chunked) == 899
    assert chunked[0][1]["text:c"][:2] == ["k0", "k1"] and chunked[-1][1]["num:x"][-1] == 899 * 0.5


def test_malformed_lines_are_named_by_their_line_over_the_whole_file(tmp_path: Path, monkeypatch) -> None:
    bad_at = {5: "1,k,x", 300: "2,k,a|b,1,extra", 301: "3", 899: "4,k"}
    path = _write(tmp_path, _lines(900, bad_at))
    schema = _schema()
    chunked, bad = _read(path, schema, False, monkeypatch)
    streamed, reference = _read(path, schema, True, monkeypatch)
    assert chunked == streamed
    assert bad.count == reference.count == 4
    assert bad.examples == reference.examples
    assert [e.split(": ")[0] for e in bad.examples] == [f"{path}:{i + 2}" for i in sorted(bad_at)]  # +1 header, 1-based


def test_strict_stops_at_the_first_malformed_line_in_a_later_range(tmp_path: Path, monkeypatch) -> None:
    path = _write(tmp_path, _lines(900, {600: "9,k", 700: "8,k"}))
    with pytest.raises(PreprocessError, match=rf"^{path}:602: 2 fields, expected 4 \(--strict"):
        _read(path, _schema(), False, monkeypatch, strict=True)


@pytest.mark.parametrize("cell, why", [("oops", "'oops' is not a number"),  # pyarrow's conversion error
                                       ("inf", "'inf' is not a finite number")])  # the typed check's, redone
def test_a_bad_number_in_a_later_range_is_named_by_its_line(tmp_path: Path, monkeypatch, cell: str, why: str) -> None:
    path = _write(tmp_path, _lines(900, {750: f"{cell},k,a,1"}))
    errors = []
    for streaming in (False, True):
        with pytest.raises(PreprocessError) as e:
            _read(path, _schema(), streaming, monkeypatch)
        errors.append(str(e.value))
    assert errors[0] == errors[1] and f"{path} line 752, column 'x': {why}" in errors[0]


def test_batches_of_later_ranges_know_their_place_in_the_file(tmp_path: Path, monkeypatch) -> None:
    """The workers parse without knowing where their range's rows start: each batch is given its
    first row's index once the ranges before it are read, so an encoder's error names the line."""
    path = _write(tmp_path, _lines(900, {640: "1,k,a,"}))
    schema = _schema()
    firsts = [first for _, first, _ in read.read_inputs([path], schema, read.BadLines())]
    assert firsts == [first for first, _ in _read(path, schema, True, monkeypatch)[0]] and len(firsts) > 5
    with pytest.raises(PreprocessError, match=rf"^{path} line 642: label column 'y' is empty"):
        for _, _, batch in read.read_inputs([path], schema, read.BadLines()):
            encode.labels_of(batch, schema)


@pytest.mark.parametrize("what", ["quote", "gzip", "one block"])
def test_files_that_cannot_be_cut_are_read_from_the_start(tmp_path: Path, monkeypatch, what: str) -> None:
    lines = _lines(900 if what != "one block" else 20)
    if what == "quote":
        lines[3] = '1.5,"k\n1",a,1'  # a quoted newline: only a read from the start knows it is inside quotes
    path = _write(tmp_path, lines)
    if what == "gzip":
        path = tmp_path / "d.csv.gz"
        path.write_bytes(gzip.compress((tmp_path / "d.csv").read_bytes()))
    schema = _schema()
    assert byte_ranges.cut_ranges(path, schema, read.file_format(path, schema)) is None
    rows = sum(b.num_rows for b in read.read_file(path, schema, read.BadLines()))
    assert rows == len(lines)


def test_a_read_closed_early_stops_its_workers(tmp_path: Path, monkeypatch) -> None:
    path = _write(tmp_path, _lines(3000))
    batches = read.read_file(path, _schema(), read.BadLines())
    assert isinstance(next(batches), pa.RecordBatch)
    batches.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("dlrm_dist-csv")]


# -- line ends: pyarrow ends a line (and a block) at \n, \r or \r\n --------------------------------------
def _crlf_cut_between(lines: list[str]) -> bytes:
    """A CRLF file whose every block limit falls between a line's \\r and its \\n: pyarrow ends each
    block after that \\r, so the line is the block's last (a cut after \\n only moves it on). The
    line whose \\r\\n would straddle a limit has its text cell widened to put the \\r on the limit's
    last byte."""
    out, end, limit = [], len("x,c,t,y\r\n"), BLOCK
    for i, line in enumerate(lines):
        following = len(lines[i + 1]) + 2 if i + 1 < len(lines) else 0
        if end + len(line) + 2 + following > limit:  # the next line would not end in this block
            pad = limit - 1 - (end + len(line))
            assert pad >= 0
            x, c, rest = line.split(",", 2)
            line, limit = f"{x},{c}{'z' * pad},{rest}", limit + BLOCK
        out.append(line)
        end += len(line) + 2
    text = ("x,c,t,y\r\n" + "\r\n".join(out) + "\r\n").encode()
    assert all(text[k * BLOCK - 1: k * BLOCK + 1] == b"\r\n" for k in range(1, len(text) // BLOCK))
    return text


@pytest.mark.parametrize("what", ["CR header, LF lines", "CR lines, one LF", "CRLF cut between CR and LF"])
def test_cr_line_ends_give_the_streaming_batches(tmp_path: Path, monkeypatch, what: str) -> None:
    lines = _lines(900)
    if what == "CR header, LF lines":
        data = ("x,c,t,y\r" + "\n".join(lines) + "\n").encode()
    elif what == "CR lines, one LF":
        data = ("x,c,t,y\r" + "\r".join(lines[:450]) + "\n" + "\r".join(lines[450:]) + "\r").encode()
    else:
        data = _crlf_cut_between(lines)
    path = tmp_path / "d.csv"
    path.write_bytes(data)
    schema = _schema()
    chunked, bad = _read(path, schema, False, monkeypatch)
    streamed, _ = _read(path, schema, True, monkeypatch)
    assert sum(len(b["num:x"]) for _, b in streamed) == 900 and len(chunked) > 5
    assert [first for first, _ in chunked] == [first for first, _ in streamed]  # the same batch boundaries
    assert chunked == streamed and bad.count == 0
    assert chunked[0][1]["num:x"][0] == 0.0 and chunked[-1][1]["num:x"][-1] == 899 * 0.5


def test_a_crlf_file_gives_the_streaming_fit(tmp_path: Path, monkeypatch) -> None:
    """Dense moments are merged per batch: other batch boundaries change a standardize scale's last bits."""
    from dlrm_dist.data.columnar.preprocess import Options, preprocess

    rng = random.Random(0)
    lines = [f"{rng.uniform(0, 1e5):.6f},k{i % 7},a,{i % 2}" for i in range(900)]
    path = tmp_path / "d.csv"
    path.write_bytes(_crlf_cut_between(lines))
    spec = {**SCHEMA, "dense": [{"name": "x", "transform": "standardize"}]}
    fits = []
    for streaming in (False, True):
        with monkeypatch.context() as m:
            if streaming:
                m.setattr(byte_ranges, "cut_ranges", lambda *a: None)
            out = tmp_path / f"out{streaming}"
            preprocess(Options(from_dict(spec), [path], out, progress=False))
            fits.append((out / "fit.json").read_bytes())
    assert fits[0] == fits[1] and b'"x"' in fits[0]


# -- errors from a later range ------------------------------------------------------------------------
@pytest.mark.parametrize("malformed_before", [False, True])
@pytest.mark.parametrize("header", [True, False])
def test_pyarrow_errors_in_a_later_range_count_rows_over_the_file(tmp_path: Path, monkeypatch,
                                                                  malformed_before: bool, header: bool) -> None:
    lines = _lines(900, {10: "1,k", 30: "1,k,a,1,extra"} if malformed_before else {})
    lines[20] = ""  # an empty line: pyarrow does not count it as a row (malformed lines it does)
    path = _write(tmp_path, lines, "x,c,t,y" if header else "")
    path.write_bytes(path.read_bytes().replace(b"\n350.0,k0,", b"\n350.0,k\xff,"))  # invalid UTF-8: data line 701
    schema = _schema() if header else _schema(header=False, columns=["x", "c", "t", "y"])
    errors = []
    for streaming in (False, True):
        with pytest.raises(PreprocessError) as e:
            _read(path, schema, streaming, monkeypatch)
        errors.append(str(e.value))
    assert errors[0] == errors[1]
    line = header + 701  # (pyarrow's own "Row #" counts neither the empty line nor, malformed, the lines skipped)
    assert f"d.csv line {line}, column 'c': the cell is not UTF-8 text" in errors[0], errors[0]


def test_a_file_that_shrinks_while_read_is_refused_not_read_short(tmp_path: Path, monkeypatch) -> None:
    path = _write(tmp_path, _lines(900))
    size = path.stat().st_size
    cuts = byte_ranges.cut_ranges

    def cut_then_shrink(*args):
        ranges = cuts(*args)
        with open(path, "r+b") as f:
            f.truncate(size // 2)  # another process rewrites the file after it was cut
        return ranges

    monkeypatch.setattr(byte_ranges, "cut_ranges", cut_then_shrink)
    with pytest.raises(PreprocessError, match=rf"^{path}: shorter than when it was opened \(bytes \d+\.\.\d+ expected"):
        list(read.read_file(path, _schema(), read.BadLines()))


# -- threads ---------------------------------------------------------------------------------------------
def test_parse_threads_follow_the_affinity_mask_and_are_capped(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(byte_ranges.os, "sched_getaffinity", lambda pid: set(range(64)))
    assert byte_ranges.cpu_threads() == byte_ranges.MAX_CHUNK_WORKERS == 8  # 64 cores: 16 ranges in flight, not 128
    monkeypatch.delattr(byte_ranges.os, "sched_getaffinity")
    monkeypatch.setattr(byte_ranges.os, "cpu_count", lambda: 3)
    assert byte_ranges.cpu_threads() == 3  # no affinity masks on this platform
    monkeypatch.setattr(byte_ranges.os, "sched_getaffinity", lambda pid: {0}, raising=False)  # taskset -c 0
    seen = set()
    parse = byte_ranges._parse_chunk

    def recording(*args):
        seen.add(threading.current_thread().name)
        return parse(*args)

    monkeypatch.setattr(byte_ranges, "_parse_chunk", recording)
    rows = sum(b.num_rows for b in read.read_file(_write(tmp_path, _lines(3000)), _schema(), read.BadLines()))
    assert rows == 3000 and len(seen) == 1
