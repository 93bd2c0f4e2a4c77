"""Serving: a 2-rank checkpoint exported (torch.export), scored, quantized, and refused when damaged.

The same process group also trains a model with managed features (tests/managed_serving_helper.py)
and scores it with the sharded model in eval mode: its export (float and int8) must score alike.

The sharded model's own scores (2 ranks, the training pipeline, tables split row-wise and
table-wise) are the reference the exported program must reproduce within 1e-6. dlrm-export and
dlrm-predict run in this process through their main(argv) (a fresh Python would load torch
again for each); only the import-isolation test needs a process of its own.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dlrm_dist.cli.predict_main import main as predict_main
from tests.cli_helper import run_here
from tests.dist_helper import run_ranks
from tests.launch_helper import DemoRun
from tests.managed_serving_helper import train_and_score
from tests.small_job import SMALL_JOB

pytestmark = pytest.mark.multiprocess
ROOT = Path(__file__).resolve().parents[2]
# Mixed placement (the planner's), mean pooling via the mixed schema would change the inputs:
# keep the small job, with multi-hot bags so that offsets matter.
JOB = SMALL_JOB + ["--train.eval_interval=0", "--synthetic.eval_batches=3", "--synthetic.pooling_factor=3",
                   "--synthetic.variable_pooling=true", "--train.steps=12"]


def _sharded_scores(env, ckpt: Path, out: Path) -> None:
    """The sharded model's probabilities on the eval split, in global batch order (rank 0 saves)."""
    import torch.distributed as dist

    from dlrm_dist.config import load_config
    from dlrm_dist.data.prefetch import Prefetcher
    from dlrm_dist.training.build import build_trainer, prepare

    cfg = load_config(JOB + ["--inference-only", f"--checkpoint={ckpt}", f"--run-dir={out}/probe"])
    prepared = prepare(cfg, env)
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
        torch.save({"probs": probs[labels >= 0], "labels": labels[labels >= 0]}, out / "sharded.pt")


def _train_and_score(out: str) -> None:
    """Rank side: the job trained to a checkpoint (the trainer's own entry), then that checkpoint
    restored into a fresh sharded model and scored, in one process group."""
    from dlrm_dist.distributed.env import DistEnv, init_distributed, teardown
    from dlrm_dist.logs import init_logging
    from tests.multiprocess.train_worker import run_job

    env, root = DistEnv.from_environ(device="cpu"), Path(out)
    init_logging(env.rank)
    init_distributed(env, timeout_s=120)
    try:
        run_job(env, root, "run", JOB + [f"--checkpoint-dir={root / 'ckpt'}"])
        _sharded_scores(env, root / "ckpt", root)
        managed = train_and_score(env, root / "managed")  # (managed features: row-wise, remappers per rank)
        if env.is_main:
            torch.save(managed, root / "managed" / "dmp_scores.pt")
    finally:
        teardown()


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """A 2-rank checkpoint (the planner's mixed placement), its summary, and the sharded model's scores."""
    tmp = tmp_path_factory.mktemp("serving")
    run_ranks(_train_and_score, 2, str(tmp), timeout=600)
    return {"dir": tmp, "ckpt": tmp / "ckpt", "summary": json.loads((tmp / "run" / "summary.json").read_text()),
            "sharded": torch.load(tmp / "sharded.pt")}


@pytest.fixture(scope="module")
def exported(trained) -> Path:
    from dlrm_dist.cli.export_main import main as export_main

    out = trained["dir"] / "export"
    code, stdout, stderr = run_here(export_main, str(trained["ckpt"]), "--out", str(out), "--no-progress")
    assert code == 0, stderr[-3000:]
    assert "4 table(s)" in stdout, stdout
    return out


def test_exported_scores_equal_the_sharded_model(trained, exported) -> None:
    preds = trained["dir"] / "preds.npy"
    code, stdout, stderr = run_here(predict_main, str(exported), "--split", "val", "--out", str(preds),
                                       "--json", "--no-progress")
    assert code == 0, stderr[-3000:]
    scores = np.load(preds)
    want = trained["sharded"]["probs"].numpy()
    assert scores.shape == want.shape and len(scores) == 3 * 64
    assert np.abs(scores - want).max() < 1e-6
    report = json.loads(stdout)
    assert report["samples"] == len(scores)
    assert report["metrics"]["auc"] == pytest.approx(trained["summary"]["eval_auc"], abs=1e-6)
    assert report["metrics"]["logloss"] == pytest.approx(trained["summary"]["eval_logloss"], abs=1e-6)


def test_predict_writes_csv_with_labels(trained, exported) -> None:
    out = trained["dir"] / "preds.csv"
    code, stdout, stderr = run_here(predict_main, str(exported), "--split", "val", "--out", str(out), "--no-progress")
    assert code == 0, stderr[-3000:]
    table = np.loadtxt(out, delimiter=",", skiprows=1)
    assert table.shape == (192, 2)
    assert np.array_equal(table[:, 1], trained["sharded"]["labels"].numpy())
    assert "auc 0." in stdout


