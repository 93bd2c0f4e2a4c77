"""Checkpoint -> export: the unsharded model as a ``torch.export`` program plus its manifest.

The program is traced with a dynamic batch size and dynamic bag sizes (see model.py for the
inputs). With ``quantize="int8"`` the tables are stored row-wise int8 and the float and int8
models are both scored on the evaluation split of the training config's data, when that data
is at hand; a cost beyond the limits (AUC lost, log-loss gained) fails the export before
anything is written, and the manifest records what was measured and the limits it met.

The manifest carries the fitted schema's fingerprint; data given to score with (``--data``)
is checked against the checkpoint's schema first (predict.check_data_schema). The fitted
pipeline's vocabularies are copied from the data directory (``--data``, else the training
config's) into ``DIR/vocab/`` with their checksums (pipeline.py), so that raw rows can be
scored (predictor.py); without them at hand the export scores preprocessed data only.

Managed tables (kind managed) carry their remappers frozen (serving/remap.py): the program takes
their raw ids. Training sharded each row-wise, one remapper per rank owning a block of the id
space; ``checkpoint_shards`` reads those shards' row offsets from the chunks the checkpoint saved
the remapper buffers in, and the manifest's ``remappers`` describes what was frozen.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch.export import Dim

from dlrm_dist.checkpoint.manifest import BestMark
from dlrm_dist.checkpoint.unsharded import Unsharded, read_unsharded
from dlrm_dist.config.loader import to_dict
from dlrm_dist.config.sections import Config
from dlrm_dist.errors import EXIT_BAD_INPUT, DlrmError
from dlrm_dist.features.schema import FeatureSchema
from dlrm_dist.fileio import atomic_write_text, disk_full
from dlrm_dist.metrics.eval import EvalResult
from dlrm_dist.model.dlrm import DLRM
from dlrm_dist.serving.load import MANIFEST_FILE, MODEL_FILE, ExportError, sha256
from dlrm_dist.serving.manifest import (SPLITS, BestEvaluation, EvalMetrics, ExportManifest, ExportMetrics,
                                        FrozenRemapper, QuantizationCost, QuantizationNotMeasured)
from dlrm_dist.serving.model import ServingDLRM
from dlrm_dist.serving.pipeline import copy_vocabularies, source_directory

logger = logging.getLogger(__name__)
EXAMPLE_BATCH = 4


class QuantizationCostError(DlrmError):
    """int8 tables cost more (AUC lost or log-loss gained) than the limits allow: nothing was written."""

    exit_code = EXIT_BAD_INPUT


@dataclass(frozen=True)
class CostLimits:
    """How much int8 may cost against float on the evaluation split before dlrm-export fails.

    AUC is compared absolutely (0.005 = half a point); log-loss as an increase in nats per
    sample. The defaults are what the demo model meets with room (measured: |AUC difference|
    about 0.0003, log-loss within 0.001).
    """

    max_auc_loss: float = 0.005
    max_logloss_increase: float = 0.01

    def __post_init__(self) -> None:
        for name in ("max_auc_loss", "max_logloss_increase"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise QuantizationCostError(f"--{name.replace('_', '-')} {value!r}: give a finite number >= 0")


def example_inputs(model: ServingDLRM, num_dense: int) -> tuple[Any, ...]:
    """A small batch of the right shapes (one id 0 per bag) to trace with."""
    n = len(model.feature_names)
    dense = torch.zeros(EXAMPLE_BATCH, num_dense)
    ids = [torch.zeros(EXAMPLE_BATCH, dtype=torch.long) for _ in range(n)]
    offsets = [torch.arange(EXAMPLE_BATCH + 1, dtype=torch.long) for _ in range(n)]
    return dense, ids, offsets


def trace(model: ServingDLRM, num_dense: int) -> torch.export.ExportedProgram:
    """``torch.export`` of ``model``: batch size and every feature's id count are dynamic."""
    batch = Dim("batch", min=1)
    n = len(model.feature_names)
    shapes = ({0: batch}, [{0: Dim.AUTO} for _ in range(n)], [{0: batch + 1} for _ in range(n)])
    try:
        return torch.export.export(model, example_inputs(model, num_dense), dynamic_shapes=shapes)
    except Exception as e:  # noqa: BLE001 - say what could not be traced, not a 200-line trace
        raise ExportError(f"torch.export could not trace the model ({type(e).__name__}: {str(e).splitlines()[0]})") from e


def _eval_split(config: Config) -> str:
    return config.data.eval_split if config.data.eval_split in SPLITS else "val"


def _score_eval_split(model: ServingDLRM, config: Config, data_dir: Optional[str], progress: bool,
                     desc: str) -> Union[Optional[EvalResult], QuantizationNotMeasured]:
    """``model``'s metrics on the training config's eval split (or why they could not be measured)."""
    from dlrm_dist.serving.predict import open_split, score

    try:
        data = open_split(config, data_dir, _eval_split(config), "the checkpoint's model")
    except DlrmError as e:
        if data_dir:  # data the user named must be usable; the config's own may be on another machine
            raise
        return QuantizationNotMeasured(note=f"not measured: the training data is not at hand ({e})")
    return score(model, data, model.feature_names, config.train.global_batch_size, progress, desc=desc).metrics


