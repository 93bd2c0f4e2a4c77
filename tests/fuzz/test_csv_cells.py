"""Fuzzing preprocessing with generated CSV cells against a pure-Python model of the schema.

A small fixed schema (a dense feature through clip + log1p, a vocabulary, a hash, a multi-hot
vocabulary, a 0/1 label; every row in train, in file order) and generated files: cells drawn
from valid numbers, empty and quoted-empty cells, nan/inf/1e400, garbage text, quotes,
embedded delimiters and newlines, unicode, a BOM, lines with a wrong number of fields.

The property: preprocessing either succeeds, and every array equals what the model computes
from the generated rows (malformed lines skipped and reported with their line numbers), or it
fails with a DlrmError whose one-line message names the file and the line of a row that is
really bad (or, under --strict, the first malformed line). Never a traceback, never a
non-finite value in dense.npy.
"""

from __future__ import annotations

import json
import math
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
from hypothesis import given, strategies as st

from dlrm_dist.data.columnar.preprocess import Options, preprocess
from dlrm_dist.errors import DlrmError
from dlrm_dist.features.schema import from_dict
from tests.data.reference import fnv1a

COLUMNS = ["x", "v", "h", "m", "y"]
HASH_BUCKETS = 13
CLIP = (-0.5, 1e6)
FILL = 1.5
SCHEMA = from_dict({
    "name": "fuzz",
    "label": {"column": "y"},
    "split": {"by": "random", "fractions": [1.0, 0.0, 0.0]},
    "dense": [{"name": "x", "transform": ["clip", "log1p"], "clip": list(CLIP), "fill": FILL}],
    "sparse": [
        {"name": "v", "kind": "vocab"},
        {"name": "h", "kind": "hash", "buckets": HASH_BUCKETS},
        {"name": "m", "kind": "vocab", "delimiter": "|"},
    ],
})
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$", re.ASCII)  # "١٢" is not a number


@dataclass(frozen=True)
class Cell:
    text: str
    quoted: bool

    def csv(self) -> str:
        return '"' + self.text.replace('"', '""') + '"' if self.quoted else self.text

    @property
    def missing(self) -> bool:
        return self.text == "" and not self.quoted  # a quoted empty cell is an empty string, not missing

    def number(self) -> Optional[float]:
        """The cell as a finite number; None if missing; raises ValueError if it is not one."""
        if self.missing:
            return None
        s = self.text.strip()
        if not _NUMBER.match(s) or not math.isfinite(float(s)):
            raise ValueError(s)
        return float(s)


# -- generation -------------------------------------------------------------------------------------
_SAFE = st.text(st.characters(codec="utf-8", exclude_characters='",\n\r|\ufeff', exclude_categories=("Cs", "Cc")),
                max_size=4)
_TRICKY = st.sampled_from(["a,b", 'say "hi"', "two\nlines", "a|b||c", "|", "雪", "é", "😀", " pad ", "", "x"])
_NUMBERS = st.one_of(
    st.integers(-5, 500).map(str),
    st.floats(-0.4, 1e5, allow_nan=False).map(repr),
    st.sampled_from(["1e-3", " 4 ", "+2", ".5", "5.", "1E2"]),
)
_NON_FINITE = st.sampled_from(["nan", "NaN", "inf", "-inf", "1e400", "-1e400"])
_GARBAGE = st.sampled_from(["abc", "1,5", "١٢", "0x10", "1..2", "--1", "e5", "12abc"])


def _cell(values: st.SearchStrategy) -> st.SearchStrategy:
    quote_if_needed = lambda t, q: Cell(t, q or any(ch in t for ch in ',"\n'))  # noqa: E731
    return st.builds(quote_if_needed, values, st.booleans())


_DENSE = _cell(st.one_of(_NUMBERS, _NUMBERS, _NUMBERS, st.just(""), _NON_FINITE, _GARBAGE))
_TEXT = _cell(st.one_of(_SAFE, _TRICKY))
_MULTI = _cell(st.lists(st.one_of(_SAFE.filter(lambda t: "|" not in t), st.sampled_from(["a", "b", "雪"])),
                        max_size=3).map("|".join))
_LABEL = _cell(st.one_of(st.sampled_from(["0", "1"]), st.sampled_from(["0", "1"]), st.sampled_from(["", "2", "0.5", "nan", "yes"])))
_ROW = st.tuples(_DENSE, _TEXT, _TEXT, _MULTI, _LABEL).map(list)


