"""Fuzzing the criteo_tsv reader with generated lines against the pure-Python reference.

Lines are drawn field by field: valid counts and categories (empty, negative, 19-digit,
upper- and lower-case hex) and broken ones (a letter in a count, a lone '-', 2**63, a 7- or
9-digit or non-hex category, a label of 2, a missing or extra field, CRLF, an empty line).
The lines go to two day files, split where the reference's 2 pseudo-days are cut (so that no
line count pass runs). The property: preprocessing with the built-in schema either succeeds,
and every split's ids, dense values and labels equal the reference's (malformed lines counted,
the first reported by file and line), or it fails with a one-line DlrmError (an empty split,
or a file without a valid line).
"""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
from hypothesis import given, strategies as st

from dlrm_dist.data.columnar import layout
from dlrm_dist.data.columnar.preprocess import Options, preprocess
from dlrm_dist.errors import DlrmError
from dlrm_dist.features.builtin import criteo_schema, criteo_sparse_names
from tests.data import reference

BUCKETS = 97
COUNTS = st.one_of(st.just(""), st.integers(-5, 10**6).map(str), st.integers(10**18, 2**63 - 1).map(str),
                   st.sampled_from(["12x", "-", "1.5", str(2**63), "٣"]))
CATEGORIES = st.one_of(st.just(""), st.integers(0, 2**32 - 1).map(lambda v: f"{v:08x}"),
                       st.integers(0, 2**32 - 1).map(lambda v: f"{v:08X}"),
                       st.sampled_from(["abc", "0123456789", "05dbg164", "0000000"]))


@st.composite
def line(draw) -> str:
    fields = [draw(st.sampled_from(["0", "1", "1", "0", "2", ""]))]
    fields += [draw(COUNTS) for _ in range(13)] + [draw(CATEGORIES) for _ in range(26)]
    shape = draw(st.sampled_from(["ok"] * 8 + ["short", "long", "empty"]))
    fields = fields[:20] if shape == "short" else fields + ["x"] if shape == "long" else [""] if shape == "empty" else fields
    return "\t".join(fields) + draw(st.sampled_from(["\n", "\n", "\r\n"]))


@given(st.lists(line(), min_size=2, max_size=40))
def test_criteo_lines_match_the_reference_or_are_refused_in_one_line(tmp_path_factory, lines: list[str]) -> None:
    tmp = tmp_path_factory.mktemp("criteo")
    files = [tmp / "day_0", tmp / "day_1"]
    files[0].write_text("".join(lines[: len(lines) // 2]), newline="")
    files[1].write_text("".join(lines[len(lines) // 2 :]), newline="")
    out = tmp / f"out-{uuid.uuid4().hex[:6]}"
    try:
        r = preprocess(Options(criteo_schema(buckets=BUCKETS), files, out, progress=False, workers=1))
    except DlrmError as e:
        assert "\n" not in str(e) and ("would be empty" in str(e) or "every input file must hold data" in str(e)), str(e)
        return
    text = [ln.rstrip("\r\n") for ln in "".join(lines).split("\n")[:-1]]
    expected = reference.criteo(text, 2, buckets=BUCKETS)
    bad = [i for i, t in enumerate(text) if not reference.criteo_valid(t.split("\t"))]
    assert r.skipped == len(bad) and r.rows_read == len(text)
    if bad:
        first = (files[0], bad[0] + 1) if bad[0] < len(lines) // 2 else (files[1], bad[0] + 1 - len(lines) // 2)
        assert r.examples[0].startswith(f"{first[0]}:{first[1]}: "), r.examples
    _, _, splits = layout.check_directory(out)
    for split, (dense, ids, labels) in expected.items():
        a = splits[split]
        assert np.stack([a.ids[f] for f in criteo_sparse_names()], axis=1).tolist() == ids if ids else a.rows == 0
        assert np.array_equal(a.dense, np.array(dense, np.float32).reshape(-1, 13))
        assert a.labels.tolist() == labels
    assert Path(out / layout.META).is_file()
