"""When progressive validation scores a partition, and whether a run does it at all.

A run over day partitions (``HasPartitions``, data/__init__.py) trains partition 1's batches,
then 2's, ...; progressive validation scores each partition with the model as it stands at the
partition's first training step (first epoch), before any step trains on it: its "next-day"
score. The trainer ends a training segment at every such step (training/trainer.py).

Which partitions are scored, and why:

- a partition is scored at its ``start_batch`` when the run reaches that step, also when the
  run ends there (``train.steps``, an early stop): the model trained on every day before it,
  scored on it, is the next-day figure even if this run trains no further;
- a partition with no full global batch (fewer rows than ``train.global_batch_size``) is not
  trained on and starts where the next one does: it is left out, with a log line;
- a resumed run does not score a partition again: the trainer scores a partition before it
  writes the checkpoint of that step (trainer.at_boundary), so a checkpoint of step ``k``
  comes after the scores of every partition starting at or before ``k``. Resumed at ``k``
  (> 0), the partitions starting after ``k`` are the ones still due; a fresh run (step 0) scores
  the one starting at 0. A killed run's score past its checkpoint is dropped from
  metrics.jsonl with the rest of its records past that step (metrics/log.py), so each
  partition's record stays single.

``resolve_progressive`` decides ``train.progressive_validation`` once the data is open: unset
means on exactly when the run trains over partitions; true with data without partitions is
refused by name.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

from dlrm_dist.config.errors import ConfigError
from dlrm_dist.config.sections import Config
from dlrm_dist.data import HasPartitions, PartitionSpan
from dlrm_dist.metrics.eval import EvalResult


def partition_spans(data: object, global_batch_size: int) -> list[PartitionSpan]:
    """The partitions ``data`` trains over, in training order ([] for data without partitions)."""
    return list(data.partition_spans(global_batch_size)) if isinstance(data, HasPartitions) else []


def score_record(span: PartitionSpan, result: EvalResult) -> dict[str, Any]:
    """The progressive record of ``span`` scored as ``result`` (metrics/progressive.py's fields)."""
    return {"partition": span.partition, "rows": span.rows, **result.to_dict()}


def resolve_progressive(cfg: Config, data: object) -> tuple[Config, list[str]]:
    """``cfg`` with ``train.progressive_validation`` decided (True/False), and the lines to log."""
    t = cfg.train
    spans = partition_spans(data, t.global_batch_size) if not t.inference_only else []
    on = t.progressive_validation
    if on and not spans:
        raise ConfigError("train.progressive_validation=true scores day partitions before training on them, but "
                          "this run trains over none: train over partitions of a columnar directory "
                          "(--data.partitions=1-7) or leave the option unset")
    if on is None:
        on = bool(spans)
    lines = []
    if on:
        lines.append(f"progressive validation is on: each of {len(spans)} partition(s) is scored before training on "
                     "it (--train.progressive_validation=false turns it off)")
    train = dataclasses.replace(t, progressive_validation=bool(on))
    return dataclasses.replace(cfg, train=train), lines


class ProgressiveSchedule:
    """The partitions still to score in this process, by the step they are scored at."""

    def __init__(self, spans: list[PartitionSpan], steps: int, resumed_step: int) -> None:
        self.skipped = [s for s in spans if s.batches == 0]
        reached = [s for s in spans if s.batches > 0 and s.start_batch <= steps]
        # Resumed at k > 0, the checkpoint of k was written after scoring the partition starting at k.
        self.pending = [s for s in reached if s.start_batch > resumed_step or (resumed_step == 0 and s.start_batch == 0)]

    def steps(self) -> list[int]:
        """The steps at which a partition is still due (segments end there)."""
        return sorted({s.start_batch for s in self.pending})

    def due(self, step: int) -> list[PartitionSpan]:
        """The partitions to score at ``step`` (at most one: each is a full batch or more); taken off the list."""
        now = [s for s in self.pending if s.start_batch == step]
        self.pending = [s for s in self.pending if s.start_batch != step]
        return now

    def skipped_line(self, global_batch_size: int) -> Optional[str]:
        """The log line naming partitions left out (no full global batch), if any."""
        if not self.skipped:
            return None
        names = ", ".join(f"{s.partition} ({s.rows:,} rows)" for s in self.skipped)
        return (f"progressive validation leaves out partition(s) {names}: fewer rows than one global batch of "
                f"{global_batch_size:,}, so no step trains on them")
