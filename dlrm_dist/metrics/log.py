"""The run's metrics, written by rank 0: ``metrics.jsonl`` and TensorBoard event files.

Every record goes to both: a JSON line ``{"kind": ..., "step": ..., ...}`` and, for each
number in it, a TensorBoard scalar ``<kind>/<name>`` (a list such as per-rank step times
becomes ``<kind>/<name>/rank<i>``) under ``run_dir/tensorboard``. The lines are strict JSON:
a non-finite number is written as null. A resumed run first drops the lines a killed run
wrote past the checkpoint it resumes from (and a line it left cut short), as TensorBoard
purges its events. ``read_metrics`` reads the JSONL back (metrics/records.py: dlrm-report, tests).

A series indexed by something other than the step (progressive validation's scores by
partition) goes to its own TensorBoard run, ``run_dir/tensorboard/<series>``, whose x axis is
that index (``write_series``): TensorBoard shows it as one more run beside the main one, and
the main run's purge on resume (by step) does not touch it. Its index must increase within a
run; a resumed process purges the series from the first index it writes again.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Optional

from dlrm_dist.fileio import atomic_write_bytes
from dlrm_dist.metrics.records import finite_or_none, read_records

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


class MetricsLog:
    """Appends records to ``run_dir/metrics.jsonl`` and, if asked, to TensorBoard."""

    def __init__(self, run_dir: Optional[Path], enabled: bool, tensorboard: bool = True) -> None:
        on = bool(run_dir and enabled)
        self.path = Path(run_dir) / METRICS_FILE if on else None
        self.tb_dir = Path(run_dir) / TENSORBOARD_DIR if on and tensorboard else None
        self._writer: Any = None
        self._series: dict[str, Any] = {}  # write_series' TensorBoard writers, by series
        self._resumed = False

    def start(self, resumed: bool, step: int = 0) -> None:
        """A fresh run starts the file; a resumed one (e.g. after a restart) appends to it.

        Both files drop what a killed run wrote past ``step`` (TensorBoard by purge_step), so
        a resumed run's curves do not double back.
        """
        if self.path is None:
            return
        self._resumed = resumed
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not resumed or not self.path.exists():
            self.path.write_text("")
        else:
            self._drop_past(step)
        if self.tb_dir is not None:
            from torch.utils.tensorboard import SummaryWriter  # imports tensorboard: only when used

            # TensorBoard purges the events at purge_step and later; the records at ``step`` itself
            # (its train line, eval, next-day score: written before its checkpoint) are kept, as in the JSONL.
            self._writer = SummaryWriter(str(self.tb_dir), purge_step=step + 1 if resumed else None)

    def _drop_past(self, step: int) -> None:
        """Rewrites the file without the records past ``step`` and without a cut last line.

        A damaged line elsewhere is kept: dlrm-report names it, this writer does not guess.
        """
        assert self.path is not None
        lines = self.path.read_bytes().split(b"\n")
        keep: list[bytes] = []
        for i, raw in enumerate(lines):
            if not raw.strip():
                continue
            try:
                value = json.loads(raw)
            except ValueError:
                if i < len(lines) - 1:
                    keep.append(raw)
                continue  # the last line, without its newline: cut short by the kill
            past = isinstance(value, dict) and isinstance(value.get("step"), int) and value["step"] > step
            if not past:
                keep.append(raw)
        dropped = sum(1 for raw in lines if raw.strip()) - len(keep)
        if dropped:
            atomic_write_bytes(self.path, b"".join(raw + b"\n" for raw in keep))
            logger.info("%s: dropped %d line(s) a previous run wrote past step %d or left cut short",
                        self.path, dropped, step)

    def write(self, kind: str, step: int, **values: Any) -> None:
        if self.path is None:
            return
        record = finite_or_none({"kind": kind, "step": step, **values})
        with self.path.open("a") as f:
            f.write(json.dumps(record, sort_keys=True, allow_nan=False) + "\n")
        if self._writer is not None:
            for name, value in values.items():
                self._scalar(f"{kind}/{name}", value, step)

    def _scalar(self, tag: str, value: Any, step: int) -> None:
        if isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                self._scalar(f"{tag}/rank{i}", v, step)
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            self._writer.add_scalar(tag, value, step)

    def write_series(self, series: str, x: int, **values: Any) -> None:
        """TensorBoard scalars ``<name>`` at index ``x`` in the run ``tensorboard/<series>`` (no JSONL line)."""
        if self.tb_dir is None or self.path is None:
            return
        writer = self._series.get(series)
        if writer is None:
            from torch.utils.tensorboard import SummaryWriter

            # A resumed process writes again from x on: what a killed one wrote there is dropped.
            writer = self._series[series] = SummaryWriter(str(self.tb_dir / series),
                                                          purge_step=x if self._resumed else None)
        for name, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                writer.add_scalar(name, value, x)

    def records(self, kind: str) -> list[dict[str, Any]]:
        """The records of ``kind`` in this log's file so far ([] when this process writes none)."""
        if self.path is None or not self.path.exists():
            return []
        return [r for r in read_records(self.path).records if r["kind"] == kind]

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        for writer in self._series.values():
            writer.close()
        self._series = {}


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl file (a cut last line skipped, restarts resolved)."""
    return read_records(path).records
