"""Early stopping, epochs and the best model without a process group: the stopping rule, the
keep policy, epoch arithmetic, the defaults the data decides, which checkpoint dlrm-export
means, the end-of-run lines, --inference-only's step and the eval_split help."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest

from dlrm_dist.checkpoint import CheckpointError, Manifest, RunInfo
from dlrm_dist.checkpoint.manager import export_source, resolve_export_source
from dlrm_dist.checkpoint.manifest import BestMark
from dlrm_dist.checkpoint.store import publish, published, step_dir, step_of, tmp_dir, to_prune
from dlrm_dist.config import ConfigError, load_config
from dlrm_dist.config.loader import help_text
from dlrm_dist.metrics.eval import EvalResult
from dlrm_dist.training.early_stop import StopRule, rank0_value
from dlrm_dist.training.length import epoch_steps, resolve_length
from dlrm_dist.training.summary import final_report

INFO = RunInfo("adagrad", "sgd", [], {"train": {"steps": 10}})


# -- the stopping rule -------------------------------------------------------------------------
def _run(rule: StopRule, values: list[float]) -> list[tuple[bool, bool]]:
    return [(v.improved, v.stop) for v in (rule.observe(10 * (i + 1), x) for i, x in enumerate(values))]


def test_patience_counts_evaluations_without_an_improvement() -> None:
    rule = StopRule("auc", "max", patience=2)
    assert _run(rule, [0.70, 0.72, 0.71, 0.73, 0.73, 0.72]) == [
        (True, False), (True, False), (False, False), (True, False), (False, False), (False, True)]
    assert (rule.best.step, rule.best.value, rule.best.stale, rule.best.stopped) == (40, 0.73, 2, True)
    assert "best 0.7300 at step 40" in rule.reason()


def test_min_mode_and_min_delta() -> None:
    rule = StopRule("logloss", "min", patience=3, min_delta=0.01)
    # 0.495 is lower but not by more than 0.01: not an improvement; 0.48 is
    assert _run(rule, [0.50, 0.495, 0.48, 0.475, 0.479, 0.471]) == [
        (True, False), (False, False), (True, False), (False, False), (False, False), (False, True)]
    assert rule.best.step == 30
    assert load_config(["--train.early_stop.metric=ne"]).train.early_stop.direction == "min"
    assert load_config(["--train.early_stop.metric=ne", "--train.early_stop.mode=max"]).train.early_stop.direction == "max"


def test_nan_never_becomes_the_best() -> None:
    rule = StopRule("ne", "min", patience=2)
    assert _run(rule, [math.nan, 0.9, math.nan, math.inf]) == [(False, False), (True, False), (False, False),
                                                                (False, True)]
    assert rule.best.step == 20
    only_nan = StopRule("ne", "min", patience=1)
    assert _run(only_nan, [math.nan]) == [(False, True)] and only_nan.best is None
    assert "not a finite number" in only_nan.reason()


def test_a_resumed_rule_counts_on_and_ignores_another_metric() -> None:
    rule = StopRule("auc", "max", patience=3)
    rule.resume(BestMark(100, "auc", "max", 0.8, stale=2))
    assert _run(rule, [0.79]) == [(False, True)]  # the third evaluation without a gain
    other = StopRule("logloss", "min", patience=3)
    other.resume(BestMark(100, "auc", "max", 0.8, stale=2))
    assert other.best is None
    assert rank0_value(0.25, None) == 0.25  # without a process group: the value itself


def test_best_mark_in_the_manifest(tmp_path: Path) -> None:
    m = Manifest(step=30, world_size=2, tables={"t": (10, 8)}, info=INFO, best=BestMark(20, "auc", "max", 0.7, 1))
    m.write(tmp_path)
    assert Manifest.read(tmp_path).best == m.best
    assert Manifest.read(tmp_path).to_dict()["best"]["step"] == 20
    for bad in ({"step": -1, "metric": "auc", "mode": "max", "value": 0.5}, {"step": 1, "metric": "auc",
                "mode": "up", "value": 0.5}, {"step": 1, "metric": "auc", "mode": "max", "value": None}, [1]):
        d = json.loads((tmp_path / "manifest.json").read_text())
        d["best"] = bad
        (tmp_path / "manifest.json").write_text(json.dumps(d))
        with pytest.raises(CheckpointError, match="manifest is malformed.*best"):
            Manifest.read(tmp_path)


# -- the keep policy ---------------------------------------------------------------------------
def test_the_best_checkpoint_survives_keep_last() -> None:
    found = [Path(f"step_{s:08d}") for s in (10, 20, 30, 40)]
    assert [step_of(p) for p in to_prune(found, 1, {20})] == [10, 30]
    assert [step_of(p) for p in to_prune(found, 2, {40})] == [10, 20]  # the best among the newest: nothing extra
    assert to_prune(found, 0, set()) == [] and [step_of(p) for p in to_prune(found, 3, set())] == [10]


def _publish(root: Path, step: int, best: BestMark | None = None, keep_last: int = 1) -> None:
    tmp_dir(root, step).mkdir(parents=True)
    publish(root, Manifest(step, 1, {"t": (10, 8)}, INFO, best=best), keep_last)


def test_publish_prunes_all_but_the_newest_and_the_best(tmp_path: Path) -> None:
    _publish(tmp_path, 10, BestMark(10, "auc", "max", 0.7))
    _publish(tmp_path, 20, BestMark(10, "auc", "max", 0.7, 1))
    _publish(tmp_path, 30, BestMark(10, "auc", "max", 0.7, 2))
    assert [step_of(p) for p in published(tmp_path)] == [10, 30]
    _publish(tmp_path, 40, BestMark(40, "auc", "max", 0.8))  # a new best: the old one may go
    assert [step_of(p) for p in published(tmp_path)] == [40]


# -- which checkpoint dlrm-export means --------------------------------------------------------
def test_export_source_prefers_the_best_unless_a_step_is_named(tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    _publish(ckpt, 10, BestMark(10, "auc", "max", 0.7), keep_last=0)
    _publish(ckpt, 20, BestMark(10, "auc", "max", 0.7, 1), keep_last=0)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"train": {"checkpoint_dir": str(ckpt)}}))
    for where in (ckpt, run):
        source = export_source(where)
        assert (source.step, source.path) == (10, step_dir(ckpt, 10)) and "best evaluation (auc 0.7000" in source.why
        assert export_source(where, 20).step == 20 and "--step" in export_source(where, 20).why
    assert resolve_export_source(step_dir(ckpt, 20)) == step_dir(ckpt, 20)  # a checkpoint is itself
    with pytest.raises(CheckpointError, match="no checkpoint of step 15; it has steps 10, 20"):
        export_source(ckpt, 15)
    with pytest.raises(CheckpointError, match="is the checkpoint of step 20, not 10"):
        export_source(step_dir(ckpt, 20), 10)
    (run / "config.json").write_text(json.dumps({"train": {"checkpoint_dir": None}}))
    with pytest.raises(CheckpointError, match="wrote no checkpoints"):
        export_source(run)
    for damaged in ("{}", "not json", '{"train": 1}'):  # (the error names the file, not a NameError)
        (run / "config.json").write_text(damaged)
        with pytest.raises(CheckpointError, match="neither a checkpoint nor a checkpoint directory, and its "
                                                  "config.json does not name one"):
            export_source(run)


def test_export_source_without_a_best_is_the_newest(tmp_path: Path) -> None:
    _publish(tmp_path, 10, keep_last=0)
    _publish(tmp_path, 20, keep_last=0)
    source = export_source(tmp_path)
    assert source.step == 20 and "newest" in source.why and "no best" in source.why


def test_a_run_started_elsewhere_finds_its_relative_checkpoint_dir(tmp_path: Path, monkeypatch) -> None:
    """The README's run saves run_dir "runs/clicks" and checkpoint_dir "runs/clicks/ckpt", relative to where it
    started: exporting the run directory from anywhere else finds that checkpoint_dir under the start directory."""
    start = tmp_path / "work"
    _publish(start / "runs/clicks/ckpt", 10, BestMark(10, "auc", "max", 0.7))
    (start / "runs/clicks/config.json").write_text(json.dumps(
        {"train": {"run_dir": "runs/clicks", "checkpoint_dir": "runs/clicks/ckpt"}}))
    monkeypatch.chdir(tmp_path)  # not the start directory
    assert export_source(start / "runs/clicks").path == step_dir(start / "runs/clicks/ckpt", 10)


def test_a_deleted_best_checkpoint_is_named_not_replaced(tmp_path: Path) -> None:
    """summary.json names the best; when its checkpoint is gone (the newest manifests cannot know it), the run
    directory's export is refused naming the step, instead of exporting an older 'best'."""
    ckpt, run = tmp_path / "ckpt", tmp_path / "run"
    _publish(ckpt, 10, BestMark(10, "auc", "max", 0.7), keep_last=0)
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"train": {"checkpoint_dir": str(ckpt)}}))
    (run / "summary.json").write_text(json.dumps({"best": {"step": 20, "checkpoint_kept": True}}))
    with pytest.raises(CheckpointError, match="best evaluation at step 20 .* no longer holds that checkpoint"):
        export_source(run)
    assert export_source(run, 10).step == 10  # --step still chooses one


