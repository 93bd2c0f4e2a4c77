"""The run's metrics, written by rank 0: ``metrics.jsonl`` and TensorBoard event files.

Every record goes to both: a JSON line ``{"kind": ..., "step": ..., ...}`` and, for each
number in it, a TensorBoard scalar ``<kind>/<name>`` (a list such as per-rank step times
becomes ``<kind>/<name>/rank<i>``) under ``run_dir/tensorboard``. ``read_metrics`` reads the
JSONL back (dlrm-report, tests).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Optional

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


class MetricsLog:
    """Appends records to ``run_dir/metrics.jsonl`` and, if asked, to TensorBoard."""

    def __init__(self, run_dir: Optional[Path], enabled: bool, tensorboard: bool = True) -> None:
        on = bool(run_dir and enabled)
        self.path = Path(run_dir) / METRICS_FILE if on else None
        self.tb_dir = Path(run_dir) / TENSORBOARD_DIR if on and tensorboard else None
        self._writer: Any = None

    def start(self, resumed: bool, step: int = 0) -> None:
        """A fresh run starts the file; a resumed one (e.g. after a restart) appends to it.

        TensorBoard drops the events a killed run wrote past ``step`` (purge_step), so a
        resumed run's curves do not double back.
        """
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not resumed or not self.path.exists():
            self.path.write_text("")
        if self.tb_dir is not None:
            from torch.utils.tensorboard import SummaryWriter  # imports tensorboard: only when used

            self._writer = SummaryWriter(str(self.tb_dir), purge_step=step if resumed else None)

    def write(self, kind: str, step: int, **values: Any) -> None:
        if self.path is None:
            return
        record = {"kind": kind, "step": step, **values}
        with self.path.open("a") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
        if self._writer is not None:
            for name, value in values.items():
                self._scalar(f"{kind}/{name}", value, step)

    def _scalar(self, tag: str, value: Any, step: int) -> None:
        if isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                self._scalar(f"{tag}/rank{i}", v, step)
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            self._writer.add_scalar(tag, value, step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """All records of a metrics.jsonl file."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
