"""Progressive (next-day) validation without a process group: which partitions a run scores
(fresh and resumed), the switch, epochs over partitions, the records read back, the summary's
list, mean and table, and what dlrm-report shows (text, --json, HTML, panels).

The trainer itself, on a partitioned dataset, is tested in tests/unit/test_progressive_run.py.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from dlrm_dist.cli.report_main import main as report
from dlrm_dist.config import ConfigError, load_config
from dlrm_dist.data import PartitionSpan
from dlrm_dist.metrics.eval import EvalResult
from dlrm_dist.metrics.log import MetricsLog
from dlrm_dist.metrics.progressive import mean_after_first, table_lines
from dlrm_dist.metrics.runs import read_run
from dlrm_dist.training.length import resolve_length
from dlrm_dist.training.progressive import ProgressiveSchedule, resolve_progressive, score_record
from dlrm_dist.training.summary import final_report, summary_record
from dlrm_dist.training.trainer import TrainResult


def _spans(*batches: int, gbs: int = 10) -> list[PartitionSpan]:
    """Partitions 1, 2, ... of ``batches[i]`` full batches (plus 3 rows each) in training order."""
    out, start = [], 0
    for i, b in enumerate(batches):
        out.append(PartitionSpan(i + 1, start, b, b * gbs + 3, f"partition_{i + 1}"))
        start += b
    return out


class Days:
    """A dataset with the HasPartitions capability and no train/val/test splits of its own."""

    def __init__(self, spans: list[PartitionSpan]) -> None:
        self.spans = spans
        self.splits = {"train": SimpleNamespace(rows=sum(s.rows for s in spans))}

    def partition_spans(self, global_batch_size: int) -> list[PartitionSpan]:
        return self.spans


def _record(partition: int, step: int, auc: float, ne: float = 0.9, logloss: float = 0.5, rows: int = 100) -> dict:
    result = EvalResult(step=step, samples=rows, auc_exact=True, auc=auc, ne=ne, calibration=1.0, logloss=logloss,
                        accuracy=0.8, ctr=0.2)
    return score_record(PartitionSpan(partition, step, 1, rows, f"partition_{partition}"), result)


# -- which partitions are scored, when -----------------------------------------------------------
def test_a_fresh_run_scores_each_partition_it_reaches_at_its_first_step() -> None:
    spans = _spans(3, 3, 0, 3, 2)  # partition 3 has no full batch: it starts where 4 does
    schedule = ProgressiveSchedule(spans, steps=9, resumed_step=0)
    # partition 4 starts at 6, 5 at 9 == train.steps (scored: the model trained on days 1-4), none beyond
    assert schedule.steps() == [0, 3, 6, 9]
    assert [s.partition for s in schedule.due(0)] == [1] and schedule.due(0) == []  # taken off the list
    assert [s.partition for s in schedule.due(6)] == [4]
    assert "partition(s) 3 (3 rows): fewer rows than one global batch of 10" in schedule.skipped_line(10)
    assert ProgressiveSchedule(spans, steps=5, resumed_step=0).steps() == [0, 3]  # 4 and 5 are never reached


@pytest.mark.parametrize("resumed, due", [(3, [6, 9]), (4, [6, 9]), (6, [9]), (9, [])])
def test_a_resumed_run_does_not_score_a_partition_again(resumed: int, due: list[int]) -> None:
    # A checkpoint of step k is written after the partition starting at k was scored (trainer.at_boundary).
    assert ProgressiveSchedule(_spans(3, 3, 3, 3), steps=12, resumed_step=resumed).steps() == due


def test_the_switch_follows_the_data_and_true_is_refused_without_partitions() -> None:
    days = Days(_spans(2, 2))
    cfg, lines = resolve_progressive(load_config([]), days)
    assert cfg.train.progressive_validation is True and "each of 2 partition(s)" in lines[0]
    off, lines = resolve_progressive(load_config(["--train.progressive_validation=false"]), days)
    assert off.train.progressive_validation is False and lines == []
    plain, _ = resolve_progressive(load_config([]), object())  # synthetic data: no partitions
    assert plain.train.progressive_validation is False
    with pytest.raises(ConfigError, match=r"train.progressive_validation=true .* trains over none: .*"
                                          r"--data.partitions=1-7"):
        resolve_progressive(load_config(["--train.progressive_validation=true"]), Days([]))
    with pytest.raises(ConfigError, match=r"train.progressive_validation: is true.*inference_only = true"):
        load_config(["--train.progressive_validation=true", "--train.inference_only=true", "--train.checkpoint=c"])


def test_epochs_over_partitions_count_each_partitions_full_batches() -> None:
    days = Days([PartitionSpan(1, 0, 2, 27, "partition_1"), PartitionSpan(2, 2, 3, 39, "partition_2"),
                 PartitionSpan(3, 5, 1, 19, "partition_3")])
    cfg, lines = resolve_length(load_config(["--data=columnar", "--data-dir=d", "--train.epochs=2", "--train.global_batch_size=10"]), days)
    # 85 rows would make 8 batches as one split; each partition's own last partial batch is left out: 6
    assert cfg.train.steps == 12
    assert lines[0].startswith("epochs=2: 2 x 6 steps of 10 rows over partitions 1, 2, 3 = 12 steps")
    assert "25 of 85 rows" in lines[0]
    with pytest.raises(ConfigError, match=r"train.epochs=1: partitions 1 have 7 rows.*lower the batch size"):
        resolve_length(load_config(["--data=columnar", "--data-dir=d", "--train.epochs=1", "--train.global_batch_size=10"]),
                       Days([PartitionSpan(1, 0, 0, 7, "partition_1")]))


# -- records, summary and table ------------------------------------------------------------------
def test_the_mean_leaves_out_the_first_partition_and_non_finite_values() -> None:
    records = [_record(2, 4, 0.7, ne=float("nan")), _record(1, 0, 0.5), _record(3, 8, 0.8, ne=0.8)]
    mean = mean_after_first(records)
    assert mean["partitions"] == [2, 3]  # by step: partition 1 (step 0) is the first
    assert mean["auc"] == pytest.approx(0.75) and mean["ne"] == pytest.approx(0.8) and mean["logloss"] == 0.5
    assert mean_after_first(records[1:2]) is None and table_lines([]) == []
    lines = table_lines(records)
    assert [line.split()[0] for line in lines[1:4]] == ["1", "2", "3"]
    assert lines[2].split()[2:] == ["100", "0.7000", "-", "0.5000"]
    assert lines[-1].split()[-3:] == ["0.7500", "0.8000", "0.5000"]


def test_the_summary_lists_the_scores_and_the_end_of_run_lines_show_the_table() -> None:
    cfg = load_config(["--train.steps=8", "--train.progressive_validation=false"])
    env = SimpleNamespace(world_size=1, backend="gloo")
    last = EvalResult(step=8, samples=10, auc_exact=True, auc=0.8, ne=0.9, calibration=1.0, logloss=0.5,
                      accuracy=0.8, ctr=0.2)
    result = TrainResult(losses=[0.7, 0.6], evals=[last], step=8,
                         progressive=[_record(1, 0, 0.5), _record(2, 4, 0.7), _record(3, 8, 0.9)])
    assert summary_record(cfg, env, result)["progressive"] is None  # off: no list (not an empty one)
    cfg = load_config(["--train.steps=8"])
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, progressive_validation=True))
    record = summary_record(cfg, env, result)
    assert [(r["partition"], r["step"], r["rows"], r["auc"]) for r in record["progressive"]] == [
        (1, 0, 100, 0.5), (2, 4, 100, 0.7), (3, 8, 100, 0.9)]
    assert record["progressive_mean"]["auc"] == pytest.approx(0.8) and record["progressive_mean"]["partitions"] == [2, 3]
    text = final_report(record)
    assert "next-day scores (progressive validation: each partition before training on it):" in text
    table = text.split("next-day scores")[1].splitlines()[1:]
    assert table[0].split() == ["partition", "step", "rows", "auc", "ne", "logloss"]
    assert table[2].split()[:4] == ["2", "4", "100", "0.7000"] and table[-1].split()[-3] == "0.8000"


def _progressive_run(tmp_path: Path, name: str, aucs: list[float]) -> Path:
    d = tmp_path / name
    log = MetricsLog(d, enabled=True, tensorboard=False)
    log.start(resumed=False)
    log.write("train", 1, loss=0.6, samples_per_s=100.0)
    for i, auc in enumerate(aucs):
        rec = _record(i + 1, 4 * i, auc)
        log.write("progressive", rec.pop("step"), **rec)
    log.write("eval", 4 * len(aucs), auc=0.8, ne=0.9, logloss=0.5)
    log.close()
    return d


def test_report_shows_next_day_auc_per_partition(tmp_path: Path, capsys) -> None:
    a, b = _progressive_run(tmp_path, "a", [0.5, 0.7, 0.8]), _progressive_run(tmp_path, "b", [0.5, 0.6])
    assert [r["partition"] for r in read_run(a).progressive] == [1, 2, 3]
    assert report([str(a), str(b), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["next_day_auc"] == pytest.approx(0.75) and rows[1]["next_day_auc"] == pytest.approx(0.6)
    assert [(p["partition"], p["step"], p["auc"]) for p in rows[0]["progressive"]] == [(1, 0, 0.5), (2, 4, 0.7),
                                                                                       (3, 8, 0.8)]
    out = tmp_path / "r.html"
    assert report([str(a), str(b), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    table = text.split("next-day AUC by partition (each scored before training on it):\n")[1].splitlines()
    assert table[0].split() == ["partition", "a", "next-day", "AUC", "b", "next-day", "AUC"]
    assert [line.split() for line in table[1:]] == [["1", "0.5000", "0.5000"], ["2", "0.7000", "0.6000"],
                                                   ["3", "0.8000", "-"]]
    assert "next_day_auc" in text.splitlines()[0]
    page = out.read_text()
    assert "Next-day AUC by partition" in page and "<td>3</td><td>0.8000</td><td></td>" in page

    from dlrm_dist.metrics import plots

    axes = plots.draw([read_run(a), read_run(b)]).axes
    assert [ax.get_title() for ax in axes[-3:]] == ["next-day AUC by partition",
                                                    "next-day NE by partition (lower is better)",
                                                    "next-day log-loss by partition"]
    assert [list(line.get_xdata()) for line in axes[-3].get_lines()] == [[1, 2, 3], [1, 2]]
    assert [list(line.get_ydata()) for line in axes[-3].get_lines()] == [[0.5, 0.7, 0.8], [0.5, 0.6]]
    assert len(plots.draw([read_run(_run_without(tmp_path))]).axes) == 6  # no partitions: the usual panels


def _run_without(tmp_path: Path) -> Path:
    d = tmp_path / "plain"
    d.mkdir()
    (d / "metrics.jsonl").write_text(json.dumps({"kind": "train", "step": 1, "loss": 0.5}) + "\n")
    return d


@pytest.mark.parametrize("record, says", [
    ({"kind": "progressive", "step": 3, "auc": 0.7}, r'line 1: "partition" is missing, expected the partition'),
    ({"kind": "progressive", "step": 3, "partition": "2"}, r'line 1: "partition" is "2", expected'),
    ({"kind": "progressive", "step": 3, "partition": 2, "auc": "high"}, r'line 1: "auc" is "high", expected a number'),
])
def test_a_damaged_progressive_record_is_named(tmp_path: Path, capsys, record: dict, says: str) -> None:
    d = tmp_path / "run"
    d.mkdir()
    (d / "metrics.jsonl").write_text(json.dumps(record) + "\n")
    assert report([str(d)]) == 2
    assert "dlrm-report: error: " in capsys.readouterr().err
    with pytest.raises(Exception, match=says):
        read_run(d)


def test_the_series_by_partition_is_its_own_tensorboard_run(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    log = MetricsLog(tmp_path, enabled=True)
    log.start(resumed=False)
    for partition, auc in ((1, 0.5), (2, 0.7)):
        log.write("progressive", 4 * partition, partition=partition, auc=auc)
        log.write_series("progressive", partition, auc=auc, ne=float("nan"))
    log.close()
    series = EventAccumulator(str(tmp_path / "tensorboard" / "progressive"))
    series.Reload()
    assert [(e.step, round(e.value, 4)) for e in series.Scalars("auc")] == [(1, 0.5), (2, 0.7)]
    assert "ne" not in series.Tags()["scalars"]  # not finite: not drawn
    main = EventAccumulator(str(tmp_path / "tensorboard"))
    main.Reload()
    assert [e.step for e in main.Scalars("progressive/auc")] == [4, 8]  # also by step in the main run
    assert [r["partition"] for r in log.records("progressive")] == [1, 2]


def test_a_resumed_log_keeps_the_tensorboard_events_of_its_checkpoint_step(tmp_path: Path) -> None:
    """The JSONL keeps the records at the resumed step (written before its checkpoint, not written
    again); TensorBoard kept them too only from purge_step = step + 1 (it purged step 4's eval)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    log = MetricsLog(tmp_path, enabled=True)
    log.start(resumed=False)
    for step in (2, 4, 6):  # 6: past the checkpoint of step 4, written by a process killed after it
        log.write("eval", step, auc=step / 10)
    log.close()
    resumed = MetricsLog(tmp_path, enabled=True)
    resumed.start(resumed=True, step=4)
    resumed.write("eval", 6, auc=0.65)
    resumed.close()
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [(e.step, round(e.value, 4)) for e in events.Scalars("eval/auc")] == [(2, 0.2), (4, 0.4), (6, 0.65)]
    assert [(r["step"], r["auc"]) for r in resumed.records("eval")] == [(2, 0.2), (4, 0.4), (6, 0.65)]
