"""The checkpointing policy of a training run, in one object (as torchtitan's CheckpointManager).

The policy (``CheckpointPolicy``, from ``[train]``): where checkpoints go, how often one is
due, how many are kept, whether a run resumes from the newest one, and which checkpoint a
run starts from. ``CheckpointManager`` applies it: it says at which steps a save is due,
saves (publishing atomically and purging old ones, never the best evaluation's), and
restores at start-up (after clearing what a killed job left half-written). The trainer only
asks it. A warm start (``train.warm_start``) loads an earlier run's weights and optimizer state
into a run that starts at step 0, unless this run's own checkpoint_dir already has a checkpoint
to resume (then that wins: a restarted warm-started run continues itself). ``export_source`` says which checkpoint a run directory or a checkpoint root means
to dlrm-export: the best evaluation's, unless a step is named.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from torch import nn

from dlrm_dist.checkpoint.io import discard_partial_writes, load_checkpoint, save_checkpoint
from dlrm_dist.checkpoint.manifest import MANIFEST, BestMark, CheckpointError, Manifest, RunInfo
from dlrm_dist.checkpoint.store import latest_checkpoint, published, step_dir, step_of
from dlrm_dist.config.sections import TrainConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CheckpointPolicy:
    """When and where to save, what to keep, where to start from."""

    directory: Optional[str] = None  # None: no checkpoints are written
    interval: int = 0  # a save every N steps (0: only at the end)
    keep_last: int = 3  # 0: keep all
    resume: bool = True  # start from the newest checkpoint in ``directory``, if any
    load_from: Optional[str] = None  # start from this checkpoint (or the newest in this directory)
    warm_start: Optional[str] = None  # weights + optimizer state from this checkpoint, at step 0

    @classmethod
    def from_config(cls, train: TrainConfig) -> "CheckpointPolicy":
        """From a ``TrainConfig`` (its checkpoint_dir, checkpoint_interval, keep_last, resume, checkpoint, warm_start)."""
        return cls(train.checkpoint_dir, train.checkpoint_interval, train.keep_last, train.resume, train.checkpoint,
                   train.warm_start)

    def own_checkpoint(self) -> Optional[Path]:
        """The newest checkpoint of this run's own checkpoint_dir that a resume would continue, if any."""
        return latest_checkpoint(self.directory) if self.directory and self.resume else None


