"""How long a run trains and whether it stops early: decided once the data is open.

``train.steps`` may be left unset in the config: it then comes from ``train.epochs`` (a
columnar train split's rows and the global batch size; the loader drops a last partial
batch, so an epoch is ``rows // global_batch_size`` steps; a run over day partitions
(``data.partitions``) asks the data for each partition's batches instead, since each
partition drops its own last partial batch), else the default
(``DEFAULT_STEPS``), and the resolved config holds that number (not the epochs). ``train.early_stop.enabled`` may be unset: it is then on exactly when
the data has a non-empty val split that the run evaluates and no step count was given
(the user said "train until it stops improving", not "train N steps"). ``resolve_length``
returns the config with both written out and the log lines that say what was decided, so
the saved config (run directory, checkpoints) holds the numbers the run used.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

from dlrm_dist.config.errors import ConfigError
from dlrm_dist.config.sections import DEFAULT_STEPS, Config
from dlrm_dist.data import PartitionSpan
from dlrm_dist.training.progressive import partition_spans


@dataclass(frozen=True)
class SplitRows:
    """Rows of the data's splits that the run length depends on (None: the source has no such split)."""

    train: Optional[int]  # None: synthetic data, drawn without end
    val: Optional[int]
    test: Optional[int]


def split_rows(data: object) -> SplitRows:
    """The rows of ``data``'s splits (a columnar directory's layout; synthetic data has none)."""
    splits = getattr(data, "splits", None)
    if not isinstance(splits, dict):
        return SplitRows(None, None, None)
    return SplitRows(*(int(splits[s].rows) if s in splits else None for s in ("train", "val", "test")))


def epoch_steps(epochs: int, train_rows: int, global_batch_size: int) -> tuple[int, str]:
    """(steps, the log line) for ``epochs`` passes over a train split of ``train_rows`` rows."""
    return _epochs(epochs, train_rows // global_batch_size, train_rows, global_batch_size,
                   what=f"the train split has {train_rows:,} rows, fewer than one global batch", over="",
                   dropped_note="the last {dropped:,} of {rows:,} rows make no full batch: each epoch visits "
                                "another permutation")


def partition_epoch_steps(epochs: int, spans: list[PartitionSpan], global_batch_size: int) -> tuple[int, str]:
    """(steps, the log line) for ``epochs`` passes over day partitions (each its own full batches)."""
    rows, names = sum(s.rows for s in spans), ", ".join(str(s.partition) for s in spans)
    return _epochs(epochs, sum(s.batches for s in spans), rows, global_batch_size,
                   what=f"partitions {names} have {rows:,} rows, and none has a full global batch",
                   over=f" over partitions {names}",
                   dropped_note="each partition's last partial batch is left out: {dropped:,} of {rows:,} rows; each "
                                "epoch visits another permutation within each partition")


def _epochs(epochs: int, per_epoch: int, rows: int, global_batch_size: int, what: str, over: str,
            dropped_note: str) -> tuple[int, str]:
    if per_epoch == 0:
        raise ConfigError(f"train.epochs={epochs}: {what} of train.global_batch_size={global_batch_size:,}: "
                          "lower the batch size")
    steps, dropped = epochs * per_epoch, rows - per_epoch * global_batch_size
    line = f"epochs={epochs}: {epochs} x {per_epoch:,} steps of {global_batch_size:,} rows{over} = {steps:,} steps"
    return steps, line + (f" ({dropped_note.format(dropped=dropped, rows=rows)})" if dropped else "")


def early_stop_default(cfg: Config, rows: SplitRows, steps_given: bool) -> tuple[bool, Optional[str]]:
    """(on, why) for an unset ``train.early_stop.enabled``; ``why`` is None when nothing needs saying."""
    t = cfg.train
    if t.inference_only or steps_given:
        return False, None
    if cfg.data.eval_split != "val" or not rows.val:
        return False, None
    if t.eval_interval == 0:
        return False, ("early stopping is off: the data has a val split but train.eval_interval=0 evaluates only "
                       "at the end")
    es = t.early_stop
    return True, (f"early stopping is on (the data has a val split and no step count was given; "
                  f"--train.early_stop.enabled=false turns it off): {es.metric} ({es.direction}), patience "
                  f"{es.patience} evaluation(s) of every {t.eval_interval} steps, min_delta {es.min_delta:g}")


def resolve_length(cfg: Config, data: object) -> tuple[Config, list[str]]:
    """``cfg`` with ``train.steps`` and ``train.early_stop.enabled`` decided, and the lines to log."""
    t, rows, lines = cfg.train, split_rows(data), []
    steps = t.steps
    spans = partition_spans(data, t.global_batch_size)
    if t.epochs is not None and spans:
        steps, line = partition_epoch_steps(t.epochs, spans, t.global_batch_size)
        lines.append(line)
    elif t.epochs is not None:
        if rows.train is None:  # the loader refuses train.epochs for synthetic data by name already
            raise ConfigError("train.epochs needs data with a train split of known rows (data.source = columnar)")
        steps, line = epoch_steps(t.epochs, rows.train, t.global_batch_size)
        lines.append(line)
    elif steps is None:
        steps = DEFAULT_STEPS
    enabled = t.early_stop.enabled
    if enabled is None:
        enabled, why = early_stop_default(cfg, rows, steps_given=t.steps is not None)
        lines += [why] if why else []
    elif enabled:
        if t.inference_only:
            enabled = False
        elif cfg.data.eval_split == "test":
            raise ConfigError("train.early_stop.enabled=true with data.eval_split=test would choose the model by "
                              "its test score: evaluate on val (data.eval_split=val) or turn early stopping off")
        else:
            es = t.early_stop
            lines.append(f"early stopping is on: {es.metric} ({es.direction}), patience {es.patience} "
                         f"evaluation(s) of every {t.eval_interval} steps, min_delta {es.min_delta:g}")
    early_stop = dataclasses.replace(t.early_stop, enabled=bool(enabled))
    # epochs become the steps they mean: the saved config says the number the run used
    train = dataclasses.replace(t, steps=steps, epochs=None, early_stop=early_stop)
    return dataclasses.replace(cfg, train=train), lines
