"""Serving: a 2-rank checkpoint exported (torch.export), scored, quantized, and refused when damaged.

The sharded model's own scores (2 ranks, the training pipeline, tables split row-wise and
table-wise) are the reference the exported program must reproduce within 1e-6.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.dist_helper import run_ranks
from tests.small_job import SMALL_JOB

pytestmark = pytest.mark.multiprocess
ROOT = Path(__file__).resolve().parents[2]
# Mixed placement (the planner's), mean pooling via the mixed schema would change the inputs:
# keep the small job, with multi-hot bags so that offsets matter.
JOB = SMALL_JOB + ["--train.eval_interval=0", "--synthetic.eval_batches=3", "--synthetic.pooling_factor=3",
                   "--synthetic.variable_pooling=true", "--train.steps=12"]


def _cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def _sharded_scores(ckpt: str, out: str) -> None:
    """Rank side: the sharded model's probabilities on the eval split, in global batch order (rank 0 saves)."""
    import torch.distributed as dist

    from dlrm_dist.config import load_config
    from dlrm_dist.data.prefetch import Prefetcher
    from dlrm_dist.distributed.env import DistEnv, init_distributed, teardown
    from dlrm_dist.training.build import build_trainer, prepare

    env = DistEnv.from_environ(device="cpu")
    cfg = load_config(JOB + ["--inference-only", f"--checkpoint={ckpt}", f"--run-dir={out}/probe"])
    prepared = prepare(cfg, env)
    init_distributed(env)
    try:
        trainer = build_trainer(env, prepared)
        trainer.checkpoints.restore(weights_only=True)
        trainer.model.eval()
        gbs = cfg.train.global_batch_size
        source = prepared.data.batches("eval", gbs, env.rank, env.world_size, prepared.data.eval_batch_count(gbs))
        batches, mine = Prefetcher(source, pin_memory=False), []
        with torch.no_grad():
            while True:
                try:
                    _, logits, labels = trainer.pipeline.progress(batches)
                except StopIteration:
                    break
                mine.append((torch.sigmoid(logits), labels))
        every: list = [None] * env.world_size
        dist.all_gather_object(every, mine)
        if env.is_main:  # batch b is rank 0's slice, then rank 1's: the global batch in order
            probs = torch.cat([every[r][b][0] for b in range(len(mine)) for r in range(env.world_size)])
            labels = torch.cat([every[r][b][1] for b in range(len(mine)) for r in range(env.world_size)])
            torch.save({"probs": probs[labels >= 0], "labels": labels[labels >= 0]}, f"{out}/sharded.pt")
    finally:
        teardown()


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """A 2-rank checkpoint (the planner's mixed placement), its summary, and the sharded model's scores."""
    tmp = tmp_path_factory.mktemp("serving")
    proc = _cli("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "dlrm_dist.train",
                *JOB, f"--checkpoint-dir={tmp / 'ckpt'}", f"--run-dir={tmp / 'run'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_ranks(_sharded_scores, 2, str(tmp / "ckpt"), str(tmp), timeout=300)
    return {"dir": tmp, "ckpt": tmp / "ckpt", "summary": json.loads((tmp / "run" / "summary.json").read_text()),
            "sharded": torch.load(tmp / "sharded.pt")}


@pytest.fixture(scope="module")
def exported(trained) -> Path:
    out = trained["dir"] / "export"
    proc = _cli("-m", "dlrm_dist.cli.export_main", str(trained["ckpt"]), "--out", str(out), "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "4 table(s)" in proc.stdout, proc.stdout
    return out


def test_exported_scores_equal_the_sharded_model(trained, exported) -> None:
    preds = trained["dir"] / "preds.npy"
    proc = _cli("-m", "dlrm_dist.cli.predict_main", str(exported), "--split", "val", "--out", str(preds),
                "--json", "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    scores = np.load(preds)
    want = trained["sharded"]["probs"].numpy()
    assert scores.shape == want.shape and len(scores) == 3 * 64
    assert np.abs(scores - want).max() < 1e-6
    report = json.loads(proc.stdout)
    assert report["samples"] == len(scores)
    assert report["metrics"]["auc"] == pytest.approx(trained["summary"]["eval_auc"], abs=1e-6)
    assert report["metrics"]["logloss"] == pytest.approx(trained["summary"]["eval_logloss"], abs=1e-6)


def test_predict_writes_csv_with_labels(trained, exported) -> None:
    out = trained["dir"] / "preds.csv"
    proc = _cli("-m", "dlrm_dist.cli.predict_main", str(exported), "--split", "val", "--out", str(out), "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = np.loadtxt(out, delimiter=",", skiprows=1)
    assert table.shape == (192, 2)
    assert np.array_equal(table[:, 1], trained["sharded"]["labels"].numpy())
    assert "auc 0." in proc.stdout


def test_the_export_loads_with_torch_and_pydantic_alone(trained, exported) -> None:
    """load_export (manifest validated, archive inspected) needs no TorchRec and nothing of training."""
    code = f"""
import sys, torch
from dlrm_dist.serving.load import load_export
loaded = load_export({str(exported)!r})
n = len(loaded.feature_names)
# 3 samples per feature: bags [0, 1], [] and [2, 3]
out = loaded.module(torch.zeros(3, loaded.manifest.dense_features), [torch.tensor([0, 1, 2, 3]) for _ in range(n)],
                    [torch.tensor([0, 2, 2, 4]) for _ in range(n)])
assert out.shape == (3,) and bool(((out > 0) & (out < 1)).all())
extra = sorted(k for k in sys.modules if k.startswith(("torchrec", "fbgemm_gpu", "dlrm_dist.")))
assert extra == ["dlrm_dist.errors", "dlrm_dist.serving", "dlrm_dist.serving.archive", "dlrm_dist.serving.load",
                 "dlrm_dist.serving.manifest", "dlrm_dist.validation"], extra
print("ok")
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-2000:]


def test_int8_auc_within_half_a_point_of_float_on_the_demo_data(tmp_path) -> None:
    """The demo's model (26 tables, dim 16) trained briefly; int8 tables vs float on its eval split."""
    ckpt = tmp_path / "ckpt"
    proc = _cli("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "dlrm_dist.train",
                "--train.steps=150", "--train.eval_interval=0", "--train.progress=false",
                f"--checkpoint-dir={ckpt}", f"--run-dir={tmp_path / 'run'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = _cli("-m", "dlrm_dist.cli.export_main", str(ckpt), "--out", str(tmp_path / "int8"),
                "--quantize", "int8", "--json", "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    q = json.loads(proc.stdout)["quantization"]
    assert q["samples"] == 16 * 2048 and q["float_auc"] > 0.75
    assert abs(q["int8_auc"] - q["float_auc"]) <= 0.005, q
    # dlrm-export itself holds int8 to its limits (defaults) and records them with what it measured.
    assert q["measured"] and q["max_auc_loss"] == 0.005 and q["max_logloss_increase"] == 0.01
    assert q["int8_logloss"] - q["float_logloss"] <= 0.01, q
    # The int8 program holds uint8 rows (codes + scale + bias): dim 16 -> 24 bytes a row.
    assert all(shape[1] == 24 for shape in json.loads(proc.stdout)["tables"].values())


@pytest.mark.parametrize("damage, words", [
    ("flip", ["model.pt2 is damaged", "sha256"]),
    ("no_manifest", ["not a dlrm_dist export", "export.json"]),
    ("foreign", ["not a dlrm_dist export manifest", "'something.else'"]),
    ("future", ["export version 99", "reads version 2"]),
    ("garbled_manifest", ["export.json is damaged", "JSON"]),
    ("no_model", ["model.pt2 is missing"]),
])
def test_a_damaged_or_foreign_export_is_refused_by_name(exported, tmp_path, damage, words) -> None:
    from dlrm_dist.serving.load import ExportError, load_export

    d = tmp_path / "copy"
    shutil.copytree(exported, d)
    manifest = json.loads((d / "export.json").read_text())
    if damage == "flip":
        data = bytearray((d / "model.pt2").read_bytes())
        data[len(data) // 2] ^= 0xFF
        (d / "model.pt2").write_bytes(bytes(data))
    elif damage == "no_manifest":
        (d / "export.json").unlink()
    elif damage in ("foreign", "future"):
        manifest.update({"format": "something.else"} if damage == "foreign" else {"version": 99})
        (d / "export.json").write_text(json.dumps(manifest))
    elif damage == "garbled_manifest":
        (d / "export.json").write_text('{"format": "dlrm_dist.export", ')
    else:
        (d / "model.pt2").unlink()
    with pytest.raises(ExportError) as e:
        load_export(d)
    assert all(w in str(e.value) for w in words), str(e.value)
    proc = _cli("-m", "dlrm_dist.cli.predict_main", str(d), "--no-progress", timeout=120)
    assert proc.returncode == 4 and all(w in proc.stderr for w in words), proc.stderr
