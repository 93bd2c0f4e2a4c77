"""Serving tests' helpers: exports made in-process, and export -> predict through the CLIs.

``make_export`` builds a model from a job's arguments (random weights, no checkpoint, no
process group) and writes it with dlrm-export's own code (serving.export.export_model);
``make_managed_export`` does so for a model with managed features whose remappers admitted ids;
``export_and_predict`` runs the two CLIs as a user would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Optional

import torch

ROOT = Path(__file__).resolve().parents[1]
MIXED_SCHEMA = ROOT / "tests" / "schemas" / "mixed.toml"
# The mixed schema (shared table, dims 8 and 16, mean pooling) as a small job with multi-hot bags.
MIXED_JOB = [f"--data.schema={MIXED_SCHEMA}", "--model.interaction=cat", "--model.bottom_mlp=5-16-8",
             "--model.top_mlp=16-1", "--train.global_batch_size=64", "--synthetic.eval_batches=2",
             "--synthetic.pooling_factor=3", "--synthetic.variable_pooling=true", "--train.progress=false"]


def build_dlrm(args: list[str], seed: int = 0):
    """The resolved config and an unsharded CPU DLRM of a job, tables drawn as training draws them."""
    from dlrm_dist.config import load_config
    from dlrm_dist.distributed.weights import init_embedding_weights
    from dlrm_dist.model import build_model
    from dlrm_dist.training.build import resolve

    cfg, _, spec = resolve(load_config(args))
    model = build_model(spec, seed=seed, device=torch.device("cpu"))
    init_embedding_weights(model, {t.name: t.rows for t in spec.tables}, seed)
    return cfg, model.model.eval()


def make_export(out: Path, args: Optional[list[str]] = None, quantize: str = "none", **kw):
    """An export of a randomly initialised model of the job ``args`` (default: the mixed schema)."""
    from dlrm_dist.serving.export import export_model

    cfg, dlrm = build_dlrm(args or MIXED_JOB)
    return export_model(dlrm, cfg, out, quantize, progress=False, **kw)


MANAGED_SCHEMA = ROOT / "tests" / "schemas" / "managed.toml"
# An LFU and an LRU managed feature (raw 64-bit ids, remapped) beside a hashed one.
MANAGED_JOB = [f"--data.schema={MANAGED_SCHEMA}", "--model.bottom_mlp=2-8", "--model.embedding_dim=8",
               "--model.top_mlp=16-1", "--train.global_batch_size=32", "--synthetic.eval_batches=2",
               "--train.progress=false"]


def make_managed_export(out: Path, quantize: str = "none", steps: int = 6, **kw):
    """An export of a managed model whose remappers admitted ids: ``steps`` training-mode forwards of the
    synthetic stream (ids counted, admitted, evicted; an unsharded model: one shard per table)."""
    from dlrm_dist.data.resolve import build_data
    from dlrm_dist.features.schema import FeatureSchema
    from dlrm_dist.serving.export import export_model

    cfg, dlrm = build_dlrm(MANAGED_JOB)
    data = build_data(cfg, FeatureSchema.from_dict(cfg.features))
    dlrm.train()
    with torch.no_grad():
        for batch in data.batches("train", cfg.train.global_batch_size, 0, 1, steps):
            dlrm(batch.dense_features, batch.sparse_features)
    return export_model(dlrm.eval(), cfg, out, quantize, progress=False, **kw)


def _cli(module: str, *args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert proc.returncode == 0, f"{module} {' '.join(args)}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def export_and_predict(ckpt: Path, out: Path, data_dir: Path, split: str) -> dict:
    """``dlrm-export CKPT --out OUT`` then ``dlrm-predict OUT --data DATA --split SPLIT --json``: its report."""
    _cli("dlrm_dist.cli.export_main", str(ckpt), "--out", str(out), "--no-progress")
    report = _cli("dlrm_dist.cli.predict_main", str(out), "--data", str(data_dir), "--split", split,
                  "--out", str(out / "scores.npy"), "--no-progress", "--json")
    return json.loads(report)


# -- crafted archives (what someone who can write the export directory could do) ------------------
class Payload:
    """Unpickled, it creates ``marker``: proof that a loader ran code from a file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def archive_entries(export: Path) -> tuple[str, dict[str, bytes]]:
    """model.pt2's root folder and its entries by their name under it."""
    import zipfile

    with zipfile.ZipFile(export / "model.pt2") as z:
        names = z.namelist()
        root = names[0].split("/", 1)[0]
        return root, {n[len(root) + 1:]: z.read(n) for n in names}


def write_archive(export: Path, root: str, entries: dict[str, bytes], fix_checksum: bool = True) -> None:
    """model.pt2 rewritten with ``entries`` (stored, 64-byte aligned as torch writes them); with
    ``fix_checksum`` export.json's model_sha256 is recomputed, as an attacker would."""
    import hashlib
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for name, data in entries.items():
            z.writestr(f"{root}/{name}", data)
    (export / "model.pt2").write_bytes(buf.getvalue())
    if fix_checksum:
        manifest = json.loads((export / "export.json").read_text())
        manifest["model_sha256"] = hashlib.sha256(buf.getvalue()).hexdigest()
        (export / "export.json").write_text(json.dumps(manifest))


def pickled(value) -> bytes:
    import io

    buf = io.BytesIO()
    torch.save(value, buf)
    return buf.getvalue()