class CheckpointManager:
    """Saves when due, keeps the last few, and restores a run (every method is a collective)."""

    def __init__(self, policy: CheckpointPolicy, model: nn.Module, optimizer: Any, info: RunInfo) -> None:
        self.policy, self.model, self.optimizer, self.info = policy, model, optimizer, info
        self.restored_best: Optional[BestMark] = None  # the best evaluation named by the checkpoint restored
        self.warm_started: Optional[WarmStart] = None  # set when restore() warm-started the run

    def due_steps(self, total_steps: int) -> list[int]:
        """The steps (up to and including ``total_steps``) after which a checkpoint is written."""
        p = self.policy
        if not p.directory:
            return []
        return sorted(set(range(p.interval, total_steps, p.interval) if p.interval else []) | {total_steps})

    @property
    def enabled(self) -> bool:
        """Whether checkpoints are written at all (a checkpoint directory is configured)."""
        return bool(self.policy.directory)

    def save(self, step: int, best: Optional[BestMark] = None) -> Path:
        """Writes and publishes checkpoint ``step``, then purges all but the last ``keep_last``
        (and the checkpoint of ``best``, the best evaluation so far, which its manifest names)."""
        if not self.policy.directory:
            raise CheckpointError("no checkpoint directory is configured (train.checkpoint_dir)")
        path = save_checkpoint(self.policy.directory, step, self.model, self.optimizer, self.info,
                               keep_last=self.policy.keep_last, best=best)
        logger.info("checkpoint @ step %d: %s%s", step, path, " (the best evaluation so far)"
                    if best is not None and best.step == step else "")
        return path

    def load_weights(self, step: int) -> Path:
        """Loads the weights of this run's checkpoint ``step`` (the best one, at the end of a run)."""
        path = step_dir(Path(self.policy.directory or "."), step)
        load_checkpoint(path, self.model, None, self.info)
        logger.info("loaded %s (step %d, weights only)", path, step)
        return path

    def restore(self, weights_only: bool = False) -> Optional[int]:
        """Loads ``load_from``, or resumes from the newest checkpoint; returns its step.

        None when nothing was loaded (nothing to resume from). With ``weights_only``
        (evaluating a checkpoint) the optimizers are left alone.
        """
        p = self.policy
        if p.directory and not weights_only:
            self._discard_partial_writes(p.directory)
        if p.warm_start and not weights_only and p.own_checkpoint() is None:
            self.warm_started = self._warm_start(Path(p.warm_start))
            return None  # the run starts at step 0
        if p.warm_start and not weights_only:
            logger.info("train.checkpoint_dir %s already holds this run's own checkpoint: resuming it; "
                        "train.warm_start (%s) applied when the run began and is not applied again",
                        p.directory, p.warm_start)
        source = p.load_from or (p.directory if p.resume else None)
        path = latest_checkpoint(source) if source else None
        if p.load_from and path is None:
            raise CheckpointError(f"no complete checkpoint at {p.load_from}")
        if path is None:
            return None
        step = load_checkpoint(path, self.model, None if weights_only else self.optimizer, self.info)
        self.restored_best = Manifest.read(path).best  # early stopping counts on from where it was
        logger.info("loaded %s (step %d%s)", path, step, ", weights only" if weights_only else "")
        return step

    def _warm_start(self, path: Path) -> "WarmStart":
        """Loads ``path``'s weights and optimizer state (resharded as needed); the run keeps step 0."""
        source = latest_checkpoint(path)
        if source is None:
            raise CheckpointError(f"train.warm_start: no complete checkpoint at {path}")
        try:
            step = load_checkpoint(source, self.model, self.optimizer, self.info)
        except CheckpointError as e:
            raise CheckpointError(f"train.warm_start: {e}") from None
        logger.info("warm start from %s (its step %d): weights and optimizer state loaded; this run starts at "
                    "step 0 with a fresh LR schedule", source, step)
        return WarmStart(source, step)

    def newest(self) -> Optional[Path]:
        """The newest complete checkpoint written by this policy, if any."""
        return latest_checkpoint(self.policy.directory) if self.policy.directory else None

    @staticmethod
    def _discard_partial_writes(directory: str) -> None:
        for path, error in discard_partial_writes(directory):
            if error is None:
                logger.info("removed %s: a checkpoint a killed job did not finish", path)
            else:
                logger.warning("could not remove %s, a checkpoint a killed job did not finish (%s); "
                               "remove it by hand", path, error)


@dataclass(frozen=True)
class WarmStart:
    """The checkpoint a run was warm-started from, and that checkpoint's own step."""

    path: Path
    step: int

    def to_dict(self) -> dict[str, Any]:
        return {"checkpoint": str(self.path), "step": self.step}


def warm_start_source(train: TrainConfig) -> Optional[ExportSource]:
    """The checkpoint ``train.warm_start`` means (as dlrm-export would pick it), checked before any
    process group; None when there is no warm start or this run resumes its own checkpoints instead.

    Refused: a warm start from this run's own checkpoint_dir (that is a resume) or from this
    run's own run_dir (a warm start writes a new run directory).
    """
    if not train.warm_start or train.inference_only:
        return None
    if CheckpointPolicy.from_config(train).own_checkpoint() is not None:
        return None  # resume wins; restore() says so
    given = Path(train.warm_start)
    if given.resolve() == Path(train.run_dir).resolve():
        raise CheckpointError(f"train.warm_start={train.warm_start!r} is this run's own train.run_dir: a warm-started "
                              "run writes a new run directory; set train.run_dir to another one")
    try:
        source = export_source(given)
    except CheckpointError as e:
        raise CheckpointError(f"train.warm_start={train.warm_start!r}: {e}") from None
    if train.checkpoint_dir and source.path.parent.resolve() == Path(train.checkpoint_dir).resolve():
        raise CheckpointError(f"train.warm_start={train.warm_start!r} is in this run's own train.checkpoint_dir "
                              f"({train.checkpoint_dir}): continue that run with train.resume, or give the new run "
                              "another train.checkpoint_dir")
    return source


# -- which checkpoint a run directory or checkpoint root means (dlrm-export RUN_OR_CKPT) ---------
@dataclass(frozen=True)
class ExportSource:
    """One checkpoint directory, its step, and why it was chosen (for the user)."""

    path: Path
    step: int
    why: str


