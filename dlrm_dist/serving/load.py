"""Loading an export: its manifest validated, its archive inspected to be data, then loaded.

Needs torch and pydantic alone (no TorchRec, nothing else of dlrm_dist's training stack).
An export is a directory:

    DIR/model.pt2      the program (torch.export.save)
    DIR/export.json    the manifest (manifest.py): format, version, inputs, feature names,
                       the fitted schema's fingerprint, quantization and what it cost,
                       the training config (schema included), model.pt2's sha256,
                       and the pipeline's files with their sha256s
    DIR/vocab/<table>.json  the vocabularies (raw-row scoring: pipeline.py checks them)

A managed table's frozen remapper (serving/remap.py) is four int64 buffers of the program,
described by export.json's ``remappers``; they are checked on load (``check_remappers``) to be a
state TorchRec's remapper could have held, so an edited array is refused by table and array.

The sha256 is a damage check only: whoever can rewrite model.pt2 can rewrite export.json.
What keeps a crafted model.pt2 from running code is archive.py: the file is read once, its
entries are checked to be plain tensors and a program of PyTorch operators, and exactly
those bytes are what ``torch.export.load`` reads.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch

from dlrm_dist.serving.archive import load_checked
from dlrm_dist.serving.manifest import (FORMAT, MANIFEST_FILE, MODEL_FILE, VERSION, ExportError, ExportManifest,
                                        read_manifest)
from dlrm_dist.serving.remap import ARRAYS, check_frozen, state_name

__all__ = ["FORMAT", "MANIFEST_FILE", "MODEL_FILE", "VERSION", "ExportError", "LoadedExport", "load_export",
           "read_manifest", "sha256", "sha256_bytes"]


@dataclass
class LoadedExport:
    """A checked export: the callable program and its manifest."""

    module: torch.nn.Module
    manifest: ExportManifest

    @property
    def feature_names(self) -> list[str]:
        return self.manifest.feature_names


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def disagreements(program: torch.export.ExportedProgram, manifest: ExportManifest) -> list[str]:
    """Where the manifest's description (tables, inputs) differs from the program's own."""
    out = []
    tables = {f"table_{i}": name for i, name in enumerate(sorted(manifest.tables))}
    held = {k: tuple(v.shape) for k, v in program.state_dict.items() if k.startswith("table_")}
    if set(held) != set(tables):
        out.append(f"tables: the manifest names {len(tables)}, the program holds {len(held)}")
    else:
        out += [f"tables.{tables[k]}: {list(manifest.tables[tables[k]])} in the manifest, {list(shape)} in the program"
                for k, shape in sorted(held.items()) if tuple(manifest.tables[tables[k]]) != shape]
    out += _remapper_disagreements(program, manifest, tables)
    inputs = program.graph_signature.user_inputs
    if len(inputs) != 1 + 2 * len(manifest.sparse_features):
        out.append(f"sparse_features: {len(manifest.sparse_features)} in the manifest, the program takes "
                   f"{(len(inputs) - 1) / 2:g}")
    dense = next((n.meta.get("val") for n in program.graph.nodes if n.op == "placeholder" and inputs
                  and n.name == inputs[0]), None)
    width = dense.shape[1] if dense is not None and dense.dim() == 2 else None
    if width != manifest.dense_features:
        out.append(f"dense_features: {manifest.dense_features} in the manifest, {width} in the program")
    return out


def _remapper_disagreements(program: torch.export.ExportedProgram, manifest: ExportManifest,
                            tables: dict[str, str]) -> list[str]:
    """Where the program's frozen remappers (remap_<i>_*) differ from manifest.remappers'."""
    index = {name: k.removeprefix("table_") for k, name in tables.items()}
    want = {state_name(int(index[t]), a) for t in manifest.remappers if t in index for a in ARRAYS}
    held = {k for k in program.state_dict if k.startswith("remap_")}
    if held != want:
        return [f"remappers: the manifest names {len(manifest.remappers)} managed table(s), the program holds "
                f"{len(held) // len(ARRAYS)} remapper(s)"]
    return []


def check_remappers(module: torch.nn.Module, manifest: ExportManifest, where: Path) -> None:
    """Refuses (ExportError naming the table and array) frozen remappers that are not a state TorchRec's
    could have held: with the rows they give the program looks up, a tampered array scores other rows."""
    buffers = dict(module.named_buffers())
    index = {name: i for i, name in enumerate(sorted(manifest.tables))}
    problems = [p for t, r in sorted(manifest.remappers.items())
                for p in check_frozen(t, {a: buffers[state_name(index[t], a)] for a in ARRAYS}, r.shard_offsets,
                                      r.admitted)]
    if problems:
        raise ExportError(f"{where} is damaged or edited: {'; '.join(problems)} (re-run dlrm-export)")


def load_export(directory: str | Path) -> LoadedExport:
    """The export at ``directory``, refused by name if it is missing, damaged, foreign or not plain data."""
    manifest = read_manifest(directory)
    model = Path(directory) / MODEL_FILE
    if not model.is_file():
        raise ExportError(f"{directory}: {MODEL_FILE} is missing")
    try:
        data = model.read_bytes()  # once: the bytes checked are the bytes loaded
    except OSError as e:
        raise ExportError(f"{model} cannot be read ({e.strerror or e})") from None
    digest = sha256_bytes(data)
    if digest != manifest.model_sha256:
        raise ExportError(f"{model} is damaged: its sha256 {digest[:12]}... is not the manifest's model_sha256 "
                          f"{manifest.model_sha256[:12]}... (re-run dlrm-export)")
    program = load_checked(data)
    problems = disagreements(program, manifest)
    if problems:
        raise ExportError(f"{Path(directory) / MANIFEST_FILE} does not describe its {MODEL_FILE} (one of them was "
                          f"edited): {'; '.join(problems)}")
    try:
        module = program.module()
    except Exception as e:  # noqa: BLE001 - an inconsistent program that passed inspection is still damaged
        raise ExportError(f"{model}: the program cannot be rebuilt ({type(e).__name__}: {str(e)[:300]})") from None
    _check_finite(module, model)
    check_remappers(module, manifest, model)
    return LoadedExport(module, manifest)


def _check_finite(module: torch.nn.Module, model: Path) -> None:
    """Refuses weights holding NaN/inf: they would score NaN for every sample they touch.

    Training stops on a non-finite loss, so such weights come from damage the sha256 cannot
    see (an export.json rewritten with the new digest), never from a finished run."""
    tensors = list(module.named_parameters()) + list(module.named_buffers())
    bad = [name for name, t in tensors if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise ExportError(f"{model}: weights hold NaN or infinite values ({', '.join(bad[:5])}"
                          f"{', ...' if len(bad) > 5 else ''}); re-export from a sound checkpoint")
