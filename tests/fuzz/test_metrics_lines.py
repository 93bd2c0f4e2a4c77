"""Generated metrics.jsonl files through dlrm-report, in-process.

Files hold valid train, eval and progressive (next-day, by partition) records (NaN/inf values, unicode fields, duplicate and
decreasing steps, rank_step_ms of varying length), damaged lines (not objects, no step, a
step or metric of the wrong type, a cut line followed by more), blank lines, a cut last line,
or nothing. Property: dlrm-report either exits 0 with strict JSON (no NaN) whose figures
match an independent reading of the valid lines below, or exits 2 with one line naming the
file and the first damaged line; never a traceback.

The independent reading: a cut last line is skipped; a record whose step does not exceed
an earlier one of its kind restarts there (earlier records at that step or later dropped);
figures come from the last eval and the last train record left; per-rank step times from
the train records with as many ranks as the last one, finite values averaged; next-day AUC
is the mean of the finite AUCs of the progressive records left after the first.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import math
from pathlib import Path
from typing import Any, Optional

from hypothesis import given, settings
from hypothesis import strategies as st

from dlrm_dist.cli.report_main import main as report

METRICS = ("auc", "ne", "calibration", "logloss", "accuracy", "ctr")
_dirs = itertools.count()

numbers = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**6, 10**6))
times = st.one_of(st.floats(0, 1e6), st.sampled_from([math.nan, math.inf, -math.inf]))
steps = st.integers(0, 40)
texts = st.text(max_size=8)  # unicode, quotes, control characters: json.dumps escapes what it must


@st.composite
def train_record(draw, ranks: int) -> dict[str, Any]:
    record = {"kind": "train", "step": draw(steps), "loss": draw(numbers), "samples_per_s": draw(numbers)}
    if draw(st.booleans()):
        width = ranks if draw(st.integers(0, 3)) else draw(st.integers(1, 4))  # mostly one world size
        record["rank_step_ms"] = draw(st.lists(times, min_size=width, max_size=width))
    if draw(st.booleans()):
        record[draw(texts)] = draw(texts)  # a field the report does not read
    return record


@st.composite
def eval_record(draw) -> dict[str, Any]:
    names = draw(st.lists(st.sampled_from(METRICS), unique=True))
    return {"kind": "eval", "step": draw(steps), **{n: draw(st.one_of(numbers, st.none())) for n in names}}


@st.composite
def progressive_record(draw) -> dict[str, Any]:
    names = draw(st.lists(st.sampled_from(METRICS + ("rows", "samples")), unique=True))
    return {"kind": "progressive", "step": draw(steps), "partition": draw(st.integers(0, 10)),
            **{n: draw(st.one_of(numbers, st.none())) for n in names}}


damaged = st.sampled_from([
    "[1, 2]", '"a string"', "17", "null", '{"kind": "train"}', '{"kind": "eval", "step": -1}',
    '{"kind": "train", "step": 2.0}', '{"kind": "train", "step": true}', '{"step": 3}', '{"kind": 5, "step": 3}',
    '{"kind": "train", "step": 3, "loss": "0.5"}', '{"kind": "train", "step": 3, "rank_step_ms": {"0": 1}}',
    '{"kind": "train", "step": 3, "rank_step_ms": ["1"]}', '{"kind": "eval", "step": 3, "auc": [1]}',
    '{"kind": "progressive", "step": 3, "auc": 0.5}', '{"kind": "progressive", "step": 3, "partition": "1"}',
    '{"kind": "progressive", "step": 3, "partition": 1, "ne": "x"}', '{"kind": "progressive", "step": 3, "partition": false}',
    '{"kind": "train", "st', "not json at all", "{\"kind\": \"tr\u00e9in\", \"step\": 1, \"x\": NaN}",
])  # the last one is valid: an unknown kind is kept and ignored


@st.composite
def metrics_file(draw, allow_damage: bool = True) -> tuple[list[str], bool]:
    """The file's lines (without newlines) and whether the last one is cut short."""
    ranks = draw(st.integers(1, 4))
    kinds = st.one_of(train_record(ranks), eval_record(), progressive_record())
    entries = draw(st.lists(st.one_of(kinds, damaged) if allow_damage else kinds, max_size=12))
    lines = [e if isinstance(e, str) else json.dumps(e, ensure_ascii=draw(st.booleans())) for e in entries]
    if lines and draw(st.booleans()):
        lines.insert(draw(st.integers(0, len(lines))), "  ")  # blank lines are skipped
    cut = bool(lines) and lines[-1].startswith("{") and lines[-1].strip().endswith("}") and draw(st.booleans())
    if cut:  # a record cut anywhere: never valid JSON, its closing brace comes last
        lines[-1] = lines[-1][: draw(st.integers(1, len(lines[-1]) - 1))]
    return lines, cut


