"""Embedding init in parallel gives the one-thread values bit for bit (issue 24 item 7)."""

from __future__ import annotations

import math

import numpy as np
import torch

from dlrm_dist.model.init import ShardFill, default_workers, fill_shards


def _reference(seed: int, table: int, num_rows: int, dim: int, start: int, stop: int) -> torch.Tensor:
    """The original definition: Philox advanced to the row, (2u - 1) * bound in float64, then float32."""
    width = (dim + 3) // 4 * 4
    bit_gen = np.random.Philox(key=(seed << 32) | table)
    bit_gen.advance(start * width // 4)
    u = np.random.Generator(bit_gen).random((stop - start, width))[:, :dim]
    return torch.from_numpy((2.0 * u - 1.0) * math.sqrt(1.0 / num_rows)).to(torch.float32)


def test_values_are_the_definition() -> None:
    rows = torch.empty(120, 10)
    fill_shards([ShardFill(rows, 2, 1000, 10, row_offset=300)], seed=7)
    assert torch.equal(rows, _reference(7, 2, 1000, 10, 300, 420))


def test_threads_fill_every_shard_exactly_as_one_thread(monkeypatch) -> None:
    import dlrm_dist.model.init as init

    monkeypatch.setattr(init, "_ROW_CHUNK", 64)  # many chunks from small shards
    shards = [(1, 5000, 12, 1000, 4, 300, 8), (4, 700, 16, 0, 0, 700, 16), (2, 90, 8, 10, 0, 1, 8)]
    for workers in (1, 3):
        tasks = [ShardFill(torch.empty(n, w), t, rows, dim, r0, c0) for t, rows, dim, r0, c0, n, w in shards]
        fill_shards(tasks, seed=11, workers=workers)
        for task, (t, rows, dim, r0, c0, n, w) in zip(tasks, shards):
            assert torch.equal(task.out, _reference(11, t, rows, dim, r0, r0 + n)[:, c0:c0 + w]), (workers, t)


def test_workers_share_the_host_between_its_ranks(monkeypatch) -> None:
    import dlrm_dist.model.init as init

    monkeypatch.setattr(init.os, "sched_getaffinity", lambda pid: set(range(64)))
    assert default_workers(8) == 8 and default_workers(1) == 64 and default_workers(128) == 1
