"""dlrm-report on what runs leave behind, and metrics.jsonl as a resumed run rewrites it.

Each case failed before: a cut last line refused the whole run, --json printed NaN, a line
that was not an object (or had no step, or a rank_step_ms of another length) was a
traceback, a resumed run's repeated steps were drawn twice, and a resumed writer kept the
killed run's lines past its checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dlrm_dist.cli.report_main import main as report
from dlrm_dist.metrics.log import MetricsLog
from dlrm_dist.metrics.runs import read_run


def _no_nan(token: str) -> None:
    raise ValueError(f"{token} is not JSON")


def _run_dir(tmp_path: Path, text: str, name: str = "run") -> Path:
    d = tmp_path / name
    d.mkdir()
    (d / "metrics.jsonl").write_text(text)
    return d


def _line(**record) -> str:
    return json.dumps(record) + "\n"


def _report_json(capsys, *args: str) -> tuple[int, list, str]:
    code = report([*args, "--json"])
    out, err = capsys.readouterr()
    return code, json.loads(out, parse_constant=_no_nan) if code == 0 else [], err


def test_a_cut_last_line_is_skipped_with_a_note(tmp_path: Path, capsys) -> None:
    d = _run_dir(tmp_path, _line(kind="train", step=10, loss=0.6) + '{"kind": "train", "step": 20, "lo')
    code, rows, err = _report_json(capsys, str(d))
    assert code == 0 and rows[0]["step"] == 10 and rows[0]["final_loss"] == 0.6
    assert f"dlrm-report: note: {d / 'metrics.jsonl'}: line 2 is cut short" in err
    assert rows[0]["notes"] == [f"{d / 'metrics.jsonl'}: line 2 is cut short (a run still writing, or killed "
                                "mid-write): skipped"]


def test_json_holds_null_for_nan_and_infinity(tmp_path: Path, capsys) -> None:
    d = _run_dir(tmp_path, '{"kind": "train", "step": 1, "loss": NaN, "rank_step_ms": [Infinity, 2.0]}\n'
                           '{"kind": "eval", "step": 1, "auc": 0.75, "ne": NaN}\n')
    code, rows, _ = _report_json(capsys, str(d))
    assert code == 0
    assert rows[0]["final_loss"] is None and rows[0]["ne"] is None and rows[0]["auc"] == 0.75
    assert rows[0]["max_rank_step_ms"] == 2.0  # the infinite rank has no finite mean


@pytest.mark.parametrize("line, says", [
    ("[1, 2]\n", "line 2 is an array, not a JSON object"),
    ('{"kind": "train", "loss": 1.0}\n', 'line 2 has no "step"'),
    ('{"kind": "train", "step": "7"}\n', 'line 2: "step" is "7", expected an integer >= 0'),
    ('{"step": 7}\n', 'line 2: "kind" is missing'),
    ('{"kind": "train", "step": 7, "loss": "low"}\n', 'line 2: "loss" is "low", expected a number or null'),
    ('{"kind": "train", "step": 7, "rank_step_ms": 3}\n', 'line 2: "rank_step_ms" is 3, expected a list'),
    ('{"kind": "eval", "step": 7, "auc": [0.5]}\n', 'line 2: "auc" is [0.5], expected a number or null'),
    ('{"kind": "train", "st\n', "line 2 is not JSON (Unterminated string"),  # cut, then more written after it
    (b'{"kind": "train", "step": 7, "x": "\xff"}\n', "line 2 is not UTF-8 text (byte 36)"),
])
def test_damage_is_named_by_file_line_and_field(tmp_path: Path, capsys, line, says) -> None:
    d = tmp_path / "run"
    d.mkdir()
    raw = line if isinstance(line, bytes) else line.encode()
    (d / "metrics.jsonl").write_bytes(_line(kind="train", step=1, loss=0.5).encode() + raw + b"\n")
    assert report([str(d), "--json"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"dlrm-report: error: {d / 'metrics.jsonl'}: {says}"), err


def test_a_resume_at_another_world_size_reports_the_last_ranks(tmp_path: Path, capsys) -> None:
    d = _run_dir(tmp_path, _line(kind="train", step=10, rank_step_ms=[10.0, 30.0])
                 + _line(kind="train", step=20, rank_step_ms=[4.0, 5.0, 6.0, 7.0])
                 + _line(kind="train", step=30, rank_step_ms=[6.0, 5.0, 4.0, 9.0]))
    code, rows, err = _report_json(capsys, str(d), "--out", str(tmp_path / "r.png"))
    assert code == 0 and rows[0]["max_rank_step_ms"] == 8.0  # rank 3 over the 4-rank lines; not 30
    assert "rank_step_ms holds 2 and 4 ranks in different lines" in err
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # published whole


def test_a_restart_from_a_checkpoint_supersedes_the_killed_runs_lines(tmp_path: Path, capsys) -> None:
    killed = [_line(kind="train", step=s, loss=1.0 / s) for s in (10, 20, 30, 40)] + [_line(kind="eval", step=40, auc=0.6)]
    resumed = [_line(kind="train", step=s, loss=2.0 / s) for s in (30, 40, 50)] + [_line(kind="eval", step=50, auc=0.7)]
    d = _run_dir(tmp_path, "".join(killed + resumed))
    run = read_run(d)
    assert [(r["step"], r["loss"]) for r in run.train] == [(10, 0.1), (20, 0.05), (30, 2 / 30), (40, 0.05), (50, 0.04)]
    assert [r["step"] for r in run.evals] == [50]
    assert run.notes == [f"{d / 'metrics.jsonl'}: line 6 logs step 30 again (a restart from a checkpoint): "
                         "3 earlier record(s) at step 30 or later dropped"]


def test_a_resumed_writer_drops_what_the_killed_run_wrote_past_its_checkpoint(tmp_path: Path) -> None:
    lines = [_line(kind="train", step=s, loss=0.5) for s in (10, 20, 30)] + [_line(kind="eval", step=20, auc=0.6)]
    (tmp_path / "metrics.jsonl").write_text("".join(lines) + '{"kind": "train", "st')
    log = MetricsLog(tmp_path, enabled=True, tensorboard=False)
    log.start(resumed=True, step=20)
    log.write("train", 30, loss=float("nan"), rank_step_ms=[1.0, float("inf")])
    text = (tmp_path / "metrics.jsonl").read_text()
    records = [json.loads(line, parse_constant=_no_nan) for line in text.splitlines()]  # strict JSON
    assert [(r["kind"], r["step"]) for r in records] == [("train", 10), ("train", 20), ("eval", 20), ("train", 30)]
    assert records[-1]["loss"] is None and records[-1]["rank_step_ms"] == [1.0, None]


def test_an_empty_metrics_file_is_a_run_with_no_records_yet(tmp_path: Path, capsys) -> None:
    code, rows, _ = _report_json(capsys, str(_run_dir(tmp_path, "")))
    assert code == 0 and rows[0]["step"] is None and rows[0]["auc"] is None


def _axis_of_rank_vs_plan(run_dir: Path):
    from dlrm_dist.metrics import plots

    fig = plots.draw([read_run(run_dir)])
    return next(ax for ax in fig.axes if ax.get_title().startswith("mean step per rank"))


def _plan_run(tmp_path: Path, capsys, calibrated: bool) -> Path:
    from dlrm_dist.cli.plan_main import main as plan
    from tests import calibration_helper as ch

    d = _run_dir(tmp_path, "".join(_line(kind="train", step=s, loss=0.5, samples_per_s=1000.0, rank_step_ms=[40.0, 44.0])
                                   for s in (1, 2)), name="calibrated" if calibrated else "plain")
    (tmp_path / "tables.json").write_text(json.dumps({"tables": [{"name": "t0", "rows": 1000, "dim": 16},
                                                                 {"name": "t1", "rows": 2000, "dim": 16}]}))
    argv = ["make", "--tables", str(tmp_path / "tables.json"), "--world-size", "2", "--device", "cpu",
            "-o", str(d / "plan.json")]
    if calibrated:
        (tmp_path / "machine.json").write_text(json.dumps(ch.calibration_data()))
        argv += ["--calibration", str(tmp_path / "machine.json")]
    assert plan(argv) == 0
    capsys.readouterr()
    return d


def test_rank_vs_plan_is_linear_with_the_predicted_step_when_calibrated(tmp_path: Path, capsys) -> None:
    d = _plan_run(tmp_path, capsys, calibrated=True)
    run = read_run(d)
    assert run.predicted_step_ms and all(p > e for p, e in zip(run.predicted_step_ms, run.estimated_rank_ms))
    ax = _axis_of_rank_vs_plan(d)
    assert ax.get_yscale() == "linear" and "predicted step (calibrated, linear)" in ax.get_title()
    fig = ax.figure  # the whole title on the figure (the longer one was cut off at its right edge)
    fig.canvas.draw()
    assert ax.title.get_window_extent().x1 <= fig.bbox.x1
    drawn = [line for line in ax.get_lines() if "predicted step" in line.get_label()]
    assert list(drawn[0].get_ydata()) == pytest.approx(run.predicted_step_ms)
    code, rows, _ = _report_json(capsys, str(d))
    assert code == 0 and rows[0]["predicted_step_ms"] == pytest.approx(max(run.predicted_step_ms))


def test_rank_vs_plan_stays_log_for_an_uncalibrated_embedding_estimate(tmp_path: Path, capsys) -> None:
    d = _plan_run(tmp_path, capsys, calibrated=False)
    assert read_run(d).predicted_step_ms is None
    ax = _axis_of_rank_vs_plan(d)
    assert ax.get_yscale() == "log" and "estimate (log)" in ax.get_title()