# -- the independent reading -------------------------------------------------------------------
def _first_damage(lines: list[str], cut: bool) -> Optional[int]:
    """The number of the first line that is not a valid record, ignoring a cut last line."""
    for number, line in enumerate(lines, start=1):
        if not line.strip() or (cut and number == len(lines)):
            continue
        try:
            value = json.loads(line)
        except ValueError:
            return number
        ok = (isinstance(value, dict) and type(value.get("step")) is int and value["step"] >= 0
              and isinstance(value.get("kind"), str))
        if ok and value["kind"] == "train":
            ok = all(value.get(n) is None or type(value[n]) in (int, float) for n in ("loss", "samples_per_s"))
            t = value.get("rank_step_ms")
            ok = ok and (t is None or (isinstance(t, list) and all(x is None or type(x) in (int, float) for x in t)))
        if ok and value["kind"] == "eval":
            ok = all(value.get(n) is None or type(value[n]) in (int, float) for n in METRICS + ("samples",))
        if ok and value["kind"] == "progressive":
            ok = type(value.get("partition")) is int and all(
                value.get(n) is None or type(value[n]) in (int, float) for n in METRICS + ("samples", "rows"))
        if not ok:
            return number
    return None


def _finite(x: Any) -> Optional[float]:
    return x if type(x) in (int, float) and math.isfinite(x) else None


def expected_row(lines: list[str], cut: bool) -> dict[str, Any]:
    records = [json.loads(line) for n, line in enumerate(lines, 1) if line.strip() and not (cut and n == len(lines))]
    kept: list[dict[str, Any]] = []
    for r in records:
        if any(k["kind"] == r["kind"] and k["step"] >= r["step"] for k in kept):
            kept = [k for k in kept if k["step"] < r["step"]]
        kept.append(r)
    train = [r for r in kept if r["kind"] == "train"]
    evals = [r for r in kept if r["kind"] == "eval"]
    last_train, final = (train or [{}])[-1], (evals or [{}])[-1]
    rows = [r["rank_step_ms"] for r in train if r.get("rank_step_ms")]
    means = []
    for rank in range(len(rows[-1]) if rows else 0):
        column = [_finite(row[rank]) for row in rows if len(row) == len(rows[-1])]
        column = [x for x in column if x is not None]
        means.append(sum(column) / len(column) if column else None)
    means = [m for m in means if m is not None and math.isfinite(m)]
    progressive = [r for r in kept if r["kind"] == "progressive"]
    later = [_finite(r.get("auc")) for r in progressive[1:]]
    later = [x for x in later if x is not None]
    return {
        "step": final.get("step", last_train.get("step")),
        **{n: _finite(final.get(n)) for n in METRICS},
        "final_loss": _finite(last_train.get("loss")),
        "samples_per_s": _finite(last_train.get("samples_per_s")),
        "max_rank_step_ms": max(means) if means else None,
        "next_day_auc": sum(later) / len(later) if later else None,
        "progressive": [{k: _finite(r.get(k)) if k not in ("partition", "step") else r[k]
                         for k in ("partition", "step", "rows", "auc", "ne", "logloss")} for r in progressive],
    }


def _run(*args: Any) -> tuple[int, str, str]:
    """dlrm-report's main in this process, its stdout and stderr captured (capsys is per test, not per example)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = report([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


def _no_nan(token: str) -> None:
    raise AssertionError(f"dlrm-report printed {token}: not JSON")


def _write(tmp_path: Path, lines: list[str], cut: bool) -> Path:
    d = tmp_path / f"run{next(_dirs)}"
    d.mkdir()
    text = "\n".join(lines) + ("" if cut or not lines else "\n")
    (d / "metrics.jsonl").write_text(text, encoding="utf-8")
    return d


def _check(d: Path, lines: list[str], cut: bool, code: int, out: str, err: str) -> None:
    damage = _first_damage(lines, cut)
    if damage is not None:
        assert code == 2 and out == "", (code, out, err)
        assert len(err.strip().splitlines()) == 1, err
        assert err.startswith(f"dlrm-report: error: {d / 'metrics.jsonl'}: line {damage}"), (damage, err)
        return
    assert code == 0, err
    assert "Traceback" not in err
    row = json.loads(out, parse_constant=_no_nan)[0]
    want = expected_row(lines, cut)
    assert {k: row[k] for k in want} == want
    assert any("cut short" in n for n in row["notes"]) == cut


@given(metrics_file())
def test_report_json_is_valid_or_names_the_damaged_line(tmp_path_factory, case) -> None:
    lines, cut = case
    d = _write(tmp_path_factory.mktemp("lines"), lines, cut)
    code, out, err = _run(d, "--json")
    _check(d, lines, cut, code, out, err)


@settings(max_examples=5)  # matplotlib draws each: keep the PNG cases few
@given(metrics_file(allow_damage=False))
def test_report_png_draws_whatever_valid_lines_hold(tmp_path_factory, case) -> None:
    lines, cut = case
    tmp = tmp_path_factory.mktemp("png")
    d = _write(tmp, lines, cut)
    code, out, err = _run(d, "--json", "--out", str(tmp / "x.png"))
    _check(d, lines, cut, code, out, err)
    assert (tmp / "x.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