def _run_config(run_dir: Path) -> Path:
    from dlrm_dist.metrics.runs import CONFIG_FILE  # the run directory's file names have their home there

    return run_dir / CONFIG_FILE


def _run_checkpoint_root(run_dir: Path) -> Path:
    """The checkpoint_dir a run directory's saved config names (CheckpointError if it has none)."""
    config = _run_config(run_dir)
    try:
        root = json.loads(config.read_text())["train"]["checkpoint_dir"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{run_dir} is neither a checkpoint nor a checkpoint directory, and its {config.name} "
                              f"does not name one ({type(e).__name__}: {e})") from None
    if not root:
        raise CheckpointError(f"{run_dir} is a run directory whose run wrote no checkpoints "
                              "(train.checkpoint_dir was unset): nothing to export")
    return _as_the_run_saw_it(Path(root), run_dir, json.loads(config.read_text())["train"].get("run_dir"))


def _as_the_run_saw_it(root: Path, run_dir: Path, saved_run_dir: Optional[str]) -> Path:
    """A relative checkpoint_dir is relative to where the run was started, which need not be here:
    when the saved (relative) run_dir is the tail of ``run_dir``, the start directory is what
    precedes it, and the checkpoint_dir is taken from there."""
    if root.is_absolute() or not saved_run_dir or Path(saved_run_dir).is_absolute():
        return root
    here, tail = run_dir.resolve(), Path(saved_run_dir).parts
    if len(here.parts) > len(tail) and here.parts[-len(tail):] == tail:
        return Path(*here.parts[:-len(tail)]) / root
    return root


def _summary_best_step(run_dir: Path) -> Optional[int]:
    """The best evaluation's step a finished run's summary.json names (None: no summary, or no best)."""
    from dlrm_dist.metrics.runs import SUMMARY_FILE

    try:
        best = json.loads((run_dir / SUMMARY_FILE).read_text()).get("best")
    except (OSError, ValueError, AttributeError):
        return None
    step = best.get("step") if isinstance(best, dict) and best.get("checkpoint_kept") else None
    return step if isinstance(step, int) and not isinstance(step, bool) else None


def export_source(path: str | Path, step: Optional[int] = None) -> ExportSource:
    """The checkpoint ``path`` means: itself if it is one; in a checkpoint root (or the root a run
    directory's config names) checkpoint ``step`` if given, else the best evaluation's (its newest
    manifest names it), else the newest."""
    p = Path(path)
    if (p / MANIFEST).is_file():
        own = Manifest.read(p).step
        if step is not None and step != own:
            raise CheckpointError(f"{p} is the checkpoint of step {own}, not {step}: name its directory's parent "
                                  "(the checkpoint_dir) to choose a step")
        return ExportSource(p, own, "the checkpoint named")
    root = p if published(p) or not _run_config(p).is_file() else _run_checkpoint_root(p)
    found = published(root)
    if not found:
        raise CheckpointError(f"no complete checkpoint in {root}" + (f" (the checkpoint_dir of run {p})"
                                                                      if root != p else ""))
    steps = {step_of(c): c for c in found}
    if step is not None:
        if step not in steps:
            raise CheckpointError(f"{root} has no checkpoint of step {step}; it has steps "
                                  f"{', '.join(map(str, sorted(steps)))}")
        return ExportSource(steps[step], step, "the step named (--step)")
    best = Manifest.read(found[-1]).best
    recorded = _summary_best_step(p) if root != p else None
    if recorded is not None and recorded not in steps:
        raise CheckpointError(f"run {p} recorded its best evaluation at step {recorded} (its summary.json), but {root} "
                              f"no longer holds that checkpoint (it has steps {', '.join(map(str, sorted(steps)))}): "
                              "name one with --step")
    if best is not None and best.step in steps:
        return ExportSource(steps[best.step], best.step,
                            f"the best evaluation ({best.metric} {best.value:.4f}; the newest is step {step_of(found[-1])})")
    why = "the newest checkpoint" + ("" if best is None else f" (the best, step {best.step}, is no longer there)")
    return ExportSource(found[-1], step_of(found[-1]), why + ("" if best else ": the run kept no best evaluation"))


def resolve_export_source(path: str | Path, step: Optional[int] = None) -> Path:
    """``export_source(path, step).path``: one checkpoint directory for dlrm-export."""
    return export_source(path, step).path