# -- epochs and the defaults the data decides --------------------------------------------------
def _data(train: int, val: int, test: int) -> SimpleNamespace:
    return SimpleNamespace(splits={s: SimpleNamespace(rows=n) for s, n in (("train", train), ("val", val),
                                                                           ("test", test))})


def test_epoch_arithmetic() -> None:
    steps, line = epoch_steps(3, 631_808, 512)
    assert steps == 3 * 1_234 and line == "epochs=3: 3 x 1,234 steps of 512 rows = 3,702 steps"
    steps, line = epoch_steps(2, 1000, 300)
    assert steps == 6 and "the last 100 of 1,000 rows make no full batch" in line
    with pytest.raises(ConfigError, match="fewer than one global batch"):
        epoch_steps(1, 100, 256)


def _cfg(*args: str):
    return load_config(["--data=columnar", "--data-dir=d", *args])


def test_resolve_length() -> None:
    cfg, lines = resolve_length(_cfg("--train.epochs=2", "--batch-size=100"), _data(1000, 100, 100))
    assert cfg.train.steps == 20 and cfg.train.epochs is None and cfg.train.early_stop.enabled
    assert lines[0].startswith("epochs=2: 2 x 10 steps") and "early stopping is on (the data has a val split" in lines[1]
    cfg, lines = resolve_length(_cfg("--steps=50"), _data(1000, 100, 100))  # a step count: no default stop
    assert (cfg.train.steps, cfg.train.early_stop.enabled, lines) == (50, False, [])
    cfg, _ = resolve_length(_cfg(), _data(1000, 0, 100))  # no val split
    assert (cfg.train.steps, cfg.train.early_stop.enabled) == (800, False)
    cfg, _ = resolve_length(_cfg("--train.early_stop.enabled=false"), _data(1000, 100, 100))
    assert not cfg.train.early_stop.enabled
    cfg, _ = resolve_length(_cfg("--data.eval_split=test"), _data(1000, 100, 100))
    assert not cfg.train.early_stop.enabled
    cfg, lines = resolve_length(_cfg("--train.eval_interval=0"), _data(1000, 100, 100))
    assert not cfg.train.early_stop.enabled and "eval_interval=0" in lines[0]
    with pytest.raises(ConfigError, match="would choose the model by its test score"):
        resolve_length(_cfg("--data.eval_split=test", "--train.early_stop.enabled=true"), _data(1000, 100, 100))
    cfg, _ = resolve_length(load_config(["--steps=5", "--train.early_stop.enabled"]), object())  # synthetic: asked
    assert cfg.train.early_stop.enabled and cfg.train.steps == 5


