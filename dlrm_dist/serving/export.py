"""Checkpoint -> export: the unsharded model as a ``torch.export`` program plus its manifest.

The program is traced with a dynamic batch size and dynamic bag sizes (see model.py for the
inputs). With ``quantize="int8"`` the tables are stored row-wise int8 and the float and int8
models are both scored on the evaluation split of the training config's data, when that data
is at hand, so the manifest (and the CLI) report what quantization cost in AUC.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Optional

import torch
from torch.export import Dim

from dlrm_dist.checkpoint.unsharded import read_unsharded
from dlrm_dist.config.loader import to_dict
from dlrm_dist.errors import DlrmError
from dlrm_dist.features.schema import FeatureSchema
from dlrm_dist.serving.load import FORMAT, MANIFEST_FILE, MODEL_FILE, VERSION, ExportError, sha256
from dlrm_dist.serving.model import ServingDLRM

logger = logging.getLogger(__name__)
EXAMPLE_BATCH = 4


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
    return torch.export.export(model, example_inputs(model, num_dense), dynamic_shapes=shapes)


def _auc_comparison(float_model: ServingDLRM, int8_model: ServingDLRM, config: dict[str, Any],
                    data_dir: Optional[str], progress: bool) -> dict[str, Any]:
    """Float and int8 scored on the training config's eval split (or why that was not possible)."""
    from dlrm_dist.serving.predict import open_split, score

    split = config["data"].get("eval_split", "val")
    try:
        data = open_split(config, data_dir, split)
    except DlrmError as e:
        return {"note": f"not measured: the training data is not at hand ({e})"}
    names, batch = float_model.feature_names, config["train"]["global_batch_size"]
    f = score(float_model, data, names, batch, progress, desc="score float").metrics
    q = score(int8_model, data, names, batch, progress, desc="score int8").metrics
    return {"split": split, "samples": f.samples, "float_auc": f.auc, "int8_auc": q.auc, "auc_difference": q.auc - f.auc,
            "float_logloss": f.logloss, "int8_logloss": q.logloss}


def export_checkpoint(checkpoint: str | Path, out: str | Path, quantize: str = "none",
                      data_dir: Optional[str] = None, progress: bool = True) -> dict[str, Any]:
    """Writes ``out/model.pt2`` and ``out/export.json`` for the checkpoint; returns the manifest."""
    found = read_unsharded(checkpoint)
    cfg = to_dict(found.config)
    dlrm = found.model.model
    num_dense = FeatureSchema.from_dict(found.config.features, f"{found.path} schema").num_dense
    model = ServingDLRM(dlrm, quantize).eval()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        program = trace(model, num_dense)
    except Exception as e:  # noqa: BLE001 - say what could not be traced, not a 200-line trace
        raise ExportError(f"torch.export could not trace the model ({type(e).__name__}: {str(e).splitlines()[0]})") from e
    torch.export.save(program, str(out / MODEL_FILE))
    manifest: dict[str, Any] = {
        "format": FORMAT, "version": VERSION,
        "checkpoint": str(found.path), "step": found.step, "quantize": quantize,
        "inputs": "dense float32 [B, D]; indices: list of int64 [n_f] per sparse feature; "
                  "offsets: list of int64 [B+1] per sparse feature; returns click probability float32 [B]",
        "dense_features": num_dense, "sparse_features": model.feature_names,
        "tables": {name: list(getattr(model, f"table_{i}").shape) for i, name in enumerate(model.table_names)},
        "config": cfg, "model_file": MODEL_FILE, "model_sha256": sha256(out / MODEL_FILE),
    }
    if quantize == "int8":
        manifest["quantization"] = _auc_comparison(ServingDLRM(dlrm, "none").eval(), model, cfg, data_dir, progress)
    (out / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1, sort_keys=True))
    return manifest
