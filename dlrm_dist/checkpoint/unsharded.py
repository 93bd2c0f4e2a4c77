"""A sharded checkpoint read into a plain, unsharded, single-process model (no process group).

The checkpoint is checked as on resume: manifest parsed, every file's CRC32C verified,
``.metadata`` read by the allow-list reader; then DCP reads every shard and reassembles
full tensors into the model built from the checkpoint's own config (its manifest carries
the resolved config, schema included). A model that config cannot build, or whose tables
differ from the manifest's, is a damaged manifest.

The tables are read one at a time into uninitialised storage (the model is built with its
tables on the meta device): the reader never holds a randomly initialised copy of the tables,
nor more than one table's read buffers beside them (an MLPerf-size model's tables are ~100 GB;
benchmarks/export_memory.py measures it). Used by serving/export.py and by tests
that compare weights across layouts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from dlrm_dist.checkpoint.io import read_state, table_of, tables_of, table_problems, verified_metadata
from dlrm_dist.checkpoint.manifest import MANIFEST, CheckpointError, Manifest
from dlrm_dist.checkpoint.reader import METADATA_FILE
from dlrm_dist.checkpoint.store import latest_checkpoint
from dlrm_dist.config.loader import config_from_dict
from dlrm_dist.config.sections import Config
from dlrm_dist.errors import DlrmError
from dlrm_dist.model import DLRMTrain, build_model
from dlrm_dist.model.spec import resolved_spec


@dataclass
class Unsharded:
    """A checkpoint's model (CPU, eval mode, full tables), the config it was trained with, its step."""

    model: DLRMTrain
    config: Config
    step: int
    path: Path
    manifest: Optional[Manifest] = None  # checkpoint.manifest.schema_of(manifest): the fitted schema


def find_checkpoint(path: str | Path) -> Path:
    """``path`` if it is a checkpoint, else the newest complete one in it."""
    found = latest_checkpoint(path)
    if found is None:
        if (Path(path) / METADATA_FILE).exists():  # DCP files without the manifest that publishes them
            raise CheckpointError(f"{Path(path) / MANIFEST} is missing: {path} is not a complete checkpoint")
        raise CheckpointError(f"no complete checkpoint at {path}")
    return found


def _model_of(found: Path, manifest: Manifest) -> tuple[DLRMTrain, Config]:
    """The model the manifest's config describes, refused unless its tables are the manifest's."""
    try:
        cfg = config_from_dict(manifest.info.config, f"{found} manifest")
        model = build_model(resolved_spec(cfg), seed=0, device=torch.device("meta"))  # tables: nothing allocated
    except (DlrmError, TypeError, ValueError, KeyError, AttributeError, IndexError, RuntimeError) as e:
        # The config was valid when the manifest was written: whatever fails here was edited or damaged since.
        raise CheckpointError(f"{found}: the manifest's config does not build a model "
                              f"({type(e).__name__}: {e})") from None
    problems = table_problems(tables_of(model.state_dict()), manifest.tables)
    if problems:
        raise CheckpointError(f"{found}: the manifest's config and its tables disagree (the manifest was edited or "
                              "damaged):\n" + "\n".join(f"  - {p}" for p in problems))
    return model, cfg


def read_unsharded(path: str | Path) -> Unsharded:
    """The checkpoint at ``path`` (or the newest in it) as an :class:`Unsharded`."""
    found = find_checkpoint(path)
    manifest = Manifest.read(found)
    model, cfg = _model_of(found, manifest)
    metadata = verified_metadata(found, manifest)
    state = model.state_dict()
    # (a managed table's remapper buffers are built on the meta device with its table: given storage here)
    dense = {key: torch.empty(value.shape, dtype=value.dtype) if value.is_meta else value
             for key, value in state.items() if not table_of(key)}
    step = {"step": torch.tensor(0)}
    read_state(found, {"model": dense, "train": step}, metadata)
    if int(step["step"]) != manifest.step:
        raise CheckpointError(f"{found}: manifest says step {manifest.step}, data says {int(step['step'])}")
    state.update(dense)
    for key in [k for k in state if table_of(k)]:  # one table at a time: see the module docstring
        state[key] = torch.empty(state[key].shape, dtype=state[key].dtype)
        read_state(found, {"model": {key: state[key]}}, metadata)
    model.load_state_dict(state, assign=True)  # the tables become the tensors just read (no copy)
    return Unsharded(model.eval(), cfg, manifest.step, found, manifest)


def load_unsharded(path: str | Path) -> DLRMTrain:
    """The checkpoint's model as a plain CPU module (full tables), in eval mode."""
    return read_unsharded(path).model
