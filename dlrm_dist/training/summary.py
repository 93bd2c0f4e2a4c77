"""The end-of-run summary: a JSON record and the lines printed for a person.

Under early stopping the record holds the best evaluation (``best``: its step, the metric
judged, its metrics when this process ran it, whether its checkpoint was kept), the last one
(``last``), why the run stopped early (``stopped_early``) and the test split's score
(``test``: which model, of which step). The ``eval_*`` keys stay the last evaluation's.
A warm-started run names its source (``warm_start``: the checkpoint directory and its step).
A run over day partitions with progressive validation lists each partition's next-day score
(``progressive``, metrics/progressive.py; a resumed run's list includes the earlier processes')
and their mean over the partitions after the first (``progressive_mean``); the console lines
end with the per-partition table.
"""

from __future__ import annotations

from typing import Any, Optional

from dlrm_dist.config.sections import Config
from dlrm_dist.distributed.env import DistEnv
from dlrm_dist.metrics.eval import METRIC_NAMES
from dlrm_dist.metrics.progressive import mean_after_first, table_lines
from dlrm_dist.training.trainer import TrainResult


def summary_record(cfg: Config, env: DistEnv, result: TrainResult) -> dict[str, Any]:
    """Machine-readable summary (written to run_dir/summary.json)."""
    final = result.final_eval.to_dict() if result.final_eval else {}
    return {
        "world_size": env.world_size,
        "backend": env.backend,
        "steps": len(result.losses),  # steps this process ran
        "step": result.step,  # the model's step (the checkpoint's, for an inference-only run)
        "inference_only": cfg.train.inference_only,
        "global_batch_size": cfg.train.global_batch_size,
        "first_loss": result.losses[0] if result.losses else None,
        "final_loss": result.losses[-1] if result.losses else None,
        **{f"eval_{name}": final.get(name) for name in METRIC_NAMES},
        "teacher_auc": result.teacher_auc,
        "samples_per_s": result.samples_per_s,
        "rank_step_ms": result.rank_step_ms,
        "a2a_bytes_per_sample": result.a2a_bytes_per_sample,
        "evals": [e.to_dict() for e in result.evals],
        "early_stop": cfg.train.early_stop.enabled,
        "best": best_record(result),
        "last": final or None,
        "stopped_early": result.stopped,
        "warm_start": result.warm_start.to_dict() if result.warm_start else None,
        "test": ({"model": result.test_model, **result.test.to_dict()} if result.test else None),
        "progressive": [dict(r) for r in result.progressive] if cfg.train.progressive_validation else None,
        "progressive_mean": mean_after_first(result.progressive),
    }


def best_record(result: TrainResult) -> Optional[dict[str, Any]]:
    """The best evaluation: step, metric, value, whether its checkpoint was kept, and its metrics."""
    if result.best is None:
        return None
    metrics = result.best_eval.metrics() if result.best_eval else {}
    return {"step": result.best.step, "metric": result.best.metric, "mode": result.best.mode,
            "value": result.best.value, "checkpoint_kept": result.best_kept, **metrics}


def _metrics_text(d: dict[str, Any]) -> str:
    return "  ".join(f"{n} {d[n]:.4f}" for n in METRIC_NAMES if isinstance(d.get(n), float))


def final_report(record: dict[str, Any]) -> str:
    """A few lines for the console."""
    auc = f"  eval AUC    {record['eval_auc']:.4f}"
    if record["teacher_auc"] is not None:
        auc += f"  (teacher's AUC {record['teacher_auc']:.4f}, gap {record['teacher_auc'] - record['eval_auc']:.4f})"
    if record.get("inference_only"):
        lines = [f"done: evaluated the checkpoint of step {record['step']} (inference only) on "
                 f"{record['world_size']} rank(s)"]
    else:
        lines = [f"done: {record['steps']} steps x {record['global_batch_size']} samples on {record['world_size']} "
                 f"rank(s)" + (f", stopped early at step {record['step']}" if record.get("stopped_early") else "")]
    if record.get("warm_start"):
        ws = record["warm_start"]
        lines.append(f"  warm start  from {ws['checkpoint']} (its step {ws['step']}; this run began at step 0)")
    if record["steps"]:
        lines.append(f"  loss        {record['first_loss']:.4f} -> {record['final_loss']:.4f}")
    lines += [auc, f"  NE          {record['eval_ne']:.4f}", f"  log-loss    {record['eval_logloss']:.4f}",
              f"  calibration {record['eval_calibration']:.4f}  (CTR {record['eval_ctr']:.4f})",
              f"  accuracy    {record['eval_accuracy']:.4f}"]
    lines += _selection_lines(record)
    if record["steps"]:
        lines.append(f"  throughput  {record['samples_per_s']:,.0f} samples/s  "
                     f"(per-rank step ms: {', '.join(f'{t:.1f}' for t in record['rank_step_ms'])})")
        if record.get("a2a_bytes_per_sample"):
            lines.append("  all-to-all bytes received per sample (measured): "
                         + ", ".join(f"{b:,.0f}" for b in record["a2a_bytes_per_sample"]))
    if record.get("progressive"):
        lines.append("  next-day scores (progressive validation: each partition before training on it):")
        lines += table_lines(record["progressive"], indent="    ")
    return "\n".join(lines)


def _selection_lines(record: dict[str, Any]) -> list[str]:
    """Early stopping's lines: why it stopped, best and last, and the test score."""
    best, last, test = record.get("best"), record.get("last"), record.get("test")
    lines = []
    if record.get("stopped_early"):
        lines.append(f"  early stop: {record['stopped_early']}")
    if best:
        kept = "" if best["checkpoint_kept"] else "  (not kept: no train.checkpoint_dir)"
        lines.append(f"  best (step {best['step']}): " + (_metrics_text(best) or f"{best['metric']} {best['value']:.4f}")
                     + kept)
        if last:
            lines.append(f"  last (step {last['step']}): {_metrics_text(last)}")
    if test:
        lines.append(f"  test ({test['model']}, step {test['step']}): {_metrics_text(test)}  "
                     f"({test['samples']:,} samples)")
    return lines
