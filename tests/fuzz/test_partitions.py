"""Fuzzing the partition-list syntax (data.partitions) and directories that grow by day.

1. Partition lists: texts built from numbers and ranges (in order or not, backwards, too large,
   with spaces) and free texts over digits, dashes, commas and a few foreign characters. The
   property: ``parse_partitions`` either returns exactly the numbers the list stands for (the
   generator's own expansion), strictly increasing, with ``format_partitions`` round-tripping
   them, or raises PartitionListError; the config loader either takes the text or refuses it
   with a one-line ConfigError naming data.partitions. Never another exception.
2. Appended directories: a first partition, then up to three operations (append the next day,
   append as a chosen number, append a file again as another partition, another file for a
   partition that exists, a rerun). The property, against a model of which partitions hold which
   file: each operation succeeds, is a no-op, or is refused with a one-line DlrmError naming the
   partition or file; meta.json lists exactly the model's partitions with their rows, the schema
   stays fitted on the first one, every file checks (layout.check_directory), no ``.partial``
   folder is left, a refused operation changes no file, and no operation writes outside the output
   directory.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
from hypothesis import event, given, strategies as st

from dlrm_dist.config.errors import ConfigError
from dlrm_dist.config.loader import load_config
from dlrm_dist.data.columnar import layout
from dlrm_dist.data.columnar.partitions import Options, append, new_dataset
from dlrm_dist.data.partition_list import MAX_PARTITION, MAX_RANGE, PartitionListError, format_partitions, parse_partitions
from dlrm_dist.errors import DlrmError
from tests.data import days

# -- 1. the partition-list syntax -------------------------------------------------------------------
_numbers = st.one_of(st.integers(0, 30), st.integers(MAX_PARTITION - 3, MAX_PARTITION + 3), st.just(20261201))
_items = st.tuples(_numbers, st.one_of(st.none(), _numbers))


@st.composite
def built_lists(draw: st.DrawFn) -> tuple[str, object]:
    """(text, the numbers it stands for or None when it breaks a rule) from drawn items."""
    items = draw(st.lists(_items, min_size=1, max_size=4))
    spaced = draw(st.booleans())
    texts, out, valid = [], [], True
    for lo, hi in items:
        texts.append(str(lo) if hi is None else (f"{lo} - {hi}" if spaced else f"{lo}-{hi}"))
        hi = lo if hi is None else hi
        if hi < lo or max(lo, hi) > MAX_PARTITION or hi - lo + 1 > MAX_RANGE or (out and lo <= out[-1]):
            valid = False
        elif valid:
            out.extend(range(lo, hi + 1))
    return (" , " if spaced else ",").join(texts), (out if valid else None)


_free = st.text(alphabet="0123456789-, \t١x", max_size=12)


def _check_config(text: str, ok: bool) -> None:
    args = ["--data.source=columnar", "--data.data_dir=d", f"--data.partitions={text}"]
    try:
        cfg = load_config(args)
    except ConfigError as e:
        message = str(e)
        assert not ok or not text.strip(), message  # (an empty value is "unset" on the command line)
        assert "data.partitions" in message and "\n" not in message
        return
    assert cfg.data.partitions in (text, None)
    assert ok or cfg.data.partitions is None


@given(st.one_of(built_lists(), _free.map(lambda t: (t, "free"))))
def test_partition_lists(case: tuple[str, object]) -> None:
    text, expected = case
    try:
        got = parse_partitions(text)
    except PartitionListError as e:
        event("refused")
        assert expected is None or expected == "free", (text, expected, e)
        assert "\n" not in str(e)
        _check_config(text, ok=False)
        return
    event("read")
    if expected != "free":
        assert got == expected, text
    assert got == sorted(set(got)) and all(0 <= n <= MAX_PARTITION for n in got)
    assert parse_partitions(format_partitions(got)) == got
    _check_config(text, ok=True)


# -- 2. directories that grow by day --------------------------------------------------------------------
OPS = ("numbered", "next", "again_as_other", "other_file", "rerun")


@given(first=st.integers(0, 4), ops=st.lists(st.tuples(st.sampled_from(OPS), st.integers(0, 6), st.integers(4, 9)),
                                              max_size=3))
def test_appended_directories(tmp_path: Path, first: int, ops: list[tuple[str, int, int]]) -> None:
    where = tmp_path / uuid.uuid4().hex
    where.mkdir()
    with pytest.MonkeyPatch.context() as m:
        m.setattr(os, "fsync", lambda fd: None)  # durability is not under test here; ordering is
        _grow(where, first, ops)


def _grow(where: Path, first: int, ops: list[tuple[str, int, int]]) -> None:
    out = where / "D"
    day1 = days.write_day(where, 1, 6, name="f0.csv")
    model: dict[int, tuple[Path, int]] = {first: (day1, 6)}  # partition -> (its file, rows)
    new_dataset(Options(days.schema(), [day1], out, partition=first, progress=False))
    last: tuple[Path, int] = (day1, first)
    for k, (op, number, rows) in enumerate(ops, start=1):
        before = days.snapshot(out)
        fresh = days.write_day(where, k + 1, rows, seed=k, name=f"f{k}.csv")
        path, asked = {
            "next": (fresh, None), "numbered": (fresh, number),
            "again_as_other": (model[min(model)][0], max(model) + 1),
            "other_file": (fresh, min(model)), "rerun": last,
        }[op]
        target = max(model) + 1 if asked is None else asked
        outside = _outside(where)
        try:
            r = append(Options(None, [path], out, partition=asked, append=True, progress=False))
        except DlrmError as e:
            message = str(e)
            event(f"refused: {op}")
            assert "\n" not in message and (f"partition {target}" in message or path.name in message), message
            same_file = [n for n, (p, _) in model.items() if p == path]
            assert (target in model and model[target][0] != path) or (same_file and target not in same_file), message
            assert days.snapshot(out) == before and _outside(where) == outside
            continue
        assert _outside(where) == outside  # never a write outside the output directory
        event(f"{'no-op' if r.up_to_date else 'appended'}: {op}")
        if r.up_to_date:
            assert model[target][0] == path and days.snapshot(out) == before
        else:
            assert target not in model and all(p != path for p, _ in model.values())
            model[target] = (path, rows)
        last = (path, target)
    meta, schema, splits = layout.check_directory(out)
    assert {n: e["rows"] for n, e in layout.partitions_of(meta).items()} == {n: m[1] for n, m in model.items()}
    assert meta["fitted_on"] == first and sorted(splits) == sorted(layout.partition_split(n) for n in model)
    assert {n: e["inputs"] for n, e in layout.partitions_of(meta).items()} == {n: [str(m[0].resolve())]
                                                                                 for n, m in model.items()}
    assert not list(out.glob("*.partial"))
    for n in model:
        assert '"complete": true' in (out / layout.partition_job(n)).read_text()


def _outside(where: Path) -> dict[str, bytes]:
    return {k: v for k, v in days.snapshot(where).items() if not k.startswith("D/") and k != "D"}


@pytest.mark.parametrize("text, numbers", [("1-7", [1, 2, 3, 4, 5, 6, 7]), ("1,3,5-7", [1, 3, 5, 6, 7]),
                                           (" 2 , 4 - 5 ", [2, 4, 5]), ("20261201", [20261201])])
def test_documented_lists(text: str, numbers: list[int]) -> None:
    assert parse_partitions(text) == numbers
