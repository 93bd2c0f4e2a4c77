"""Metrics: evaluation (AUC, log-loss across ranks), the JSONL log, throughput."""

from dlrm_dist.metrics.eval import EvalMetrics
from dlrm_dist.metrics.log import MetricsLog

__all__ = ["EvalMetrics", "MetricsLog"]
