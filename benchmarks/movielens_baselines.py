"""Baselines on MovieLens-100k (rating >= 4), all on the same time split and features.

    python -m benchmarks.movielens_baselines [--steps 300] [--out results.json]

1. the training split's positive rate for every sample (AUC 0.5 by construction);
2. logistic regression in plain PyTorch on the same features: one weight per id of every
   table (an nn.EmbeddingBag of width 1, mean-pooled for genres) plus one per dense feature;
   Adagrad, the epoch with the best validation AUC kept;
3. dlrm_dist's Embedding+MLP preset (residual units) on 2 CPU ranks through torchrun;
4. dlrm_dist's DLRM with the dot interaction on 2 CPU ranks.

Models 3 and 4 train a fixed number of steps, checkpoint, and are scored on the test split
with ``--inference-only``. Every figure is test-split AUC, log-loss and accuracy; the data
is fetched from PyPI into the cache (see tests/multiprocess/test_own_data.py).
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
    return m.compute()


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


def trainer(data: Path, name: str, args: list[str], steps: int) -> dict[str, float]:
    """dlrm_dist on 2 ranks: train ``steps`` steps, then score the checkpoint on the test split."""
    with tempfile.TemporaryDirectory() as tmp:
        base = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node=2", "-m", "dlrm_dist.train",
                "--data=columnar", f"--data-dir={data}", "--train.progress=false", "--batch-size=1024", *args]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        start = time.perf_counter()
        subprocess.run(base + [f"--steps={steps}", "--train.eval_interval=0", f"--run-dir={tmp}/train",
                               f"--checkpoint-dir={tmp}/ckpt"], check=True, cwd=ROOT, env=env, capture_output=True)
        seconds = time.perf_counter() - start
        subprocess.run(base + ["--data.eval_split=test", "--inference-only", f"--checkpoint={tmp}/ckpt",
                               f"--run-dir={tmp}/test"], check=True, cwd=ROOT, env=env, capture_output=True)
        s = json.loads(Path(tmp, "test", "summary.json").read_text())
    print(f"  {name}: {steps} steps in {seconds:.1f} s (wall clock, 2 ranks, start-up included)")
    return {"auc": s["eval_auc"], "logloss": s["eval_logloss"], "accuracy": s["eval_accuracy"], "train_s": seconds}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=300, help="trainer steps of 1024 samples (78 = one epoch)")
    p.add_argument("--out", help="write the figures as JSON here")
    a = p.parse_args()
    data = prepare()
    ds = ColumnarDataset(data)
    results = {"positive rate": positive_rate(ds), "logistic regression": logistic_regression(ds)}
    results["Embedding+MLP (dlrm_dist)"] = trainer(data, "Embedding+MLP", [
        "--model.arch=embedding_mlp", "--model.residual_units=2", "--model.residual_hidden=64", "--model.top_mlp=64-1",
        "--model.embedding_dim=16"], a.steps)
    results["DLRM dot (dlrm_dist)"] = trainer(data, "DLRM", [
        "--model.bottom_mlp=2-32-16", "--model.top_mlp=64-32-1", "--model.embedding_dim=16"], a.steps)
    print(f"MovieLens-100k, rating >= 4, time split; test rows {ds.splits['test'].rows:,}")
    print(f"{'model':<28} {'AUC':>7} {'log-loss':>9} {'accuracy':>9}")
    for name, r in results.items():
        print(f"{name:<28} {r['auc']:>7.4f} {r['logloss']:>9.4f} {r['accuracy']:>9.4f}")
    if a.out:
        Path(a.out).write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
