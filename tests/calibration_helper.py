"""A synthetic calibration file with closed-form costs, for tests that must not measure.

Every embedding point costs ``fwd = F0 + F1 * ids`` and ``bwd = B0 + B1 * ids`` whatever the
dim and rows, so a calibrated shard's compute is known exactly; collectives cost
``LATENCY + bytes / BANDWIDTH``; GEMMs run at GFLOPS; a step's overhead is FIXED + PER_TABLE x tables.
"""

from __future__ import annotations

from typing import Any

F0, F1, B0, B1 = 0.05, 2e-4, 0.1, 2e-3  # ms, ms per id
LATENCY_MS, BANDWIDTH_GBPS, GFLOPS = 0.5, 1.0, 50.0
FIXED_MS, PER_TABLE_MS = 3.0, 0.25


def calibration_data(world_size: int = 2, device: str = "cpu", dims: tuple[int, ...] = (16, 64),
                     rows: tuple[int, ...] = (1000, 100_000), ids: tuple[int, ...] = (512, 5120)) -> dict[str, Any]:
    embedding = [{"kernel": "fused", "optimizer": "rowwise_adagrad", "dim": d, "rows": r, "pooling_factor": n / 512,
                  "ids": n, "fwd_ms": F0 + F1 * n, "bwd_ms": B0 + B1 * n} for d in dims for r in rows for n in ids]
    comm = {"latency_ms": LATENCY_MS, "bandwidth_gbps": BANDWIDTH_GBPS,
            "points": [{"bytes": b, "ms": LATENCY_MS + b / (BANDWIDTH_GBPS * 1e9) * 1e3} for b in (1024, 1 << 20)]}
    return {
        "format": "dlrm_dist.calibration", "version": 1,
        "machine": {"host": "test", "cpu": "synthetic", "cores": 2, "threads_per_rank": 1, "torch": "2.13",
                    "fbgemm": "1.8", "created": "2026-12-01T00:00:00Z"},
        "device": device, "backend": "gloo", "world_size": world_size, "embedding": embedding,
        "all_to_all": comm, "all_reduce": comm,
        "dense": {"gemm_gflops": GFLOPS, "points": [{"m": 64, "n": 64, "k": 64, "ms": 2 * 64**3 / (GFLOPS * 1e9) * 1e3}]},
        "step": {"fixed_ms": FIXED_MS, "per_table_ms": PER_TABLE_MS},
    }
