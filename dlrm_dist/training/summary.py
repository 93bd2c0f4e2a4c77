"""The end-of-run summary: a JSON record and the lines printed for a person."""

from __future__ import annotations

from typing import Any

from dlrm_dist.config.sections import Config
from dlrm_dist.distributed.env import DistEnv
from dlrm_dist.metrics.eval import METRIC_NAMES
from dlrm_dist.training.trainer import TrainResult


def summary_record(cfg: Config, env: DistEnv, result: TrainResult) -> dict[str, Any]:
    """Machine-readable summary (written to run_dir/summary.json)."""
    final = result.final_eval.to_dict() if result.final_eval else {}
    return {
        "world_size": env.world_size,
        "backend": env.backend,
        "steps": len(result.losses),
        "global_batch_size": cfg.train.global_batch_size,
        "first_loss": result.losses[0] if result.losses else None,
        "final_loss": result.losses[-1] if result.losses else None,
        **{f"eval_{name}": final.get(name) for name in METRIC_NAMES},
        "teacher_auc": result.teacher_auc,
        "samples_per_s": result.samples_per_s,
        "rank_step_ms": result.rank_step_ms,
        "a2a_bytes_per_sample": result.a2a_bytes_per_sample,
        "evals": [e.to_dict() for e in result.evals],
    }


def final_report(record: dict[str, Any]) -> str:
    """A few lines for the console."""
    auc = f"  eval AUC    {record['eval_auc']:.4f}"
    if record["teacher_auc"] is not None:
        auc += f"  (teacher's AUC {record['teacher_auc']:.4f}, gap {record['teacher_auc'] - record['eval_auc']:.4f})"
    lines = [f"done: {record['steps']} steps x {record['global_batch_size']} samples on {record['world_size']} rank(s)"]
    if record["steps"]:
        lines.append(f"  loss        {record['first_loss']:.4f} -> {record['final_loss']:.4f}")
    lines += [auc, f"  NE          {record['eval_ne']:.4f}", f"  log-loss    {record['eval_logloss']:.4f}",
              f"  calibration {record['eval_calibration']:.4f}  (CTR {record['eval_ctr']:.4f})",
              f"  accuracy    {record['eval_accuracy']:.4f}"]
    if record["steps"]:
        lines.append(f"  throughput  {record['samples_per_s']:,.0f} samples/s  "
                     f"(per-rank step ms: {', '.join(f'{t:.1f}' for t in record['rank_step_ms'])})")
        if record.get("a2a_bytes_per_sample"):
            lines.append("  all-to-all bytes received per sample (measured): "
                         + ", ".join(f"{b:,.0f}" for b in record["a2a_bytes_per_sample"]))
    return "\n".join(lines)