def test_the_export_loads_with_torch_and_pydantic_alone(trained, exported, managed_exports) -> None:
    """load_export (manifest validated, archive inspected, remappers checked) needs no TorchRec and
    nothing of training; a managed export scores raw 64-bit ids there as here."""
    from dlrm_dist.serving.load import load_export

    raw = [0, 2**62 + 7, 2**63 - 2, 12345]  # managed features' raw ids (mostly never seen: miss rows)
    here = load_export(managed_exports["none"])
    with torch.no_grad():
        want = here.module(torch.zeros(3, 2), [torch.tensor(raw)] * 2 + [torch.tensor([0, 1, 2, 3])],
                           [torch.tensor([0, 2, 2, 4])] * 3).tolist()
    code = f"""
import sys, torch
sys.modules['torchrec'] = None
sys.modules['fbgemm_gpu'] = None
from dlrm_dist.serving.load import load_export
loaded = load_export({str(exported)!r})
n = len(loaded.feature_names)
# 3 samples per feature: bags [0, 1], [] and [2, 3]
out = loaded.module(torch.zeros(3, loaded.manifest.dense_features), [torch.tensor([0, 1, 2, 3]) for _ in range(n)],
                    [torch.tensor([0, 2, 2, 4]) for _ in range(n)])
assert out.shape == (3,) and bool(((out > 0) & (out < 1)).all())
managed = load_export({str(managed_exports["none"])!r})
got = managed.module(torch.zeros(3, 2), [torch.tensor({raw!r})] * 2 + [torch.tensor([0, 1, 2, 3])],
                     [torch.tensor([0, 2, 2, 4])] * 3).tolist()
assert got == {want!r}, got
loaded_modules = [k for k, m in sys.modules.items() if m is not None]  # (the two blocked ones are None)
extra = sorted(k for k in loaded_modules if k.startswith(("torchrec", "fbgemm_gpu", "dlrm_dist.")))
assert extra == ["dlrm_dist.errors", "dlrm_dist.serving", "dlrm_dist.serving.archive", "dlrm_dist.serving.load",
                 "dlrm_dist.serving.manifest", "dlrm_dist.serving.remap", "dlrm_dist.validation"], extra
print("ok")
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-2000:]


@pytest.fixture(scope="module")
def managed_exports(trained) -> dict[str, Path]:
    """The 2-rank managed checkpoint exported float and int8 (dlrm-export in this process)."""
    from dlrm_dist.cli.export_main import main as export_main

    root, out = trained["dir"] / "managed", {}
    for quantize in ("none", "int8"):
        out[quantize] = root / f"export-{quantize}"
        code, _, stderr = run_here(export_main, str(root / "ckpt"), "--out", str(out[quantize]), "--quantize",
                                   quantize, "--no-progress")
        assert code == 0, stderr[-3000:]
    return out


def test_a_two_rank_managed_checkpoint_exports_scoring_as_the_dmp_model_evaluates(trained, managed_exports) -> None:
    """Managed features trained on 2 ranks (each rank's remapper owns a block of the id space and half
    the rows), exported float and int8: the program scores each rank's eval batches, and a batch of
    ids never seen in training, as the sharded model does in eval mode; dlrm-predict --split val
    scores the eval split as the sharded model did, in global batch order."""
    from dlrm_dist.serving.load import load_export

    root = trained["dir"] / "managed"
    record = torch.load(root / "dmp_scores.pt", weights_only=False)
    per_rank = len(record["batches"]) // 2  # each rank: its eval batches, then its batch of new ids
    for quantize, tol in (("none", 1e-6), ("int8", 2e-3)):
        out = managed_exports[quantize]
        loaded = load_export(out)
        assert {t: r.shard_offsets for t, r in loaded.manifest.remappers.items()} == {"t_item": [0, 5, 10],
                                                                                     "t_user": [0, 6, 12]}
        with torch.no_grad():
            for inputs, probs in record["batches"]:
                assert (loaded.module(*inputs) - probs).abs().max() < tol, quantize
        preds = root / f"val-{quantize}.npy"
        code, _, stderr = run_here(predict_main, str(out), "--split", "val", "--out", str(preds), "--no-progress")
        assert code == 0, stderr[-3000:]
        in_order = [record["batches"][r * per_rank + b][1] for b in range(per_rank - 1) for r in range(2)]
        assert np.abs(np.load(preds) - torch.cat(in_order).numpy()).max() < tol, quantize
    admitted = dict(loaded.module.named_buffers())[f"remap_{sorted(loaded.manifest.tables).index('t_user')}_ids"]
    fresh = [record["batches"][r * per_rank + per_rank - 1][0][1][0][::2] for r in range(2)]
    assert loaded.feature_names[0] == "user" and not any(torch.isin(f, admitted).any() for f in fresh)


def test_int8_auc_within_half_a_point_of_float_on_the_demo_data(demo_run: DemoRun, tmp_path) -> None:
    """The demo's model (26 tables, dim 16; the session's demo run, 800 steps) exported with int8
    tables vs float on its eval split."""
    from dlrm_dist.cli.export_main import main as export_main

    assert demo_run.proc.returncode == 0, demo_run.proc.stderr[-3000:]
    code, stdout, stderr = run_here(export_main, str(demo_run.checkpoint_dir), "--out", str(tmp_path / "int8"),
                                       "--quantize", "int8", "--json", "--no-progress")
    assert code == 0, stderr[-3000:]
    q = json.loads(stdout)["quantization"]
    assert q["samples"] == 16 * 2048 and q["float_auc"] > 0.75
    assert abs(q["int8_auc"] - q["float_auc"]) <= 0.005, q
    # dlrm-export itself holds int8 to its limits (defaults) and records them with what it measured.
    assert q["measured"] and q["max_auc_loss"] == 0.005 and q["max_logloss_increase"] == 0.01
    assert q["int8_logloss"] - q["float_logloss"] <= 0.01, q
    # The int8 program holds uint8 rows (codes + scale + bias): dim 16 -> 24 bytes a row.
    assert all(shape[1] == 24 for shape in json.loads(stdout)["tables"].values())


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
    code, _, stderr = run_here(predict_main, str(d), "--no-progress")
    assert code == 4 and all(w in stderr for w in words), stderr