def test_epochs_refusals_name_the_keys() -> None:
    with pytest.raises(ConfigError, match="train.steps=5 and train.epochs=2 both say how long to train"):
        _cfg("--steps=5", "--train.epochs=2")
    with pytest.raises(ConfigError, match="train.epochs applies to data.source = columnar only.*no epoch"):
        load_config(["--train.epochs=2"])
    with pytest.raises(ConfigError, match="train.early_stop.enabled: is true, which needs evaluations"):
        load_config(["--train.early_stop.enabled", "--train.eval_interval=0"])
    with pytest.raises(ConfigError, match="train.early_stop.patience: must be an integer >= 1"):
        load_config(["--train.early_stop.patience=0"])


def test_early_stop_from_a_toml_sub_table(tmp_path: Path) -> None:
    f = tmp_path / "job.toml"
    f.write_text('[train]\nsteps = 10\n[train.early_stop]\nmetric = "logloss"\npatience = 5\nmin_delta = 0.001\n')
    es = load_config(["--config", str(f), "--train.early_stop.patience=4"]).train.early_stop
    assert (es.metric, es.patience, es.min_delta, es.direction) == ("logloss", 4, 0.001, "min")


# -- what a person reads -----------------------------------------------------------------------
def _eval(step: int, auc: float) -> dict:
    return EvalResult(step, 600, True, auc, 0.9, 1.0, 0.5, 0.7, 0.3).to_dict()


