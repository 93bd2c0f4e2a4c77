"""Loading an export: checked (format, version, checksum), then ``torch.export.load``.

Needs torch alone (json and hashlib besides): a server can copy this file, or do the same
in three lines. An export is a directory:

    DIR/model.pt2      the program (torch.export.save)
    DIR/export.json    the manifest: format, version, inputs, feature names, quantization,
                       the training config (schema included), model.pt2's sha256
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dlrm_dist.errors import EXIT_BAD_STATE, DlrmError

FORMAT = "dlrm_dist.export"
VERSION = 1
MODEL_FILE = "model.pt2"
MANIFEST_FILE = "export.json"


class ExportError(DlrmError):
    """An export is missing, damaged, foreign or of an unknown version; the message says which."""

    exit_code = EXIT_BAD_STATE


@dataclass
class LoadedExport:
    """A checked export: the callable program and its manifest."""

    module: torch.nn.Module
    manifest: dict[str, Any]

    @property
    def feature_names(self) -> list[str]:
        return list(self.manifest["sparse_features"])


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_manifest(directory: str | Path) -> dict[str, Any]:
    """The manifest of the export at ``directory``, checked to be ours and of a version we read."""
    d = Path(directory)
    path = d / MANIFEST_FILE
    if not d.is_dir():
        raise ExportError(f"{d} is not a directory (an export is a directory written by dlrm-export)")
    if not path.is_file():
        raise ExportError(f"{d} is not a dlrm_dist export: it has no {MANIFEST_FILE}")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ExportError(f"{path} is damaged: not readable JSON ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise ExportError(f"{path} is not a dlrm_dist export manifest (format {found!r}, expected {FORMAT!r})")
    if manifest.get("version") != VERSION:
        raise ExportError(f"{path} is export version {manifest.get('version')!r}; this dlrm_dist reads version {VERSION}")
    return manifest


def load_export(directory: str | Path) -> LoadedExport:
    """The export at ``directory``, refused by name if it is missing, damaged or foreign."""
    manifest = read_manifest(directory)
    model = Path(directory) / MODEL_FILE
    if not model.is_file():
        raise ExportError(f"{directory}: {MODEL_FILE} is missing")
    digest = sha256(model)
    if digest != manifest.get("model_sha256"):
        raise ExportError(f"{model} is damaged: its sha256 {digest[:12]}... is not the manifest's "
                          f"{str(manifest.get('model_sha256'))[:12]}... (re-run dlrm-export)")
    try:
        program = torch.export.load(str(model))
    except Exception as e:  # noqa: BLE001 - any unpickling/format failure is a damaged export
        raise ExportError(f"{model} cannot be loaded by torch.export ({type(e).__name__}: {e})") from None
    return LoadedExport(program.module(), manifest)
