"""Fuzzing `dlrm-data import-torchrec` with generated TorchRec-layout days against a pure-Python model.

Generated directories: 2-4 days of 0-5 rows, the files' dtypes drawn from those TorchRec and
the old preprocessing wrote, ids in range or raw, with or without --max-ind-range; then up to
two damages: a non-finite dense cell, a label other than 0/1, a negative or a raw (>= 2**31)
id, a missing file or day, another dtype or shape, a file that is not .npy.

The property: the import either succeeds, and every array of every split equals what the
model computes from the generated days (ids modulo M with Python's %, or kept with tables of
max id + 1 rows; TorchRec's split), or it fails with a DlrmError (exit 2) whose one-line
message names a file and, for a bad cell, a row and feature that really are bad. Never a
traceback; the input directory is never written to.
"""

from __future__ import annotations

import math
import re
import uuid
from pathlib import Path
from typing import Optional

import numpy as np
from hypothesis import event, given, strategies as st

from dlrm_dist.data.columnar import layout
from dlrm_dist.data.columnar.import_torchrec import ImportOptions, import_torchrec
from dlrm_dist.errors import DlrmError
from dlrm_dist.features.builtin import criteo_sparse_names

KINDS = ("dense", "sparse", "labels")
RAW = 2**31 + 5  # past the int32 range: a raw value, not a table row
NAMES = criteo_sparse_names()


@st.composite
def directories(draw: st.DrawFn) -> dict:
    # rows per day, non-empty first (Hypothesis starts from a list's first choice); a last day of 0 or
    # 1 rows, or training days without rows, are refused: an empty split
    rows = st.sampled_from([4, 5, 2, 3, 1, 0])
    days = draw(st.lists(rows, min_size=1, max_size=3)) + [draw(rows)]
    sparse_dtype = draw(st.sampled_from([np.int32, np.int64]))
    label_dtype = draw(st.sampled_from([np.int32, np.int64, np.float32]))
    seed = draw(st.integers(0, 2**16))
    top = draw(st.sampled_from([3, 1000]))
    damages = draw(st.lists(st.tuples(
        st.sampled_from(["nan", "inf", "label", "negative", "raw", "drop", "drop_day", "dtype", "shape", "garbage"]),
        st.integers(0, len(days) - 1), st.integers(0, 4), st.integers(0, 25), st.sampled_from(KINDS),
    ), max_size=2))
    modulo = draw(st.sampled_from([None, 1, 7, 40_000_000]))
    return {"days": days, "sparse_dtype": sparse_dtype, "label_dtype": label_dtype, "seed": seed, "top": top,
            "damages": damages, "modulo": modulo}


def _arrays(spec: dict) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(spec["seed"])
    return [{"dense": rng.normal(size=(n, 13)).astype(np.float32),
             "sparse": rng.integers(0, spec["top"], (n, 26)).astype(spec["sparse_dtype"]),
             "labels": rng.integers(0, 2, (n, 1)).astype(spec["label_dtype"])} for n in spec["days"]]


def _damage(days: list[dict], files: dict, spec: dict) -> None:
    """Applies the damages to the arrays (cells) or to the set of files (structure)."""
    for what, d, row, col, kind in spec["damages"]:
        a = days[d]
        n = len(a["labels"])
        if what in ("nan", "inf") and n:
            a["dense"][row % n, col % 13] = np.nan if what == "nan" else -np.inf
        elif what == "label" and n:
            a["labels"][row % n, 0] = 2
        elif what == "negative" and n:
            a["sparse"][row % n, col] = -3
        elif what == "raw" and n and a["sparse"].dtype == np.int64:
            a["sparse"][row % n, col] = RAW
        elif what == "drop":
            files[(d, kind)] = None
        elif what == "drop_day" and d < len(days) - 1:  # (without its last day a directory is another valid one)
            for k in KINDS:
                files[(d, k)] = None
        elif what == "dtype":
            files[(d, kind)] = a[kind].astype(np.float64 if kind != "dense" else np.int64)
        elif what == "shape":
            files[(d, kind)] = a[kind][:, :-1] if kind != "labels" else a[kind].reshape(-1)
        elif what == "garbage":
            files[(d, kind)] = b"\x93NUMPY\x01\x00garbage"


def _write(src: Path, days: list[dict], files: dict) -> None:
    src.mkdir(parents=True)
    for d, a in enumerate(days):
        for k in KINDS:
            content = files.get((d, k), a[k])
            if content is None:
                continue
            if isinstance(content, bytes):
                (src / f"day_{d}_{k}.npy").write_bytes(content)
            else:
                np.save(src / f"day_{d}_{k}.npy", content)