def _record(**kw) -> dict:
    last = _eval(400, 0.9241)
    return {"world_size": 2, "steps": 400, "step": 400, "global_batch_size": 512, "first_loss": 0.7,
            "final_loss": 0.4, **{f"eval_{k}": last[k] for k in ("auc", "ne", "logloss", "calibration", "accuracy",
                                                                   "ctr")},
            "teacher_auc": None, "samples_per_s": 1000.0, "rank_step_ms": [1.0, 1.0], "a2a_bytes_per_sample": [],
            "last": last, **kw}


def test_end_of_run_lines_name_best_last_and_test() -> None:
    best = {**_eval(100, 0.9433), "metric": "auc", "mode": "max", "value": 0.9433, "checkpoint_kept": True}
    text = final_report(_record(best=best, test={"model": "best", **_eval(100, 0.9401)},
                                stopped_early="auc has not improved by more than 0 for 3 evaluation(s)"))
    assert "stopped early at step 400" in text and "  early stop: auc has not improved" in text
    assert "  best (step 100): auc 0.9433" in text and "  last (step 400): auc 0.9241" in text
    assert "  test (best, step 100): auc 0.9401" in text


def test_inference_only_reports_the_checkpoints_step() -> None:
    """The trainer's inference path evaluates at the checkpoint's step (it said step 0)."""
    from dlrm_dist.training.trainer import Trainer

    trainer = Trainer.__new__(Trainer)
    trainer.cfg = load_config(["--inference-only", "--checkpoint=ck"])
    trainer.step, trainer.data = 0, object()
    trainer.checkpoints = SimpleNamespace(restore=lambda weights_only: 40 if weights_only else None)
    trainer.log = SimpleNamespace(start=lambda resumed: None)
    seen = []
    trainer.evaluate = lambda: seen.append(trainer.step) or EvalResult(trainer.step, 1, True, *[0.5] * 6)
    result = trainer._train()
    assert seen == [40] and result.step == 40 and result.evals[0].step == 40
    record = _record(steps=0, step=40, inference_only=True)
    assert final_report(record).startswith("done: evaluated the checkpoint of step 40 (inference only)")


def test_eval_split_help_says_it_applies_to_columnar_data() -> None:
    text = help_text()
    entry = text[text.index("--data.eval_split"):text.index("--data.shuffle")]
    assert "Any columnar directory" in entry and "schema's preprocessed" in entry and "Early stopping needs val" in entry
    assert "--train.early_stop.patience (default 3)" in text and "--train.epochs (default None)" in text
