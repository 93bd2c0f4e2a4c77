"""The trainer beside plain references on the same model, in one session, alternately (A B A B).

    .venv/bin/python -m benchmarks.train_vs_references [--rounds 3] [--steps 60] [--out results.json]

Kaggle-shaped DLRM: 26 tables x 100k rows, dim 16, one uniform id per table per sample,
bottom 13-512-256-64-16, dot interaction, top 512-256-1, global batch 2048, SGD (lr 0.01) for
tables and MLPs everywhere. Configurations, each a fresh process with the same thread budget
(2 cores), measured as the median step time after 10 warm-up steps:

  dense_only     the bound: bottom MLP + dot interaction + top MLP, forward + backward +
                 SGD, on fixed inputs (the embeddings a leaf that receives its gradient);
  plain_pytorch  one process, nn.EmbeddingBag(sparse=True) per table + the same MLPs;
  torchrec_dlrm  torchrec.models.dlrm.DLRM under DistributedModelParallel with
                 TrainPipelineSparseDist and fused SGD, 1 rank x 2 threads;
  ours_1x2       dlrm_dist's trainer under torchrun, 1 rank x 2 threads;
  ours_2x1       dlrm_dist's trainer under torchrun, 2 ranks x 1 thread
                 (median step time of the 10-step log windows after the first, from
                 metrics.jsonl; the wall clock of the whole job, start-up included, is printed too).

The references train on batches made before timing starts (their data costs nothing), so
the comparison favours them. Ours reads the built-in synthetic data through its loader.
Ours also reports the all-to-all bytes per sample it measured (pooled embeddings received)
and each rank's step time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TABLES, ROWS, DIM, DENSE, BATCH, LR = 26, 100_000, 16, 13, 2048, 0.01
BOTTOM, TOP = [DENSE, 512, 256, 64, DIM], [512, 256, 1]
WARMUP = 10
OURS = ["--data.schema=demo:table_sizes=" + "/".join([str(ROWS)] * TABLES), f"--model.embedding_dim={DIM}",
        "--model.bottom_mlp=" + "-".join(map(str, BOTTOM)), "--model.top_mlp=" + "-".join(map(str, TOP)),
        "--synthetic.zipf_alpha=0", "--optim.embedding_optimizer=sgd", "--optim.dense_optimizer=sgd",
        f"--optim.embedding_lr={LR}", f"--optim.dense_lr={LR}", "--train.eval_interval=0",
        "--synthetic.eval_batches=1", "--train.progress=false", f"--train.global_batch_size={BATCH}",
        "--sharding-type=table_wise"]


def _median_step_ms(step, steps: int) -> list[float]:
    times = []
    for i in range(WARMUP + steps):
        t = time.perf_counter()
        step(i)
        if i >= WARMUP:
            times.append(1000 * (time.perf_counter() - t))
    return times


def _inputs(n: int):
    import torch

    g = torch.Generator().manual_seed(0)
    dense = [torch.rand(BATCH, DENSE, generator=g) for _ in range(n)]
    ids = [torch.randint(0, ROWS, (TABLES, BATCH), generator=g) for _ in range(n)]
    labels = [torch.randint(0, 2, (BATCH,), generator=g).float() for _ in range(n)]
    return dense, ids, labels


def worker_dense_only(steps: int) -> dict:
    import torch
    import torch.nn.functional as F

    from dlrm_dist.model.dlrm import mlp
    from dlrm_dist.model.interaction import DotInteraction

    torch.manual_seed(0)
    bottom, inter = mlp(BOTTOM, True), DotInteraction(TABLES, DIM, BOTTOM[-1])
    top = mlp([inter.out_features] + TOP, False)
    params = list(bottom.parameters()) + list(top.parameters())
    opt = torch.optim.SGD(params, lr=LR)
    dense, _, labels = _inputs(4)
    embs = [torch.randn(BATCH, TABLES * DIM, requires_grad=True) for _ in range(4)]

    def step(i: int) -> None:
        k = i % 4
        loss = F.binary_cross_entropy_with_logits(top(inter(bottom(dense[k]), embs[k])).squeeze(1), labels[k])
        opt.zero_grad()
        loss.backward()
        opt.step()

    return {"step_ms": _median_step_ms(step, steps)}


def worker_plain_pytorch(steps: int) -> dict:
    import torch
    import torch.nn.functional as F
    from torch import nn

    from dlrm_dist.model.dlrm import mlp
    from dlrm_dist.model.interaction import DotInteraction

    torch.manual_seed(0)
    tables = nn.ModuleList(nn.EmbeddingBag(ROWS, DIM, mode="sum", sparse=True) for _ in range(TABLES))
    bottom, inter = mlp(BOTTOM, True), DotInteraction(TABLES, DIM, BOTTOM[-1])
    top = mlp([inter.out_features] + TOP, False)
    opt = torch.optim.SGD(list(tables.parameters()) + list(bottom.parameters()) + list(top.parameters()), lr=LR)
    dense, ids, labels = _inputs(4)
    offsets = torch.arange(BATCH)

    def step(i: int) -> None:
        k = i % 4
        embs = torch.cat([t(ids[k][j], offsets) for j, t in enumerate(tables)], dim=1)
        loss = F.binary_cross_entropy_with_logits(top(inter(bottom(dense[k]), embs)).squeeze(1), labels[k])
        opt.zero_grad()
        loss.backward()
        opt.step()

    return {"step_ms": _median_step_ms(step, steps)}


def worker_torchrec_dlrm(steps: int) -> dict:
    import itertools

    import torch
    import torch.distributed as dist
    from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, KeyedJaggedTensor
    from torchrec.datasets.utils import Batch
    from torchrec.distributed import DistributedModelParallel
    from torchrec.distributed.train_pipeline import TrainPipelineSparseDist
    from torchrec.models.dlrm import DLRM, DLRMTrain
    from dlrm_dist.optimizer_registry import mark_in_backward
    from torchrec.optim.keyed import KeyedOptimizerWrapper

    dist.init_process_group("gloo")
    names = [f"cat_{i}" for i in range(TABLES)]
    ebc = EmbeddingBagCollection(tables=[EmbeddingBagConfig(name=f"t_{n}", embedding_dim=DIM, num_embeddings=ROWS,
                                                            feature_names=[n]) for n in names], device=torch.device("meta"))
    model = DLRMTrain(DLRM(embedding_bag_collection=ebc, dense_in_features=DENSE, dense_arch_layer_sizes=BOTTOM[1:],
                           over_arch_layer_sizes=TOP))
    mark_in_backward(model.model.sparse_arch.parameters(), "sgd", lr=LR, eps=1e-8)
    model = DistributedModelParallel(model, device=torch.device("cpu"))
    opt = KeyedOptimizerWrapper(dict(model.named_parameters()), lambda ps: torch.optim.SGD(ps, lr=LR))
    pipeline = TrainPipelineSparseDist(model, opt, torch.device("cpu"))
    dense, ids, labels = _inputs(4)
    batches = [Batch(dense_features=dense[k], labels=labels[k], sparse_features=KeyedJaggedTensor(
        keys=names, values=ids[k].reshape(-1), lengths=torch.ones(TABLES * BATCH, dtype=torch.int32)))
        for k in range(4)]
    it = itertools.cycle(batches)
    out = {"step_ms": _median_step_ms(lambda i: pipeline.progress(it), steps)}
    dist.destroy_process_group()
    return out


def _window_step_ms(metrics: Path) -> list[float]:
    """Step times of each log window after the first, from the cumulative samples/s the trainer logs."""
    rows = [json.loads(x) for x in metrics.read_text().splitlines()]
    rows = [r for r in rows if r.get("kind") == "train"]
    elapsed = [r["step"] * BATCH / r["samples_per_s"] for r in rows]  # seconds since training started
    return [1000 * (b - a) / (rb["step"] - ra["step"]) for (a, ra), (b, rb) in zip(zip(elapsed, rows), zip(elapsed[1:], rows[1:]))]


def _ours(nproc: int, steps: int) -> dict:
    with tempfile.TemporaryDirectory() as run_dir:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "dlrm_dist.train", *OURS, f"--train.steps={WARMUP + steps}", f"--train.log_interval={WARMUP}",
               f"--run-dir={run_dir}"]
        env = {**os.environ, "OMP_NUM_THREADS": str(max(1, 2 // nproc))}
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if proc.returncode:
            raise RuntimeError(proc.stderr[-3000:])
        s = json.loads(Path(run_dir, "summary.json").read_text())
        windows = _window_step_ms(Path(run_dir, "metrics.jsonl"))  # steady state: after the warm-up window
    return {"median_step_ms": round(statistics.median(windows), 2), "rank_step_ms_incl_warmup": s["rank_step_ms"],
            "wall_s_incl_startup": round(wall, 1), "a2a_bytes_per_sample": s.get("a2a_bytes_per_sample")}


def _reference(name: str, steps: int) -> dict:
    runner = [sys.executable, "-m", "benchmarks.train_vs_references", "--worker", name, "--steps", str(steps)]
    if name == "torchrec_dlrm":
        runner = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
                  "-m", "benchmarks.train_vs_references", "--worker", name, "--steps", str(steps)]
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    proc = subprocess.run(runner, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


CONFIGS = ("dense_only", "plain_pytorch", "torchrec_dlrm", "ours_1x2", "ours_2x1")


def measure(name: str, steps: int) -> float:
    """Samples per second of one configuration (median step for the references)."""
    if name.startswith("ours"):
        r = _ours(1 if name == "ours_1x2" else 2, steps)
        print(json.dumps({"config": name, **r}), flush=True)
        return BATCH / r["median_step_ms"] * 1000
    r = _reference(name, steps)
    ms = statistics.median(r["step_ms"])
    print(json.dumps({"config": name, "median_step_ms": round(ms, 2)}), flush=True)
    return BATCH / ms * 1000


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--worker", choices=("dense_only", "plain_pytorch", "torchrec_dlrm"))
    p.add_argument("--out")
    a = p.parse_args()
    if a.worker:
        import torch

        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
        print(json.dumps(globals()[f"worker_{a.worker}"](a.steps)))
        return 0
    runs: dict[str, list[float]] = {c: [] for c in CONFIGS}
    for _ in range(a.rounds):  # A B A B: every configuration once per round
        for c in CONFIGS:
            runs[c].append(measure(c, a.steps))
    med = {c: statistics.median(v) for c, v in runs.items()}
    print(f"{'configuration':<16} {'samples/s (median)':>20} {'/ dense_only':>13}")
    for c in CONFIGS:
        print(f"{c:<16} {med[c]:>20,.0f} {med[c] / med['dense_only']:>13.2f}")
    print(f"ours_1x2 / plain_pytorch {med['ours_1x2'] / med['plain_pytorch']:.2f}   "
          f"ours_1x2 / torchrec_dlrm {med['ours_1x2'] / med['torchrec_dlrm']:.2f}")
    if a.out:
        Path(a.out).write_text(json.dumps({"runs": runs, "median": med}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
