"""Small checkpoints made and read in the test process itself (a 1-rank gloo group, torch already loaded).

``train_here`` runs a small job to its end on one rank in this process (a save, a resume or
an evaluation of a checkpoint, as the job's arguments say) and returns the trainer's result;
``rewrite_file_sum`` records a file's new checksum in the manifest, as someone able to
write a checkpoint directory could (so a test reaches what lies behind the checksums).
"""

from __future__ import annotations

import json
from pathlib import Path

from dlrm_dist.checkpoint.integrity import checksum
from dlrm_dist.checkpoint.manifest import MANIFEST
from dlrm_dist.config import load_config
from dlrm_dist.distributed.env import DistEnv, init_distributed, teardown
from dlrm_dist.training.build import build_trainer, prepare
from dlrm_dist.training.trainer import TrainResult
from tests.dist_helper import one_rank_here
from tests.small_job import SMALL_JOB

JOB = SMALL_JOB + ["--train.eval_interval=0", "--synthetic.eval_batches=1", "--sharding-type=table_wise",
                   "--train.device=cpu"]


def train_here(args: list[str], base: list[str] = JOB) -> TrainResult:
    """Runs ``args`` (after ``base``, the small job) on one rank in this process; the process group is torn down after."""
    cfg = load_config(base + args)
    env = DistEnv.from_environ({}, device="cpu")
    prepared = prepare(cfg, env)
    with one_rank_here():
        init_distributed(env, timeout_s=120)
        try:
            return build_trainer(env, prepared).train()
        finally:
            teardown()


def rewrite_file_sum(step_dir: Path, name: str) -> None:
    """Records ``name``'s current size and CRC32C in the manifest (what a forger would do)."""
    path = Path(step_dir) / MANIFEST
    manifest = json.loads(path.read_text())
    manifest["files"][name] = checksum(Path(step_dir) / name).to_dict()
    path.write_text(json.dumps(manifest))
