"""Where checkpoints live and how they are published: complete or absent.

    DIR/step_00000400/        a published checkpoint: DCP files + manifest.json
    DIR/step_00000800.tmp/    being written, or abandoned by a killed job: never read
                              (io.discard_partial_writes removes those when a job starts)

A checkpoint is written under a ``.tmp`` name and renamed once every rank has finished and
the manifest (written last) is in place, so a reader sees a whole checkpoint or none. After
publishing, all but the newest ``keep_last`` are removed, except the one the new manifest
names as the best evaluation's (early stopping): at most ``keep_last + 1`` remain.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Optional

from dlrm_dist.checkpoint.manifest import MANIFEST, Manifest

PREFIX = "step_"


def step_dir(root: Path, step: int) -> Path:
    return Path(root) / f"{PREFIX}{step:08d}"


def tmp_dir(root: Path, step: int) -> Path:
    return step_dir(root, step).with_suffix(".tmp")


def published(root: Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.glob(f"{PREFIX}*") if p.is_dir() and p.suffix != ".tmp" and (p / MANIFEST).is_file()]
    return sorted(found, key=step_of)


def latest_checkpoint(path: str | Path) -> Optional[Path]:
    """``path`` itself if it is a checkpoint, else the newest complete one inside it."""
    p = Path(path)
    if (p / MANIFEST).is_file():
        return p
    found = published(p)
    return found[-1] if found else None


def partial_writes(root: Path) -> list[Path]:
    """Unpublished (``.tmp``) checkpoint directories under ``root``."""
    return sorted(Path(root).glob(f"{PREFIX}*.tmp")) if Path(root).is_dir() else []


def publish(root: Path, manifest: Manifest, keep_last: int) -> Path:
    """Writes the manifest into the finished .tmp directory, renames it, prunes old ones (rank 0)."""
    tmp, final = tmp_dir(root, manifest.step), step_dir(root, manifest.step)
    manifest.write(tmp)
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    protected = {manifest.best.step} if manifest.best else set()
    for old in to_prune(published(root), keep_last, protected):
        shutil.rmtree(old, ignore_errors=True)
    return final


def step_of(path: Path) -> int:
    """The step of a checkpoint directory named ``step_NNNNNNNN``."""
    return int(Path(path).name[len(PREFIX):])


def to_prune(found: list[Path], keep_last: int, protected: set[int]) -> list[Path]:
    """Of ``found`` (published, oldest first), those beyond the newest ``keep_last`` (0: keep all),
    except the ``protected`` steps (the best evaluation's checkpoint, kept whatever keep_last says)."""
    if keep_last <= 0:
        return []
    return [p for p in found[:-keep_last] if step_of(p) not in protected]