def _expected(days: list[dict], modulo: Optional[int]) -> dict[str, dict[str, np.ndarray]]:
    """The model: TorchRec's split; ids by Python's % on each value, or kept."""
    half = math.ceil(len(days[-1]["labels"]) / 2)
    parts = {"train": [(a, 0, None) for a in days[:-1]], "val": [(days[-1], 0, half)],
             "test": [(days[-1], half, None)]}
    out = {}
    for split, pieces in parts.items():
        dense = np.concatenate([a["dense"][lo:hi] for a, lo, hi in pieces])
        labels = np.concatenate([a["labels"][lo:hi].reshape(-1) for a, lo, hi in pieces]).astype(np.float32)
        sparse = [int(v) for a, lo, hi in pieces for v in a["sparse"][lo:hi].reshape(-1)]
        ids = np.array([v % modulo if modulo else v for v in sparse], np.int64).reshape(-1, 26)
        out[split] = {"dense": dense, "labels": labels, "ids": ids}
    return out


def _cell_really_bad(message: str, days: list[dict], modulo: Optional[int]) -> bool:
    m = re.search(r"day_(\d+)_(dense|sparse|labels)\.npy: row (\d+)", message)
    if not m:
        return False
    a, row = days[int(m.group(1))], int(m.group(3))
    if m.group(2) == "dense":
        return not np.isfinite(a["dense"][row]).all()
    if m.group(2) == "labels":
        return a["labels"][row, 0] not in (0, 1)
    c = NAMES.index(re.search(r"feature (cat_\d+)", message).group(1))
    return modulo is None and int(a["sparse"][row, c]) < 0


def _explained(message: str, days: list[dict], files: dict, spec: dict) -> bool:
    """Whether a refusal names something really wrong with the generated directory."""
    dropped = any(v is None for v in files.values())
    if "is missing" in message or "is incomplete" in message or "at least two" in message:
        return dropped
    if re.search(r"day_\d+_(dense|sparse|labels)\.npy: (dtype|shape|not a readable)", message):
        return any(v is not None for v in files.values())
    if "would be empty" in message:
        n = [len(a["labels"]) for a in days]
        return sum(n[:-1]) == 0 or n[-1] < 2
    if "raw values, not table rows" in message:
        c = NAMES.index(re.search(r"feature (cat_\d+)", message).group(1))
        return spec["modulo"] is None and max(int(a["sparse"][:, c].max(initial=0)) for a in days) >= 2**31 - 1
    return _cell_really_bad(message, days, spec["modulo"])


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


@given(directories())
def test_import_is_the_model_or_a_named_refusal(tmp_path: Path, spec: dict) -> None:
    root = tmp_path / uuid.uuid4().hex
    src, out = root / "src", root / "out"
    days, files = _arrays(spec), {}
    _damage(days, files, spec)
    _write(src, days, files)
    before = _snapshot(src)
    try:
        import_torchrec(ImportOptions(src, out, max_ind_range=spec["modulo"], progress=False))
    except DlrmError as e:
        message = str(e)
        assert e.exit_code == 2 and "\n" not in message, message
        assert _explained(message, days, files, spec), (message, spec)
        event("refused: " + re.sub(r"^.*?(dtype|shape|not a readable|missing|incomplete|at least two|would be empty|"
                                   r"raw values|not a finite|not 0 or 1|negative).*$", r"\1", message))
        assert not (out / layout.META).exists()
    else:
        assert not files, spec  # a damaged file is never imported
        event("imported")
        for split, want in _expected(days, spec["modulo"]).items():
            np.testing.assert_array_equal(np.load(layout.dense_file(out, split)), want["dense"])
            np.testing.assert_array_equal(np.load(layout.labels_file(out, split)), want["labels"])
            got = np.stack([np.load(layout.ids_file(out, split, f)) for f in NAMES], axis=1).reshape(-1, 26)
            np.testing.assert_array_equal(got, want["ids"])
        schema = layout.stored_schema(out)
        sizes = [schema.table_rows(f.table) for f in schema.sparse]
        if spec["modulo"]:
            assert sizes == [spec["modulo"]] * 26
        else:
            assert sizes == [max(int(a["sparse"][:, c].max(initial=0)) for a in days) + 1 for c in range(26)]
    assert _snapshot(src) == before
