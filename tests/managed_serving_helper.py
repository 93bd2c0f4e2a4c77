"""A managed model trained to a checkpoint by the trainer (DMP), then scored by the DMP model in eval mode.

What a managed export must reproduce: ``train_and_score`` (rank side, in an existing process
group of any world size) trains MANAGED_JOB (tests/schemas/managed.toml: an LFU and an LRU managed
feature beside a hashed one, row-wise) to a checkpoint with the trainer's own entry, restores that
checkpoint into a fresh sharded model (``--inference-only``), and scores in eval mode (nothing
counted, admitted or evicted) each rank's eval batches and one batch whose every other managed id
is replaced by an id no training batch had. It returns, on rank 0, every rank's (inputs as the
exported program takes them, probabilities); ``train_and_score_here`` does it on one rank in this
process.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
MANAGED_SCHEMA = ROOT / "tests" / "schemas" / "managed.toml"
MANAGED_JOB = [f"--data.schema={MANAGED_SCHEMA}", "--model.bottom_mlp=2-8", "--model.embedding_dim=8",
               "--model.top_mlp=16-1", "--train.global_batch_size=64", "--train.progress=false",
               "--train.eval_interval=0", "--synthetic.eval_batches=2", "--sharding-type=row_wise",
               "--train.device=cpu", "--train.steps=8"]
FRESH = 2**62 + 12345  # ids from here on: no synthetic draw of a few thousand ids lands on one (p ~ 1e-13)


def _with_fresh_ids(batch: Any, managed: set[str], first: int) -> Any:
    """``batch`` with every other id of each managed feature replaced by a new one (``first``, first + 1, ...)."""
    from torchrec import KeyedJaggedTensor
    from torchrec.datasets.utils import Batch

    kjt = batch.sparse_features
    parts = []
    for key, jt in kjt.to_dict().items():
        values = jt.values().clone()
        if key in managed:
            n = len(values[::2])
            values[::2] = torch.arange(first, first + n, dtype=values.dtype)
            first += n
        parts.append(values)
    sparse = KeyedJaggedTensor(keys=kjt.keys(), values=torch.cat(parts), lengths=kjt.lengths())
    return Batch(dense_features=batch.dense_features, sparse_features=sparse, labels=batch.labels)


def _eval_scores(env: Any, job: list[str], ckpt: Path, root: Path) -> list[tuple[tuple, torch.Tensor]]:
    """This rank's (program inputs, DMP eval-mode probabilities) of its eval batches and a batch of new ids."""
    from dlrm_dist.config import load_config
    from dlrm_dist.serving.predict import model_inputs
    from dlrm_dist.training.build import build_trainer, prepare

    cfg = load_config(job + ["--inference-only", f"--checkpoint={ckpt}", f"--run-dir={root / 'probe'}"])
    prepared = prepare(cfg, env)
    trainer = build_trainer(env, prepared)
    trainer.checkpoints.restore(weights_only=True)
    trainer.model.eval()
    gbs = cfg.train.global_batch_size
    batches = list(prepared.data.batches("eval", gbs, env.rank, env.world_size, prepared.data.eval_batch_count(gbs)))
    managed = {f.name for f in prepared.schema.sparse if f.managed}
    batches.append(_with_fresh_ids(batches[0], managed, FRESH + env.rank * 100_000))
    out = []
    with torch.no_grad():
        for batch in batches:
            _, logits, _ = trainer.pipeline.progress(iter([batch]))
            out.append((model_inputs(batch, list(prepared.spec.feature_names)), torch.sigmoid(logits)))
    return out


def train_and_score(env: Any, root: Path, job: list[str] = MANAGED_JOB) -> dict[str, Any]:
    """Rank side: the job trained to ROOT/ckpt, then scored by the restored DMP model (see the module
    docstring). Returns {"batches": [(inputs, probs), ...] of every rank} on rank 0, {} elsewhere."""
    import torch.distributed as dist

    from tests.multiprocess.train_worker import run_job

    run_job(env, root, "run", job + [f"--checkpoint-dir={root / 'ckpt'}"])
    mine = _eval_scores(env, job, root / "ckpt", root)
    every: list = [None] * env.world_size
    dist.all_gather_object(every, mine)
    return {"batches": [pair for rank in every for pair in rank]} if env.is_main else {}


def train_and_score_here(root: Path, job: list[str] = MANAGED_JOB) -> dict[str, Any]:
    """``train_and_score`` on one rank in this process (its own gloo group, torn down after)."""
    from dlrm_dist.distributed.env import DistEnv, init_distributed, teardown
    from tests.dist_helper import one_rank_here

    with one_rank_here():
        env = DistEnv.from_environ({}, device="cpu")
        init_distributed(env, timeout_s=120)
        try:
            return train_and_score(env, root, job)
        finally:
            teardown()
