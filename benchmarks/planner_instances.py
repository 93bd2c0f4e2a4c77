"""Seeded planning instances for the planner suite (benchmarks/planner_suite.py).

Each instance is generated from one integer seed, so a record names exactly what was
planned. The family spans 50-2,000 tables, 2-512 ranks, 16-141 GB of HBM per device, with
and without UVM caching (without: every table is constrained to the in-HBM kernels),
Zipf-skewed row counts and pooling factors, one-hot and multi-hot features, and a few
tables too large for any single rank. ``issue22_300`` is the instance issue 22 reported
(300 tables on 32 GPUs of 24 GB, UVM caching at load factor 0.2, rowwise_adagrad, batch
4,096 per rank, rows from hundreds to tens of millions, pooling factors about 1 to 50).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dlrm_dist.planning.types import Budgets, PlannerInputs, TableSpec, TopologySpec

GPU_HBM_GB = (16.0, 24.0, 32.0, 40.0, 48.0, 80.0, 94.0, 141.0)
IN_HBM_KERNELS = ("fused", "dense")


@dataclass(frozen=True)
class Instance:
    """One planning problem and how it was made."""

    name: str
    inputs: PlannerInputs
    seed: int
    uvm: bool  # UVM / UVM-caching kernels allowed
    oversized: int  # tables that fit no single rank

    def describe(self) -> dict:
        t = self.inputs.topology
        return {"name": self.name, "seed": self.seed, "tables": len(self.inputs.tables), "world_size": t.world_size,
                "ranks_per_host": t.ranks_per_host, "hbm_gb": t.hbm_gb, "ddr_gb": t.ddr_gb, "uvm": self.uvm,
                "oversized_tables": self.oversized, "batch_size_per_rank": self.inputs.batch_size_per_rank,
                "optimizer": self.inputs.optimizer, "cache_load_factor": self.inputs.budgets.cache_load_factor}


def _zipf_rows(rng: np.random.Generator, n: int, lo: float, hi: float, skew: float) -> np.ndarray:
    """Row counts between ``lo`` and ``hi``: log-uniform bent by ``skew`` (> 1: most tables small)."""
    u = rng.random(n) ** skew
    return np.round(10 ** (np.log10(lo) + u * (np.log10(hi) - np.log10(lo)))).astype(np.int64)


def _pooling(rng: np.random.Generator, n: int, multi_hot: float, top: float) -> np.ndarray:
    """One-hot (1.0) for a share ``1 - multi_hot`` of tables, Zipf-skewed 1..``top`` for the rest."""
    pf = np.ones(n)
    multi = rng.random(n) < multi_hot
    z = np.minimum(rng.zipf(1.6, n).astype(float), top)
    pf[multi] = np.round(np.maximum(z[multi], 2.0) * rng.uniform(0.8, 1.25, multi.sum()), 1)
    return np.minimum(pf, top)


def _tables(rng: np.random.Generator, n: int, rows: np.ndarray, pooling: np.ndarray, dims: tuple[int, ...],
            uvm: bool) -> list[TableSpec]:
    kernels = None if uvm else IN_HBM_KERNELS
    return [TableSpec(f"t{i}", int(rows[i]), int(rng.choice(dims)), float(pooling[i]), compute_kernels=kernels)
            for i in range(n)]


def _oversized(rng: np.random.Generator, count: int, inputs_hbm_gb: float, ddr_per_rank_gb: float,
               uvm: bool, start: int) -> list[TableSpec]:
    """Tables larger than one rank's memory (HBM if in-HBM only, else host memory per rank)."""
    per_rank = inputs_hbm_gb if not uvm else ddr_per_rank_gb
    out = []
    for j in range(count):
        dim = 128
        rows = int(per_rank * 1024**3 * rng.uniform(1.3, 2.5) / (4 * dim))
        out.append(TableSpec(f"t{start + j}", rows, dim, float(rng.choice([1.0, 2.0, 8.0])),
                             compute_kernels=None if uvm else IN_HBM_KERNELS))
    return out


def generate(seed: int) -> Instance:
    """Instance ``seed``: sizes, topology and skews all drawn from ``seed``."""
    rng = np.random.default_rng(seed)
    n = int(np.round(10 ** rng.uniform(np.log10(50), np.log10(2000))))
    world = int(2 ** rng.integers(1, 10))  # 2 .. 512
    # Keep tables x ranks within what TorchRec's planner can take in seconds.
    while n * world > 120_000 and world > 2:
        world //= 2
    per_host = min(8, world)
    hbm = float(rng.choice(GPU_HBM_GB))
    uvm = bool(rng.random() < 0.6)
    ddr = float(rng.choice([256.0, 512.0, 1024.0, 2048.0]))
    hi_rows = float(10 ** rng.uniform(6.5, 8.0))
    rows = _zipf_rows(rng, n, 100, hi_rows, skew=float(rng.uniform(1.5, 3.0)))
    pooling = _pooling(rng, n, multi_hot=float(rng.uniform(0.2, 0.8)), top=float(rng.choice([20.0, 50.0, 100.0])))
    tables = _tables(rng, n, rows, pooling, (16, 32, 64, 128) if rng.random() < 0.5 else (64, 128), uvm)
    oversized = int(rng.random() < 0.3) * int(rng.integers(1, 4))
    if oversized:
        tables += _oversized(rng, oversized, hbm * 0.9, ddr / per_host * 0.9, uvm, len(tables))
    inputs = PlannerInputs(
        tables=tuple(tables), topology=TopologySpec(world, per_host, hbm_gb=hbm, ddr_gb=ddr),
        budgets=Budgets(cache_load_factor=float(rng.choice([0.05, 0.1, 0.2, 0.5]))),
        batch_size_per_rank=int(rng.choice([256, 512, 1024, 2048, 4096])),
        optimizer=str(rng.choice(["rowwise_adagrad", "adagrad", "sgd"])))
    name = f"s{seed}_{n}t_{world}r_{hbm:g}g{'_uvm' if uvm else ''}{f'_big{oversized}' if oversized else ''}"
    return Instance(name, inputs, seed, uvm, oversized)


def issue22_300(seed: int = 22) -> Instance:
    """Issue 22's regressed instance, regenerated: 300 tables, 32 x 24 GB, UVM caching at 0.2."""
    rng = np.random.default_rng(seed)
    n = 300
    rows = _zipf_rows(rng, n, 200, 8e7, skew=0.8)  # 842 GB with rowwise_adagrad: more than 32 x 21.6 GB of HBM
    pooling = np.round(np.clip(rng.zipf(1.5, n).astype(float) * rng.uniform(0.8, 1.2, n), 1.0, 50.0), 1)
    tables = _tables(rng, n, rows, pooling, (64, 128, 256), uvm=True)
    inputs = PlannerInputs(tables=tuple(tables), topology=TopologySpec(32, 8, hbm_gb=24.0, ddr_gb=512.0),
                           budgets=Budgets(cache_load_factor=0.2), batch_size_per_rank=4096,
                           optimizer="rowwise_adagrad")
    return Instance("issue22_300t_32r_24g_uvm", inputs, seed, True, 0)


def suite(count: int = 44, first_seed: int = 1000) -> list[Instance]:
    """The suite: issue 22's instance, then ``count`` generated ones."""
    return [issue22_300()] + [generate(first_seed + i) for i in range(count)]