def _int8_cost(float_metrics: Union[Optional[EvalResult], QuantizationNotMeasured],
               int8_metrics: Union[Optional[EvalResult], QuantizationNotMeasured, None], config: Config,
               limits: CostLimits) -> Union[QuantizationCost, QuantizationNotMeasured]:
    """What int8 costs against float on the eval split, from both models' metrics."""
    if isinstance(float_metrics, QuantizationNotMeasured):
        return float_metrics
    f, q, split = float_metrics, int8_metrics, _eval_split(config)
    values = [f.auc, q.auc, f.logloss, q.logloss] if f and q else []
    if not values or not all(math.isfinite(v) for v in values):
        return QuantizationNotMeasured(note=f"not measured: the {split} split has no labels of both classes")
    return QuantizationCost(split=split, samples=f.samples, float_auc=f.auc, int8_auc=q.auc,
                            auc_difference=q.auc - f.auc, float_logloss=f.logloss, int8_logloss=q.logloss,
                            max_auc_loss=limits.max_auc_loss, max_logloss_increase=limits.max_logloss_increase)


def _int8_model(dlrm: DLRM, config: Config, data_dir: Optional[str], limits: CostLimits, progress: bool,
                release_float: bool, shards: Optional[dict[str, list[int]]]
                ) -> tuple[ServingDLRM, Union[QuantizationCost, QuantizationNotMeasured]]:
    """The int8 model and its measured cost: float is scored first, then each table is quantized (and,
    with ``release_float``, its float copy freed), so float and int8 tables never all coexist."""
    float_metrics = _score_eval_split(ServingDLRM(dlrm, "none", shards=shards).eval(), config, data_dir, progress,
                                      "score float")
    model = ServingDLRM(dlrm, "int8", release_float=release_float, shards=shards).eval()
    int8_metrics = None  # (not scored when float could not be: _int8_cost says why)
    if not isinstance(float_metrics, QuantizationNotMeasured):
        int8_metrics = _score_eval_split(model, config, data_dir, progress, "score int8")
    return model, _int8_cost(float_metrics, int8_metrics, config, limits)


def cost_problems(cost: QuantizationCost) -> list[str]:
    """Which limits a measured int8 cost passes (empty: it is within them)."""
    out = []
    if cost.float_auc - cost.int8_auc > cost.max_auc_loss:
        out.append(f"AUC {cost.int8_auc:.5f} vs float {cost.float_auc:.5f} loses {cost.float_auc - cost.int8_auc:.5f} "
                   f"(limit --max-auc-loss {cost.max_auc_loss:g})")
    if cost.int8_logloss - cost.float_logloss > cost.max_logloss_increase:
        out.append(f"log-loss {cost.int8_logloss:.5f} vs float {cost.float_logloss:.5f} rises by "
                   f"{cost.int8_logloss - cost.float_logloss:.5f} (limit --max-logloss-increase "
                   f"{cost.max_logloss_increase:g})")
    return out


def _write_program(program: torch.export.ExportedProgram, out: Path) -> str:
    """``out/model.pt2`` written atomically (saved in a private folder, fsync, rename); returns its sha256.

    The folder keeps the file's own name: torch.export.save names the archive's root after it.
    """
    final, tmp_dir = out / MODEL_FILE, out / f".tmp-{os.getpid()}"
    tmp = tmp_dir / MODEL_FILE
    tmp_dir.mkdir(exist_ok=True)
    try:
        with disk_full(tmp):
            torch.export.save(program, str(tmp))
            with tmp.open("rb") as f:
                os.fsync(f.fileno())
        digest = sha256(tmp)
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
        tmp_dir.rmdir()
    return digest


def _best(best: Optional[BestMark], config: Config) -> Optional[BestEvaluation]:
    if best is None:
        return None
    return BestEvaluation(split=_eval_split(config), step=best.step, metric=best.metric, mode=best.mode,
                          value=best.value)


def _eval_metrics(measured: Any, config: Config, step: int) -> Optional[EvalMetrics]:
    """The eval split's metrics measured at export (float's own, or int8's), None when not measured."""
    if isinstance(measured, QuantizationCost):
        return EvalMetrics(split=measured.split, step=step, samples=measured.samples, auc=measured.int8_auc,
                           logloss=measured.int8_logloss)
    if isinstance(measured, EvalResult) and measured.samples and math.isfinite(measured.auc) \
            and math.isfinite(measured.logloss):
        return EvalMetrics(split=_eval_split(config), step=step, samples=measured.samples, auc=measured.auc,
                           logloss=measured.logloss)
    return None


def remapper_entries(model: ServingDLRM, schema: FeatureSchema) -> dict[str, FrozenRemapper]:
    """The manifest's description of the program's frozen remappers, one per managed table."""
    return {t: FrozenRemapper(feature=schema.features_of(t)[0].name, eviction=schema.features_of(t)[0].eviction,
                              shard_offsets=offsets, admitted=model.remap_admitted[t])
            for t, offsets in model.remap_shards.items()}


