"""``dlrm-export CKPT --since EXPORT [--delta D ...] --out DELTA``: what changed since an export, written as a delta.

The checkpoint is turned into the program state a full export of it would hold (the same
ServingDLRM, in the base's precision: float32, or int8 row-wise quantized by the same
fbgemm kernel), and compared with the base export's program state after the chain given so
far is applied (delta.py). A table row is carried if it differs in any bit (float) or any
byte of its quantized form (int8: codes, scale and bias), so applying the delta reproduces
exactly what a full export holds; every other tensor (the dense weights, a managed table's
remapper state) is carried in full. A checkpoint of another schema or other table shapes is
refused by name before its tables are read, and so is a model section (interaction, MLPs, arch...)
other than the base's: the delta's tensors are written into the base's program.

The delta names the identity of the last link it applies to and of the base export
(delta_format.py); its data files are written first and delta.json last (atomically), so a
directory is a delta only once complete.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

import torch

from dlrm_dist.fileio import atomic_write_bytes, atomic_write_text, disk_full
from dlrm_dist.serving.delta import ChainedExport, check_base, load_chain, table_buffers
from dlrm_dist.serving.delta_format import (COMPARED, DELTA_FILE, DTYPE_NAMES, ChangedRows, DataFile,
                                            DeltaArgumentError, DeltaError, DeltaManifest, FullTensor, Link,
                                            sha256_bytes, tensor_bytes)
from dlrm_dist.serving.manifest import MANIFEST_FILE, MODEL_FILE, ExportManifest, FrozenRemapper

COMPARE_CHUNK = 64 << 20  # bytes of rows compared at once

if TYPE_CHECKING:  # the training stack is imported where a checkpoint or model is read
    from dlrm_dist.config.sections import Config
    from dlrm_dist.model.dlrm import DLRM


@dataclass(frozen=True)
class TableChange:
    """How many of a table's rows a delta carries."""

    table: str
    changed: int
    rows: int


@dataclass(frozen=True)
class DeltaReport:
    """What was written: the manifest, per table its changed rows, and sizes against a full export."""

    manifest: DeltaManifest
    tables: list[TableChange]
    delta_bytes: int  # delta.json and its data files
    full_export_bytes: int  # the base's model.pt2 (a full export of the same shapes)


def _resolved(path: str | Path) -> Path:
    return Path(path).resolve()


def check_out(out: str | Path, since: str | Path, deltas: Sequence[str | Path]) -> None:
    """Refuses (exit 2) an --out that is the base or a link of the chain, or already holds an export or a delta,
    and a delta given as --since."""
    check_base(since)
    target = _resolved(out)
    for used in [since, *deltas]:
        if _resolved(used) == target:
            raise DeltaArgumentError(f"--out {out}: that is {used}, part of the chain the delta applies to; "
                                     "write the delta to a new directory")
    for name, what in ((DELTA_FILE, "a delta"), (MANIFEST_FILE, "an export")):
        if (target / name).exists():
            raise DeltaArgumentError(f"--out {out} already holds {what} ({name}): a delta is written to a new "
                                     "directory (chains name each link by its identity; rewriting one breaks them)")


def _stored_schema_check(checkpoint: str | Path, fingerprint: str) -> None:
    """The checkpoint's stored schema against the base's, before any of its tables is read."""
    from dlrm_dist.checkpoint.manifest import Manifest, schema_of
    from dlrm_dist.checkpoint.unsharded import find_checkpoint

    stored = schema_of(Manifest.read(find_checkpoint(checkpoint)))
    if stored is not None:
        _same_schema(stored.fingerprint(), fingerprint, f"the checkpoint {checkpoint}")


@dataclass(frozen=True)
class ServingState:
    """What a full export of a model would hold: its program state and its managed tables' remapper entries."""

    tensors: dict[str, torch.Tensor]
    remappers: dict[str, FrozenRemapper]


def serving_state(dlrm: "DLRM", config: "Config", base: ExportManifest, origin: str, release_float: bool = False,
                  shards: Optional[dict[str, list[int]]] = None) -> ServingState:
    """The program state a full export of ``dlrm`` in the base's precision holds (serving/model.py's ServingDLRM,
    the managed tables' remappers over their training ``shards``), refused by name when its schema or its
    model section is not the base's."""
    from dlrm_dist.features.schema import FeatureSchema
    from dlrm_dist.serving.export import remapper_entries
    from dlrm_dist.serving.model import ServingDLRM

    schema = FeatureSchema.from_dict(config.features, f"{origin}'s schema")
    _same_schema(schema.fingerprint(), base.schema_fingerprint, origin)
    _same_model(config, base, origin)
    model = ServingDLRM(dlrm, base.quantize, release_float=release_float, shards=shards).eval()
    return ServingState(model.state_dict(), remapper_entries(model, schema))