@st.composite
def _files(draw) -> tuple[bool, list[list[Cell]]]:
    rows = draw(st.lists(_ROW, min_size=1, max_size=12))
    for row in rows:  # some lines with a wrong number of fields
        if draw(st.integers(0, 9)) == 0:
            if draw(st.booleans()):
                row.append(Cell("extra", False))
            else:
                row.pop()
    return draw(st.booleans()), rows


def _write(path: Path, bom: bool, rows: list[list[Cell]]) -> list[int]:
    """Writes the file; returns each row's first (physical) line."""
    lines, text, line = [], ("\ufeff" if bom else "") + ",".join(COLUMNS) + "\n", 2
    for row in rows:
        record = ",".join(c.csv() for c in row)
        lines.append(line)
        line += record.count("\n") + 1
        text += record + "\n"
    path.write_text(text, encoding="utf-8")
    return lines


# -- the model --------------------------------------------------------------------------------------

def _vocabulary(values: list[str]) -> list[str]:
    counts: dict[str, int] = {}
    for v in values:
        counts[v] = counts.get(v, 0) + 1
    return sorted(counts, key=lambda v: (-counts[v], v.encode()))


def _bad_row(row: list[Cell]) -> bool:
    """A well-formed row the schema cannot take: a dense cell or label that is not a finite number, a label
    that is missing or not 0/1."""
    try:
        row[0].number()
        label = row[4].number()
    except ValueError:
        return True
    return label not in (0.0, 1.0)


def _pieces(cell: Cell) -> list[str]:
    return [] if cell.missing else [p for p in cell.text.split("|") if p]


def _expected(rows: list[list[Cell]]) -> dict[str, np.ndarray]:
    x = np.array([FILL if r[0].number() is None else r[0].number() for r in rows], np.float64)
    v_vocab = _vocabulary([r[1].text for r in rows if not r[1].missing])
    m_vocab = _vocabulary([p for r in rows for p in _pieces(r[3])])
    lengths = [len(_pieces(r[3])) for r in rows]
    return {
        "labels.npy": np.array([r[4].number() for r in rows], np.float32),
        "dense.npy": np.log1p(np.clip(x, *CLIP)).astype(np.float32)[:, None],
        "v.ids.npy": np.array([0 if r[1].missing else 1 + v_vocab.index(r[1].text) for r in rows]),
        "h.ids.npy": np.array([fnv1a("" if r[2].missing else r[2].text) % HASH_BUCKETS for r in rows]),
        "m.ids.npy": np.array([1 + m_vocab.index(p) for r in rows for p in _pieces(r[3])], dtype=np.int64),
        "m.offsets.npy": np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
    }


# -- the property -----------------------------------------------------------------------------------
@given(_files(), st.booleans())
def test_generated_cells_are_preprocessed_as_the_model_says_or_named(tmp_path: Path, file: tuple, strict: bool) -> None:
    bom, rows = file
    case = tmp_path / uuid.uuid4().hex
    case.mkdir()
    data = case / "cells.csv"
    lines = _write(data, bom, rows)
    malformed = [line for line, row in zip(lines, rows) if len(row) != len(COLUMNS)]
    good = [(line, row) for line, row in zip(lines, rows) if len(row) == len(COLUMNS)]
    bad = [line for line, row in good if _bad_row(row)]
    try:
        report = preprocess(Options(SCHEMA, [data], case / "out", strict=strict, progress=False))
    except DlrmError as e:
        message = str(e)
        assert "\n" not in message, message
        if strict and malformed:
            assert f"{data}:{malformed[0]}:" in message and "--strict" in message, message
        elif not good:
            assert str(data) in message and "malformed" in message, message
        elif "no value seen" in message:  # the fit pass (before the labels are read) found a vocabulary empty
            assert all(r[1].missing for _, r in good) or all(not _pieces(r[3]) for _, r in good), message
        else:
            named = [int(n) for n in re.findall(rf"{re.escape(str(data))} line (\d+)", message)]
            assert named and named[0] in bad, (message, bad)
        return
    assert not (strict and malformed) and good and not bad
    assert report.skipped == len(malformed) and report.rows["train"] == len(good)
    assert report.examples == [f"{data}:{line}: {len(rows[lines.index(line)])} fields, expected {len(COLUMNS)}"
                               for line in malformed[:10]]
    written = {p.name: np.load(p) for p in (case / "out" / "train").glob("*.npy")}
    assert np.isfinite(written["dense.npy"]).all()
    for name, expected in _expected([r for _, r in good]).items():
        if name == "dense.npy":
            np.testing.assert_allclose(written[name], expected, rtol=1e-6, err_msg=name)
        else:
            np.testing.assert_array_equal(written[name], expected, err_msg=name)
    meta = json.loads((case / "out" / "meta.json").read_text())
    assert meta["skipped"] == len(malformed)
