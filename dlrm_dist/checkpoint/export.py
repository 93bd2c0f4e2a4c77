"""Export: a sharded checkpoint loaded into a plain, unsharded, single-process model.

No process group: DCP reads every shard and reassembles full tensors into the model built
from the checkpoint's own config. ``python -m dlrm_dist.checkpoint.export CKPT OUT.pt``
writes the unsharded state dict for inference elsewhere.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException

from dlrm_dist.checkpoint import optim_state
from dlrm_dist.checkpoint.io import CheckpointError, _failures, _read_metadata
from dlrm_dist.checkpoint.store import latest_checkpoint, read_manifest
from dlrm_dist.config.loader import config_from_dict
from dlrm_dist.model import DLRMTrain, build_model
from dlrm_dist.model.spec import resolved_spec


def _found(path: str | Path) -> Path:
    found = latest_checkpoint(path)
    if found is None:
        raise CheckpointError(f"no complete checkpoint at {path}")
    return found


def _read(found: Path, state: dict) -> None:
    try:
        dcp.load(state, checkpoint_id=str(found), no_dist=True)
    except CheckpointException as e:  # a BaseException: caught deliberately
        raise CheckpointError(f"{found}: the checkpoint could not be read completely: {_failures(e)}") from None


def load_unsharded(path: str | Path) -> DLRMTrain:
    """The checkpoint's model as a plain CPU module (full tables), in eval mode."""
    found = _found(path)
    cfg = config_from_dict(read_manifest(found)["config"], f"{found} manifest")
    model = build_model(resolved_spec(cfg), seed=0, device=torch.device("cpu"))
    state = {"model": model.state_dict()}
    _read(found, state)
    model.load_state_dict(state["model"])
    return model.eval()


def load_embedding_optimizer_state(path: str | Path) -> dict[str, torch.Tensor]:
    """``{'<table>.<state>': full tensor}``: the embedding optimizer's state, whatever the layout
    it was saved from (per-column-shard row-wise state as the whole row's accumulator)."""
    found = _found(path)
    metadata = _read_metadata(found)
    section = optim_state.SECTION + "."
    stored = {k[len(section):]: v for k, v in metadata.state_dict_metadata.items() if k.startswith(section)}
    state = {optim_state.SECTION: {k: torch.empty(tuple(v.size), dtype=v.properties.dtype) for k, v in stored.items()}}
    _read(found, state)
    out = {}
    for key, value in state[optim_state.SECTION].items():
        if key.endswith(optim_state.PER_COLUMN):
            key = key[: -len(optim_state.PER_COLUMN)]
            value = optim_state.whole_rows(value, optim_state.saved_column_widths(metadata, key.split(".", 1)[0]))
        out[key] = value
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dlrm_dist.checkpoint.export", description=__doc__.splitlines()[0])
    p.add_argument("checkpoint")
    p.add_argument("out", help="where to write the unsharded state dict (torch.save)")
    args = p.parse_args(argv)
    try:
        model = load_unsharded(args.checkpoint)
    except CheckpointError as e:
        print(f"export: error: {e}", file=sys.stderr)
        return 2
    torch.save(model.state_dict(), args.out)
    print(f"wrote {args.out}: {sum(t.numel() for t in model.state_dict().values()):,} parameters")
    return 0


if __name__ == "__main__":
    sys.exit(main())