def _same_model(config: "Config", base: ExportManifest, origin: str) -> None:
    """The delta's weights go into the base's program: a model section that could build another program
    (another interaction, arch, MLP, even with tensors of the same shapes) is refused, each key named."""
    from dlrm_dist.config.loader import to_dict

    ours = json.loads(json.dumps(to_dict(config).get("model", {})))
    theirs = base.config.get("model", {})
    changed = [f"model.{k}: {theirs.get(k)!r} in the export, {ours.get(k)!r} in {origin}"
               for k in sorted(set(ours) | set(theirs)) if ours.get(k) != theirs.get(k)]
    if changed:
        raise DeltaError(f"{origin}'s model is configured otherwise than the export's ({'; '.join(changed[:5])}): a "
                         "delta carries weights for the export's program; make a full export (dlrm-export without "
                         "--since)")


def _same_schema(found: str, base: str, origin: str) -> None:
    if found != base:
        raise DeltaError(f"{origin} has schema {found}, the export it would apply to schema {base}: "
                         "a delta carries rows of the same tables; make a full export (dlrm-export without --since)")


def _shape_problems(new: dict[str, torch.Tensor], old: dict[str, torch.Tensor]) -> list[str]:
    """Where the two program states differ in names, dtypes or shapes, tables first."""
    order = lambda k: (not k.startswith("table_"), k)  # noqa: E731
    out = [f"{k}: only in the checkpoint's program" for k in sorted(set(new) - set(old), key=order)]
    out += [f"{k}: only in the export's program" for k in sorted(set(old) - set(new), key=order)]
    out += [f"{k}: {DTYPE_NAMES.get(new[k].dtype)} {list(new[k].shape)} in the checkpoint, "
            f"{DTYPE_NAMES.get(old[k].dtype)} {list(old[k].shape)} in the export"
            for k in sorted(set(new) & set(old), key=order)
            if (new[k].dtype, new[k].shape) != (old[k].dtype, old[k].shape)]
    return out


