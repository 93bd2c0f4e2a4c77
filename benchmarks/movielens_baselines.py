"""Baselines on MovieLens-100k (rating >= 4), all on the same time split and features.

    python -m benchmarks.movielens_baselines [--epochs 8] [--eval-interval 39] [--out results.json]

1. the training split's positive rate for every sample (AUC 0.5 by construction);
2. logistic regression in plain PyTorch on the same features: one weight per id of every
   table (an nn.EmbeddingBag of width 1, mean-pooled for genres) plus one per dense feature;
   Adagrad, the epoch with the best validation AUC kept;
3. dlrm_dist's Embedding+MLP preset (residual units) on 2 CPU ranks through torchrun;
4. dlrm_dist's DLRM with the dot interaction on 2 CPU ranks.

Models 3 and 4 train for ``--epochs`` with early stopping on the val split (on by default:
the data has a val split and no step count is given), evaluating every ``--eval-interval``
steps, checkpointing each improving evaluation (keep_last=1 keeps the newest and the best).
Each records best vs last: the best evaluation's step and val AUC, the last one's, and the
test split scored with each model (the best by the run itself at its end, the last by an
``--inference-only`` run of the newest checkpoint). The headline figure is the best model's.
Every figure is test-split AUC, log-loss and accuracy unless named val; the data is fetched
from PyPI into the cache (see tests/multiprocess/test_own_data.py).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dlrm_dist.data.columnar.dataset import ColumnarDataset
from dlrm_dist.data.movielens import fetch_movielens_100k
from dlrm_dist.metrics.eval import EvalMetrics

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CACHE = Path(os.environ.get("DLRM_DIST_CACHE", Path.home() / ".cache" / "dlrm_dist"))
SCHEMA = ROOT / "examples" / "movielens100k.toml"


def prepare() -> Path:
    ratings = fetch_movielens_100k(CACHE / "movielens-100k")
    out = CACHE / "movielens-100k-preprocessed"
    subprocess.run([str(BIN / "dlrm-data"), "preprocess", "--schema", str(SCHEMA), "--input", str(ratings),
                    "--out", str(out), "--no-progress"], check=True, cwd=ROOT)
    return out


def _metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    m = EvalMetrics()
    m.update(logits, labels)
    return m.compute(0).metrics()


def positive_rate(ds: ColumnarDataset) -> dict[str, float]:
    p = float(np.mean(ds.splits["train"].labels))
    test = torch.from_numpy(np.array(ds.splits["test"].labels))
    return _metrics(torch.full_like(test, float(np.log(p / (1 - p)))), test)


class LogisticRegression(nn.Module):
    """A weight per id (per table) and per dense feature, summed with a bias: a linear model."""

    def __init__(self, ds: ColumnarDataset) -> None:
        super().__init__()
        s = ds.schema
        self.features = [(f.name, s.table_names.index(f.table)) for f in s.sparse]
        self.tables = nn.ModuleList(nn.EmbeddingBag(s.table_rows(t), 1, mode=s.features_of(t)[0].pooling)
                                    for t in s.table_names)
        for t in self.tables:
            nn.init.zeros_(t.weight)
        self.dense = nn.Linear(s.num_dense, 1)

    def forward(self, block) -> torch.Tensor:
        out = self.dense(torch.from_numpy(block.dense)).squeeze(1)
        for (name, t), values, lengths in zip(self.features, block.values, block.lengths):
            offsets = torch.from_numpy(np.concatenate([[0], np.cumsum(lengths)[:-1]]))
            out = out + self.tables[t](torch.from_numpy(values), offsets).squeeze(1)
        return out


def logistic_regression(ds: ColumnarDataset, epochs: int = 8, batch: int = 1024, lr: float = 0.05) -> dict[str, float]:
    torch.manual_seed(0)
    model = LogisticRegression(ds)
    opt = torch.optim.Adagrad(model.parameters(), lr=lr)
    n = ds.splits["train"].rows
    splits = {s: ds.block(s, 0, ds.splits[s].rows) for s in ("val", "test")}
    best = (-1.0, {})
    for epoch in range(epochs):
        order = np.random.default_rng(epoch).permutation(n // batch)
        for b in order:
            block = ds.block("train", int(b) * batch, batch)
            loss = F.binary_cross_entropy_with_logits(model(block), torch.from_numpy(block.labels))
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            val = _metrics(model(splits["val"]), torch.from_numpy(splits["val"].labels))
            if val["auc"] > best[0]:
                test = _metrics(model(splits["test"]), torch.from_numpy(splits["test"].labels))
                best = (val["auc"], {**test, "epoch": epoch + 1})
    return best[1]


def _test_metrics(d: dict) -> dict[str, float]:
    return {k: d[k] for k in ("auc", "logloss", "accuracy")}


def trainer(data: Path, name: str, args: list[str], epochs: int, eval_interval: int) -> dict:
    """dlrm_dist on 2 ranks with early stopping: the best model's test figures, and best vs last."""
    with tempfile.TemporaryDirectory() as tmp:
        base = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node=2", "-m", "dlrm_dist.train",
                "--data=columnar", f"--data-dir={data}", "--train.progress=false", "--batch-size=1024",
                "--train.tensorboard=false", *args]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        start = time.perf_counter()
        subprocess.run(base + [f"--train.epochs={epochs}", f"--train.eval_interval={eval_interval}",
                               "--train.keep_last=1", f"--run-dir={tmp}/train", f"--checkpoint-dir={tmp}/ckpt"],
                       check=True, cwd=ROOT, env=env, capture_output=True)
        seconds = time.perf_counter() - start
        s = json.loads(Path(tmp, "train", "summary.json").read_text())
        subprocess.run(base + ["--data.eval_split=test", "--inference-only",
                               f"--checkpoint={tmp}/ckpt/step_{s['step']:08d}", f"--run-dir={tmp}/test"],
                       check=True, cwd=ROOT, env=env, capture_output=True)
        last_test = json.loads(Path(tmp, "test", "summary.json").read_text())
    best, last, test = s["best"], s["last"], s["test"]
    assert test["model"] == "best" and test["step"] == best["step"], test
    print(f"  {name}: {s['steps']} steps in {seconds:.1f} s (wall clock, 2 ranks, start-up included); "
          f"best val AUC {best['auc']:.4f} at step {best['step']}, last {last['auc']:.4f} at step {last['step']}"
          + (f" ({s['stopped_early']})" if s["stopped_early"] else ""))
    return {**_test_metrics(test), "train_s": seconds, "steps": s["steps"], "stopped_early": s["stopped_early"],
            "best": {"step": best["step"], "val_auc": best["auc"], "test": _test_metrics(test)},
            "last": {"step": last["step"], "val_auc": last["auc"], "test": _test_metrics(last_test["last"])}}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=8, help="at most this many epochs (78 steps of 1024 samples each)")
    p.add_argument("--eval-interval", type=int, default=39, help="evaluate (and judge) every N steps (half an epoch)")
    p.add_argument("--out", help="write the figures as JSON here")
    a = p.parse_args()
    data = prepare()
    ds = ColumnarDataset(data)
    results = {"positive rate": positive_rate(ds), "logistic regression": logistic_regression(ds)}
    results["Embedding+MLP (dlrm_dist)"] = trainer(data, "Embedding+MLP", [
        "--model.arch=embedding_mlp", "--model.residual_units=2", "--model.residual_hidden=64", "--model.top_mlp=64-1",
        "--model.embedding_dim=16"], a.epochs, a.eval_interval)
    results["DLRM dot (dlrm_dist)"] = trainer(data, "DLRM", [
        "--model.bottom_mlp=2-32-16", "--model.top_mlp=64-32-1", "--model.embedding_dim=16"], a.epochs, a.eval_interval)
    print(f"MovieLens-100k, rating >= 4, time split; test rows {ds.splits['test'].rows:,}")
    print(f"{'model':<28} {'AUC':>7} {'log-loss':>9} {'accuracy':>9}")
    for name, r in results.items():
        print(f"{name:<28} {r['auc']:>7.4f} {r['logloss']:>9.4f} {r['accuracy']:>9.4f}")
    print(f"{'best vs last':<28} {'step':>6} {'val AUC':>8} {'test AUC':>9}")
    for name, r in results.items():
        for which in ("best", "last"):
            if which in r:
                e = r[which]
                print(f"  {name[:20] + ' ' + which:<26} {e['step']:>6} {e['val_auc']:>8.4f} {e['test']['auc']:>9.4f}")
    if a.out:
        Path(a.out).write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
