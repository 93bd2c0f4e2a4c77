"""dlrm-export's host memory: the tables are held once, and int8 frees each float table as it goes.

The peak is measured in a fresh process (benchmarks/export_memory.py's measurement, on a
smaller model): (peak - baseline after imports) against the bytes of the tables. Reading a
checkpoint used to initialise every table randomly and then read it, and int8 kept every
float table beside its int8 copy.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from benchmarks.export_memory import _EXPORT, schema_toml
from tests.checkpoint_helper import train_here
from tests.serving_helper import MIXED_JOB, build_dlrm

ROOT = Path(__file__).resolve().parents[2]
TABLES, ROWS, DIM = 8, 62_500, 32  # 64 MB of float tables, 8 MB each
SLACK = 48 << 20  # allocator and import noise


def test_int8_frees_each_float_table_once_quantized_and_scores_the_same() -> None:
    from dlrm_dist.serving.model import ServingDLRM

    _, dlrm = build_dlrm(MIXED_JOB)
    kept = ServingDLRM(copy.deepcopy(dlrm), "int8").eval()
    released = ServingDLRM(dlrm, "int8", release_float=True).eval()
    assert all(bag.weight.is_meta for bag in dlrm.sparse_arch.embedding_bags.values())
    n = len(released.feature_names)
    dense = torch.randn(5, 5)
    ids = [torch.tensor([0, 1, 2, 3, 4, 5, 6]) % 7 for _ in range(n)]
    offsets = [torch.tensor([0, 1, 3, 3, 5, 7]) for _ in range(n)]
    assert torch.equal(released(dense, ids, offsets), kept(dense, ids, offsets))


def test_a_float_export_holds_the_tables_once_plus_a_few_tables_in_flight(tmp_path) -> None:
    schema = tmp_path / "schema.toml"
    schema.write_text(schema_toml(TABLES, ROWS, DIM))
    train_here([f"--data.schema={schema}", f"--model.bottom_mlp=1-16-{DIM}", "--model.top_mlp=16-1",
                "--train.steps=1", "--train.global_batch_size=64", "--train.eval_interval=0",
                "--train.progress=false", "--train.device=cpu", "--sharding-type=table_wise",
                f"--train.checkpoint_dir={tmp_path / 'ckpt'}", f"--train.run_dir={tmp_path / 'run'}"], base=[])
    code = _EXPORT.format(page=os.sysconf("SC_PAGE_SIZE"))
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "ckpt"), str(tmp_path / "export"), "none"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads(proc.stdout.strip().splitlines()[-1])
    table_bytes, largest = TABLES * ROWS * DIM * 4, ROWS * DIM * 4
    extra = m["peak"] - m["baseline"]
    # The tables once, plus the read and write buffers of about three tables at a time.
    assert extra <= table_bytes + 3 * largest + SLACK, (extra / 2**20, table_bytes / 2**20)
    assert (tmp_path / "export" / "model.pt2").stat().st_size >= table_bytes