def changed_rows(new: torch.Tensor, old: torch.Tensor, chunk_bytes: int = COMPARE_CHUNK) -> torch.Tensor:
    """Row numbers (int64, increasing) where ``new`` and ``old`` differ in any byte: bit-exact for
    float rows (-0.0 against 0.0 is a change: the delta reproduces the export bit for bit). Compared a
    block of rows at a time, so the comparison's own memory stays ~``chunk_bytes`` whatever the table."""
    a = new.detach().contiguous().reshape(new.shape[0], -1).view(torch.uint8)
    b = old.detach().contiguous().reshape(old.shape[0], -1).view(torch.uint8)
    step = max(1, chunk_bytes // max(a.shape[1], 1))
    found = [(a[lo:lo + step] != b[lo:lo + step]).any(dim=1).nonzero().reshape(-1) + lo
             for lo in range(0, a.shape[0], step)]
    return torch.cat(found).to(torch.int64) if found else torch.zeros(0, dtype=torch.int64)


class _Files:
    """The delta's data files, numbered in writing order, each written atomically with its sha256."""

    def __init__(self, out: Path) -> None:
        self.out, self.count, self.total = out, 0, 0
        (out / "data").mkdir(parents=True, exist_ok=True)

    def write(self, tensor: torch.Tensor) -> DataFile:
        data = tensor_bytes(tensor)
        name = f"data/{self.count}.bin"
        self.count += 1
        self.total += len(data)
        atomic_write_bytes(self.out / name, data)
        return DataFile(file=name, bytes=len(data), sha256=sha256_bytes(data))


def export_delta(checkpoint: str | Path, since: str | Path, out: str | Path, deltas: Sequence[str | Path] = (),
                 quantize: Optional[str] = None) -> DeltaReport:
    """Writes ``out``: a delta of ``checkpoint`` against ``since`` with ``deltas`` applied (see the module docstring).

    ``quantize``: None takes the base's precision; another than the base's is refused (exit 2)."""
    from dlrm_dist.checkpoint.unsharded import read_unsharded
    from dlrm_dist.features.schema import FeatureSchema
    from dlrm_dist.serving.export import checkpoint_shards

    base = _base(since, out, deltas, quantize)
    origin = f"the checkpoint {checkpoint}"
    _stored_schema_check(checkpoint, base.manifest.schema_fingerprint)
    found = read_unsharded(checkpoint)
    shards = checkpoint_shards(found, FeatureSchema.from_dict(found.config.features, f"{origin}'s schema"))
    new = serving_state(found.model.model, found.config, base.manifest, origin, release_float=True, shards=shards)
    return write_delta(new, base, since, out, found.step, str(found.path))


def delta_of_model(dlrm: "DLRM", config: "Config", since: str | Path, out: str | Path,
                   deltas: Sequence[str | Path] = (), *, step: int = 0, checkpoint: str = "(in memory)",
                   shards: Optional[dict[str, list[int]]] = None) -> DeltaReport:
    """The same for a model in memory (``dlrm`` trained with ``config``, resolved), in the base's precision;
    ``shards`` as export_model takes them (default: one remapper shard per managed table)."""
    base = _base(since, out, deltas, None)
    new = serving_state(dlrm, config, base.manifest, "the model", shards=shards)
    return write_delta(new, base, since, out, step, checkpoint)


def _base(since: str | Path, out: str | Path, deltas: Sequence[str | Path], quantize: Optional[str]) -> ChainedExport:
    """The export with the chain applied, after --out and --quantize are checked."""
    check_out(out, since, deltas)
    base = load_chain(since, deltas)
    if quantize is not None and quantize != base.manifest.quantize:
        raise DeltaArgumentError(f"--quantize {quantize}: the export {since} is {base.manifest.quantize} and a delta "
                                 f"is in its base's precision (give --quantize {base.manifest.quantize}, or none at all)")
    return base


def write_delta(found: ServingState, base: ChainedExport, since: str | Path, out: str | Path, step: int,
                checkpoint: str) -> DeltaReport:
    """Writes the delta from ``base``'s program state (the chain applied) to ``found`` (a full export's) at ``out``."""
    new, old = found.tensors, base.module.state_dict()
    problems = _shape_problems(new, old)
    if problems:
        raise DeltaError(f"{checkpoint}'s model is not the export {since}'s shape: {'; '.join(problems[:5])} "
                         "(a delta carries rows of the same tables; make a full export)")
    out = Path(out)
    files = _Files(out)
    tables = table_buffers(base.manifest)
    rows, state, report = {}, {}, []
    with disk_full(out / "data"):
        for key in sorted(new):
            if key in tables:
                ids = changed_rows(new[key], old[key])
                rows[key] = ChangedRows(table=tables[key], rows=new[key].shape[0], width=new[key][0].numel(),
                                        dtype=DTYPE_NAMES[new[key].dtype], changed=len(ids), ids=files.write(ids),
                                        values=files.write(new[key][ids]))
                report.append(TableChange(tables[key], len(ids), new[key].shape[0]))
            else:
                state[key] = FullTensor(dtype=DTYPE_NAMES[new[key].dtype], shape=list(new[key].shape),
                                        data=files.write(new[key]))
    manifest = _manifest(base, since, checkpoint, step, rows, state, found.remappers)
    text = manifest.to_json()
    with disk_full(out / DELTA_FILE, len(text)):
        atomic_write_text(out / DELTA_FILE, text)
    return DeltaReport(manifest, report, files.total + len(text.encode()), manifest.full_export_bytes)


def _manifest(base: ChainedExport, since: str | Path, checkpoint: str, step: int, rows: dict[str, ChangedRows],
              state: dict[str, FullTensor], remappers: dict[str, FrozenRemapper]) -> DeltaManifest:
    root = Link(kind="export", identity=base.base_identity, step=base.base_step, link=0)
    last = base.chain[-1] if base.chain else None
    applies_to = root if last is None else Link(kind="delta", identity=last.identity, step=last.step, link=last.link)
    quantize = base.manifest.quantize
    return DeltaManifest(base=root, applies_to=applies_to, link=base.link + 1, checkpoint=checkpoint, step=step,
                         quantize=quantize, compared=COMPARED[quantize],
                         schema_fingerprint=base.manifest.schema_fingerprint, rows=rows, state=state,
                         remappers=remappers,
                         full_export_bytes=os.path.getsize(Path(since) / MODEL_FILE))
