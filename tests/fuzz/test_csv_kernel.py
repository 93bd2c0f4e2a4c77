"""Fuzzing csv_kernel's tokenizer against pyarrow's parse of the same byte range.

Generated ranges: lines of cells drawn from numbers of every form (signs, zeros, long mantissas,
exponents, nan/inf, a lone dot or sign), text (spaces, quotes in a TSV, unicode, control bytes),
empty cells, with a wrong number of fields or CR line ends now and then; mostly the cells it serves.

The property: the tokenizer either refuses the range (None: byte_ranges leaves it to pyarrow),
or pyarrow reads it without an error (columns.typed's checks included) and the two batches are
the same: the same fields, nulls and texts, every number to the bit.
"""

from __future__ import annotations

import pyarrow as pa
from hypothesis import given, strategies as st

from dlrm_dist.errors import DlrmError
from tests.data.test_csv_kernel import NAMES, assert_same, pyarrow_read, tokens

PLAIN_NUMBER = st.one_of(st.from_regex(r"-?[0-9]{1,18}(\.[0-9]{1,22})?", fullmatch=True),
                         st.floats(-1e6, 1e6).map(lambda x: f"{x:.6f}"), st.just(""))
ODD_NUMBER = st.one_of(
    st.integers(-10**20, 10**20).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.decimals(allow_nan=False, allow_infinity=False).map(str),
    st.from_regex(r"-?[0-9]{0,20}(\.[0-9]{0,24})?", fullmatch=True),
    st.sampled_from(["-", ".", "+1", " 1", "1 ", "1e5", "nan", "inf", "-0", "1_0", "0x1", "1.", ".5"]),
)
PLAIN_TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E, blacklist_characters=",\t\""), max_size=12)
ODD_TEXT = st.one_of(st.text(st.characters(blacklist_characters="\n\r,\t\"", blacklist_categories=("Cs",)), max_size=8),
                     st.sampled_from(["é", "\x00", "\x7f", "\"q\""]))


def cell(draw: st.DrawFn, plain: st.SearchStrategy, odd: st.SearchStrategy) -> str:
    return draw(odd if draw(st.integers(0, 30)) == 0 else plain)  # (mostly cells it serves: an odd one now and then)


@st.composite
def ranges(draw: st.DrawFn) -> tuple[bytes, str]:
    delimiter = draw(st.sampled_from([",", "\t"]))
    lines = []
    for _ in range(draw(st.integers(1, 12))):
        cells = [cell(draw, PLAIN_NUMBER, ODD_NUMBER), cell(draw, PLAIN_TEXT, ODD_TEXT),
                 cell(draw, PLAIN_NUMBER, ODD_NUMBER), cell(draw, PLAIN_TEXT, ODD_TEXT),
                 cell(draw, PLAIN_TEXT, ODD_TEXT), cell(draw, PLAIN_NUMBER, ODD_NUMBER)]
        if delimiter == ",":  # (a CSV holding a quote is never cut in ranges: it never reaches the tokenizer)
            cells = [c.replace('"', "") for c in cells]
        if draw(st.integers(0, 40)) == 0:  # a wrong number of fields now and then
            cells = cells[: draw(st.integers(0, 5))] if draw(st.booleans()) else cells + ["extra"]
        lines.append(delimiter.join(cells))
    end = draw(st.sampled_from(["\n"] * 12 + ["\r\n", "\r"]))
    return (end.join(lines) + draw(st.sampled_from([end, ""]))).encode(), delimiter


@given(ranges())
def test_the_tokenizer_reads_a_range_as_pyarrow_does_or_leaves_it(case: tuple[bytes, str]) -> None:
    raw, delimiter = case
    ours = tokens(raw, names=NAMES, delimiter=delimiter)
    if ours is None:
        return
    try:
        theirs = pyarrow_read(raw, delimiter=delimiter)
    except (pa.ArrowInvalid, DlrmError) as e:
        raise AssertionError(f"the tokenizer read a range pyarrow refuses ({e})") from None
    assert_same(ours, theirs)
