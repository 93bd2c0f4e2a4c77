"""The criteo_tsv parser against an independent line-by-line reference, and every kind of bad line."""

from __future__ import annotations

import numpy as np
import pytest

from dlrm_dist.data.columnar.tsv_kernel import padded, parse_chunk


def _reference(text: str) -> tuple[np.ndarray, ...]:
    rows = [line.split("\t") for line in text.splitlines()]
    dense = np.array([[int(x or 0) for x in r[1:14]] for r in rows]).T  # column-major, as the parser stores them
    sparse = np.array([[int(x or "0", 16) for x in r[14:]] for r in rows]).T
    missing = (np.array([[x == "" for x in r[1:14]] for r in rows]).T, np.array([[x == "" for x in r[14:]] for r in rows]).T)
    return np.array([int(r[0]) for r in rows]), dense, sparse, *missing


def test_real_sample_matches_reference(criteo_sample) -> None:
    raw = criteo_sample.read_bytes()
    labels, dense, sparse, dense_missing, sparse_missing = _reference(raw.decode())
    c = parse_chunk(raw)
    assert c.num_lines == 200 and c.num_bad == 0 and c.labels.sum() == 49
    np.testing.assert_array_equal(c.labels, labels)
    np.testing.assert_array_equal(c.dense, dense)
    np.testing.assert_array_equal(c.sparse, sparse)
    np.testing.assert_array_equal(c.dense_missing, dense_missing)
    np.testing.assert_array_equal(c.sparse_missing, sparse_missing)
    assert c.dense_missing.any() and c.sparse_missing.any()
    assert (c.dense < 0).any()  # the sample has negative counts
    np.testing.assert_array_equal(c.rows, np.arange(200))


def test_crlf_and_missing_final_newline(criteo_sample) -> None:
    raw = criteo_sample.read_bytes()
    assert len(parse_chunk(raw.replace(b"\n", b"\r\n")).labels) == 200
    assert len(parse_chunk(raw.rstrip(b"\n")).labels) == 200


def _corrupt(raw: bytes, line: int, field: int, value: bytes) -> bytes:
    lines = raw.split(b"\n")
    fields = lines[line].split(b"\t")
    fields[field] = value
    lines[line] = b"\t".join(fields)
    return b"\n".join(lines)


@pytest.mark.parametrize("field, value, reason", [
    (0, b"2", "label is not 0 or 1"),
    (0, b"", "label is not 0 or 1"),
    (3, b"12x", "I3 is not an integer"),
    (5, b"-", "I5 is not an integer"),
    (5, b"1.5", "I5 is not an integer"),
    (14, b"05dbg164", "C1 is not 8 hex digits"),
    (20, b"abc", "C7 is not 8 hex digits"),
    (39, b"0123456789", "C26 is not 8 hex digits"),
])
def test_bad_values_are_reported_and_skipped(criteo_sample, field: int, value: bytes, reason: str) -> None:
    c = parse_chunk(_corrupt(criteo_sample.read_bytes(), 17, field, value))
    assert c.bad == [(17, reason)] and c.num_bad == 1
    assert len(c.labels) == 199 and 17 not in c.rows


def test_wrong_field_counts(criteo_sample) -> None:
    lines = criteo_sample.read_bytes().split(b"\n")
    lines[3] = b"1\t2\t3"
    lines[8] = lines[8] + b"\textra"
    c = parse_chunk(b"\n".join(lines))
    assert c.bad == [(3, "3 fields instead of 40"), (8, "41 fields instead of 40")]
    assert c.num_lines == 200 and len(c.labels) == 198


def test_counts_up_to_64_bits(criteo_sample) -> None:
    """A 19-digit count that fits int64 was "not an integer"; one past int64 still is one."""
    fields = criteo_sample.read_text().splitlines()[0].split("\t")
    fits = "\t".join(fields[:1] + ["9223372036854775807"] + fields[2:]) + "\n"
    over = "\t".join(fields[:1] + ["9223372036854775808"] + fields[2:]) + "\n"
    parsed = parse_chunk((fits + over).encode())
    assert parsed.num_bad == 1 and parsed.dense[0, 0] == float(9223372036854775807)
    assert parsed.bad[0][1] == "I1 is an integer beyond 64 bits"


def test_padded_arrays_parse_like_bytes_and_unpadded_ones_are_refused(criteo_sample) -> None:
    """The reader hands the parser its bytes with a 0 end marker (no bounds test per byte); a
    0 byte inside a line is data like any other (here: a malformed category)."""
    raw = criteo_sample.read_bytes()
    a, b = parse_chunk(raw), parse_chunk(padded(raw))
    assert a.num_lines == b.num_lines == 200 and np.array_equal(a.sparse, b.sparse) and np.array_equal(a.dense, b.dense)
    zero = _corrupt(raw, 4, 20, b"\x00bcd1234")
    assert parse_chunk(padded(zero)).bad == [(4, "C7 is not 8 hex digits")]
    with pytest.raises(ValueError, match="padded"):
        parse_chunk(np.frombuffer(raw, np.uint8))