def checkpoint_shards(found: Unsharded, schema: FeatureSchema) -> dict[str, list[int]]:
    """Per managed table, the row offsets of the shards its remapper had in training: the chunks its
    buffers were saved in (one per rank: each rank's remapper owns a block of the id space and of the
    rows). Refused by name unless they tile the table, one per rank of the checkpoint's world."""
    from dlrm_dist.checkpoint.reader import read_metadata

    managed = [t for t in schema.table_names if schema.features_of(t)[0].managed]
    if not managed:
        return {}
    saved = read_metadata(found.path, found.manifest.files if found.manifest else None).state_dict_metadata
    out = {}
    for table in managed:
        suffix = f"_managed_collision_modules.{table}._mch_sorted_raw_ids"
        key = next((k for k in saved if k.endswith(suffix)), None)
        if key is None:
            raise ExportError(f"{found.path}: the checkpoint has no remapper state for managed table {table!r} "
                              f"(no *{suffix}); nothing was written")
        chunks = sorted((int(c.offsets[0]), int(c.sizes[0])) for c in saved[key].chunks)
        offsets = [0] + [lo + n for lo, n in chunks]
        rows = schema.table_rows(table)
        world = found.manifest.world_size if found.manifest else len(chunks)
        if [lo for lo, _ in chunks] != offsets[:-1] or offsets[-1] != rows or len(chunks) != world:
            raise ExportError(f"{found.path}: managed table {table!r}: its remapper was saved in chunks {chunks}, "
                              f"not {world} row-wise shards tiling its {rows} rows; nothing was written")
        out[table] = offsets
    return out


def export_model(dlrm: DLRM, config: Config, out: str | Path, quantize: str = "none", *, step: int = 0,
                 checkpoint: str = "(in memory)", data_dir: Optional[str] = None,
                 limits: CostLimits = CostLimits(), progress: bool = True,
                 release_float: bool = False, best: Optional[BestMark] = None,
                 shards: Optional[dict[str, list[int]]] = None) -> ExportManifest:
    """Writes ``out/model.pt2`` and ``out/export.json`` for ``dlrm`` trained with ``config`` (resolved).

    ``release_float`` (int8): ``dlrm``'s float tables are freed as they are quantized (the caller's
    model is consumed; export_checkpoint's own model is). ``best``: the checkpoint manifest's best
    evaluation, recorded in the manifest's ``metrics`` with what was measured here. ``shards``: per
    managed table, its training shards' row offsets (checkpoint_shards; default one shard, as an
    unsharded model's own remapper is).
    """
    schema = FeatureSchema.from_dict(config.features, "the checkpoint's schema")
    quantization = None
    if quantize == "int8":
        model, quantization = _int8_model(dlrm, config, data_dir, limits, progress, release_float, shards)
        if isinstance(quantization, QuantizationCost) and (problems := cost_problems(quantization)):
            raise QuantizationCostError(
                f"int8 tables cost too much on {quantization.samples:,} {quantization.split} samples: "
                f"{'; '.join(problems)}. Nothing was written: export float (--quantize none), or raise the limit")
        measured: Any = quantization
    else:
        model = ServingDLRM(dlrm, quantize, shards=shards).eval()
        measured = None
        if data_dir:  # the data named must be the model's; the float model is scored on its eval split
            measured = _score_eval_split(model, config, data_dir, progress, "score float")
    metrics = ExportMetrics(best=_best(best, config), eval=_eval_metrics(measured, config, step))
    program = trace(model, schema.num_dense)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pipeline = copy_vocabularies(schema, source_directory(config, data_dir), out)
    manifest = ExportManifest(
        checkpoint=checkpoint, step=step, quantize=quantize, dense_features=schema.num_dense,
        sparse_features=list(model.feature_names),
        tables={name: tuple(getattr(model, f"table_{i}").shape) for i, name in enumerate(model.table_names)},
        schema_fingerprint=schema.fingerprint(), config=to_dict(config),
        model_sha256=_write_program(program, out), quantization=quantization, pipeline=pipeline, metrics=metrics,
        remappers=remapper_entries(model, schema),
    )
    with disk_full(out / MANIFEST_FILE):
        atomic_write_text(out / MANIFEST_FILE, manifest.to_json())
    return manifest


def export_checkpoint(checkpoint: str | Path, out: str | Path, quantize: str = "none",
                      data_dir: Optional[str] = None, progress: bool = True,
                      limits: CostLimits = CostLimits()) -> ExportManifest:
    """Writes ``out/model.pt2`` and ``out/export.json`` for the checkpoint; returns the manifest."""
    found = read_unsharded(checkpoint)  # the tables read one at a time (checkpoint/unsharded.py)
    shards = checkpoint_shards(found, FeatureSchema.from_dict(found.config.features, "the checkpoint's schema"))
    return export_model(found.model.model, found.config, out, quantize, step=found.step, checkpoint=str(found.path),
                        data_dir=data_dir, limits=limits, progress=progress, release_float=True,
                        best=found.manifest.best if found.manifest else None, shards=shards)
