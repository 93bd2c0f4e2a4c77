"""The run's metrics file: one JSON object per line, written by rank 0 only."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional


class MetricsLog:
    """Appends ``{"kind": ..., "step": ..., ...}`` lines to ``run_dir/metrics.jsonl``."""

    def __init__(self, run_dir: Optional[Path], enabled: bool) -> None:
        self.path = run_dir / "metrics.jsonl" if (run_dir and enabled) else None

    def start(self, resumed: bool) -> None:
        """A fresh run starts the file; a resumed one (e.g. after a restart) appends to it."""
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if not resumed or not self.path.exists():
                self.path.write_text("")

    def write(self, kind: str, step: int, **values: Any) -> None:
        if self.path is None:
            return
        record = {"kind": kind, "step": step, **values}
        with self.path.open("a") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """All records of a metrics.jsonl file."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
