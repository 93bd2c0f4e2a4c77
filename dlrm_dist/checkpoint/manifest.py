"""A checkpoint's manifest, typed: what it holds and which run wrote it.

``manifest.json`` sits beside the DCP files of every published checkpoint (store.py writes
it last, so its presence means the checkpoint is complete). It names the step, the world
size it was written at, every table's shape, and the run's identity (optimizers, plan,
resolved config), which a resuming run must agree with.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dlrm_dist.checkpoint.optim_state import SECTION as OPTIM_STATE_SECTION
from dlrm_dist.errors import EXIT_BAD_STATE, DlrmError

FORMAT = "dlrm_dist.checkpoint"
VERSION = 2  # 2: embedding optimizer state in the layout-independent form
MANIFEST = "manifest.json"
CONTENTS = {  # the manifest's note on the DCP state dict's sections
    "model": "embedding tables (sharded) and dense weights",
    OPTIM_STATE_SECTION: "embedding optimizer state per table, layout-independent (dlrm_dist/checkpoint/optim_state.py)",
    "optim": "dense (MLP) optimizer state",
    "train": "step (= data position; fixes the LR schedule) and torch RNG state",
}


class CheckpointError(DlrmError):
    """A checkpoint is missing, incomplete, corrupted or from a different model."""

    exit_code = EXIT_BAD_STATE


@dataclass(frozen=True)
class RunInfo:
    """What identifies the run that writes (or loads) a checkpoint."""

    embedding_optimizer: str
    dense_optimizer: str
    plan: list[dict[str, Any]] = field(default_factory=list)  # the sharding plan, one row per table (informational)
    config: dict[str, Any] = field(default_factory=dict)  # the resolved config: rebuilds the model

    def differences(self, other: "RunInfo") -> list[str]:
        """What a checkpoint of ``other`` cannot give this run (its optimizers must match)."""
        return [f"{k}: checkpoint {getattr(other, k)!r}, this run {getattr(self, k)!r}"
                for k in ("embedding_optimizer", "dense_optimizer") if getattr(self, k) != getattr(other, k)]


@dataclass(frozen=True)
class Manifest:
    """One published checkpoint's manifest."""

    step: int
    world_size: int
    tables: dict[str, tuple[int, int]]  # table -> (rows, dim)
    info: RunInfo
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S"))

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, "step": self.step, "world_size": self.world_size,
                "tables": {t: list(s) for t, s in self.tables.items()}, "contents": CONTENTS, "created": self.created,
                "embedding_optimizer": self.info.embedding_optimizer, "dense_optimizer": self.info.dense_optimizer,
                "plan": self.info.plan, "config": self.info.config}

    @classmethod
    def from_dict(cls, d: dict[str, Any], origin: str) -> "Manifest":
        if d.get("format") != FORMAT or d.get("version") != VERSION:
            raise CheckpointError(f"{origin}: format {d.get('format')!r} v{d.get('version')} is not {FORMAT} v{VERSION}")
        try:
            info = RunInfo(d["embedding_optimizer"], d["dense_optimizer"], d.get("plan", []), d.get("config", {}))
            tables = {t: (int(s[0]), int(s[1])) for t, s in d["tables"].items()}
            return cls(int(d["step"]), int(d["world_size"]), tables, info, str(d.get("created", "")))
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise CheckpointError(f"{origin}: the manifest is malformed ({type(e).__name__}: {e})") from None

    def write(self, directory: Path) -> None:
        (Path(directory) / MANIFEST).write_text(json.dumps(self.to_dict(), indent=1, sort_keys=True))

    @classmethod
    def read(cls, directory: str | Path) -> "Manifest":
        """The manifest of checkpoint ``directory``; a CheckpointError says why it cannot be read."""
        path = Path(directory) / MANIFEST
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{directory}: no readable manifest ({e}); not a complete dlrm_dist checkpoint") from None
        if not isinstance(data, dict):
            raise CheckpointError(f"{path} is not a JSON object")
        return cls.from_dict(data, str(directory))
