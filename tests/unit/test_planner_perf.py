"""`dlrm-plan make` without TorchRec: the closed forms equal TorchRec, float for float, and make imports none of it.

- shard_perf.py's perf equals TorchRec's EmbeddingPerfEstimator (``==`` on all six fields) on a grid:
  table shapes (dims below 32, below 64, below and at 128, above), every planned sharding type with
  TorchRec's own layouts, every planned kernel on both devices, pooling factors below and above one,
  load factors (and none), world sizes of one host, several hosts and more than two, TorchRec's
  bandwidths and our flags' bandwidths, two batch sizes. The TorchRec side is the planner's former one
  (a meta EmbeddingBagCollection's marked weight, torchrec_bridge's Topology). The real enumeration's
  perf is checked against TorchRec's estimator in test_planner_storage.py.
- shard_layout.py's layouts and placements equal torchrec.distributed.sharding_plan's; the sharder's
  types and kernels, the constants, the load-factor rule and the bandwidths equal TorchRec's / the bridge's;
  shard_storage.io_sizes equals TorchRec's _calculate_shard_io_sizes.
- convert.plan_entries (the plan file's "plan", written without TorchRec) equals planfile's encoding of
  TorchRec's ShardingPlan of the same placements, and a PlanFile made that way converts to that plan.
- ``dlrm-plan make`` in a process where torch, TorchRec and fbgemm cannot be imported writes the same
  plan file as in this one.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
from torchrec.distributed.planner import constants as trc
from torchrec.distributed.planner.shard_estimators import EmbeddingPerfEstimator, _calculate_shard_io_sizes
from torchrec.distributed.planner.types import Shard, ShardingOption
from torchrec.distributed.planner.utils import build_sharder_data_map, sharder_name
from torchrec.distributed.sharding_plan import calculate_shard_sizes_and_offsets
from torchrec.distributed.sharding_plan import placement as torchrec_placement
from torchrec.distributed.types import CacheParams

from dlrm_dist.cli import plan_main
from dlrm_dist.names import SHARDING_TYPES
from dlrm_dist.planning import planfile, shard_perf, torchrec_bridge
from dlrm_dist.planning.convert import plan_entries, to_sharding_plan
from dlrm_dist.planning.options import (
    PLANNED_KERNELS, SHARDER_TYPES, Enumerator, cache_load_factor, sharder_kernels,
)
from dlrm_dist.planning.partitioner import partition
from dlrm_dist.planning.planner import make_plan_file
from dlrm_dist.planning.shard_layout import placement, shard_layout
from dlrm_dist.planning.shard_perf import Bandwidths, ShardContext, device_bw
from dlrm_dist.planning.shard_storage import io_sizes
from dlrm_dist.planning.types import PARTITION_BY, PERF_FIELDS, Budgets, PlannerInputs, TableSpec, TopologySpec

ROOT = Path(__file__).resolve().parents[2]
SHAPES = ((7, 20), (123_457, 48), (2**31 + 11, 64), (60_001, 128), (5_000, 256))
TOPOLOGIES = ((2, 2), (16, 8), (24, 4))  # one host; two hosts; six (more than twice a host's ranks)
POOLING = (0.5, 3.7)
LOAD_FACTORS = (None, 0.35)
FLAGS = {"hbm_bw_gbps": 1500.0, "ddr_bw_gbps": 80.0, "intra_host_bw_gbps": 200.0, "inter_host_bw_gbps": 25.0}


def _inputs(device: str, world: int, local: int, flags: bool, tables=None, batch: int = 512) -> PlannerInputs:
    topo = TopologySpec(world, local, device, hbm_gb=80.0 if device == "cuda" else 0.0, ddr_gb=512.0,
                        **(FLAGS if flags else {}))
    tables = tables or tuple(TableSpec(f"t{i}", r, d) for i, (r, d) in enumerate(SHAPES))
    return PlannerInputs(tables=tables, topology=topo, batch_size_per_rank=batch, optimizer="rowwise_adagrad")


def _kernels(st: str, device: str) -> list[str]:
    kernels = [k for k in sharder_kernels(st, device) if k in PLANNED_KERNELS]
    return kernels if st in SHARDER_TYPES[device] else []


def _torchrec_perf(inputs: PlannerInputs, ebc, tensor, sizes, st: str, kernel: str, pf: float, clf) -> list[tuple]:
    """TorchRec's estimate of each shard, on the ShardingOption the planner used to build."""
    sharder = EmbeddingBagCollectionSharder()
    data = build_sharder_data_map({sharder_name(sharder.module_type): sharder})
    so = ShardingOption(name="t", tensor=tensor, module=("", ebc), input_lengths=[pf],
                        batch_size=inputs.batch_size_per_rank, compute_kernel=kernel, sharding_type=st,
                        partition_by=PARTITION_BY[st], shards=[Shard(size=list(s), offset=[0, 0]) for s in sizes],
                        cache_params=CacheParams(load_factor=clf) if clf is not None else None, is_pooled=True)
    EmbeddingPerfEstimator(torchrec_bridge.torchrec_topology(inputs)).estimate([so], data)
    return [tuple(getattr(s.perf, f) for f in PERF_FIELDS) for s in so.shards]


@pytest.mark.parametrize("device", ["cuda", "cpu"], ids=["gpu_topology", "cpu_topology"])  # planned, not run on
def test_perf_equals_torchrec(device: str) -> None:
    checked = 0
    for (world, local), flags in itertools.product(TOPOLOGIES, (False, True)):
        inputs = _inputs(device, world, local, flags, batch=1000 if flags else 512)
        ebc = torchrec_bridge.meta_module(inputs)
        params = EmbeddingBagCollectionSharder().shardable_parameters(ebc)
        bw = Bandwidths.of(inputs)
        for t, st in itertools.product(inputs.tables, SHARDING_TYPES):
            col_dims = [None] + ([t.dim // 2] if st in ("column_wise", "table_column_wise") and t.dim % 8 == 0 else [])
            for col_dim in col_dims:
                sizes = shard_layout(t.rows, t.dim, world, local, st, col_dim)[0]
                distinct = sorted({tuple(s) for s in sizes})  # equal shards, equal estimates: one of each
                for kernel, pf, clf in itertools.product(_kernels(st, device), POOLING, LOAD_FACTORS):
                    if clf is not None and kernel != "fused_uvm_caching":
                        continue  # the planner gives a load factor to the cached kernel only
                    want = _torchrec_perf(inputs, ebc, params[t.name], distinct, st, kernel, pf, clf)
                    kbw = device_bw(device, kernel, bw, clf)
                    got = [shard_perf.shard_perf(ShardContext(st, r, c, pf, inputs.batch_size_per_rank, world, local,
                                                              kbw, bw)) for r, c in distinct]
                    assert got == want, (t, st, kernel, pf, clf, world, local, flags, distinct)
                    checked += len(distinct)
    assert checked > (400 if device == "cuda" else 100)


def test_constants_sharder_and_bandwidths_equal_torchrec() -> None:
    for name in ("HBM_MEM_BW", "DDR_MEM_BW", "HBM_TO_DDR_MEM_BW", "INTRA_NODE_BANDWIDTH", "CROSS_NODE_BANDWIDTH",
                 "BWD_COMPUTE_MULTIPLIER", "UVM_CACHING_RATIO", "BATCHED_COPY_PERF_FACTOR", "FULL_BLOCK_EMB_DIM",
                 "HALF_BLOCK_PENALTY", "QUARTER_BLOCK_PENALTY", "DP_ELEMENTWISE_KERNELS_PERF_FACTOR", "NUM_POOLINGS"):
        assert getattr(shard_perf, name) == getattr(trc, name), name
    assert shard_perf.ID_BYTES == trc.BIGINT_DTYPE
    sharder = EmbeddingBagCollectionSharder()
    for device in ("cpu", "cuda"):
        assert list(SHARDER_TYPES[device]) == sharder.sharding_types(device)
        for st in SHARDER_TYPES[device]:
            assert list(sharder_kernels(st, device)) == sharder.compute_kernels(st, device), (device, st)
    for flags in (False, True):
        inputs = _inputs("cuda", 16, 8, flags)
        topo, bw = torchrec_bridge.torchrec_topology(inputs), Bandwidths.of(inputs)
        comms = topo.comms_bandwidths
        assert (bw.hbm, bw.ddr, bw.hbm_to_ddr, bw.intra_host, bw.inter_host, bw.bwd_compute_multiplier) == (
            topo.hbm_mem_bw, topo.ddr_mem_bw, topo.hbm_to_ddr_mem_bw, comms.intra_host_bw, comms.inter_host_bw,
            topo.bwd_compute_multiplier)
    inputs = PlannerInputs(tables=(TableSpec("a", 10, 4), TableSpec("b", 10, 4, cache_load_factor=0.4)),
                           topology=TopologySpec(2, 2), budgets=Budgets(cache_load_factor=0.1))
    for t in inputs.tables:
        assert cache_load_factor(inputs, t) == torchrec_bridge.cache_load_factor(inputs, t)


def test_layouts_placements_and_io_equal_torchrec() -> None:
    shapes = ((1, 4), (7, 20), (77, 64), (1000, 96), (123_457, 128), (2**53 + 5, 4), (10, 1024), (999, 384))
    topologies = ((1, 1), (2, 2), (5, 3), (12, 8), (64, 8))  # shapes only: hosts need not be whole
    for (rows, cols), (world, local), st in itertools.product(shapes, topologies, SHARDING_TYPES):
        tensor = torch.empty((rows, cols), device="meta")
        for col_dim in (None, 4, 32, 100, 128):
            want = calculate_shard_sizes_and_offsets(tensor=tensor, world_size=world, local_world_size=local,
                                                     sharding_type=st, col_wise_shard_dim=col_dim)
            got = shard_layout(rows, cols, world, local, st, col_dim)
            assert got == (want[0], want[1]), (rows, cols, world, local, st, col_dim)
        sizes = got[0]
        for pf, batch in ((0.5, 512), (3.7, 1000)):
            want_io = _calculate_shard_io_sizes(
                sharding_type=st, batch_sizes=[batch], world_size=world, local_world_size=local, input_lengths=[pf],
                emb_dim=cols, shard_sizes=sizes, input_data_type_size=8, output_data_type_size=4, num_poolings=[1.0],
                is_pooled=True)
            got_io = io_sizes(st, sizes, cols, pf, batch, world, local)
            assert tuple(got_io) == tuple(want_io), (rows, cols, world, local, st, pf)
    for device, rank, local in itertools.product(("cpu", "cuda"), (0, 5, 13), (1, 4, 8)):
        assert placement(device, rank, local) == torchrec_placement(device, rank, local)


def _identity_like() -> list[PlannerInputs]:
    """A cuda instance with cached, split and data-parallel tables, and a two-host cpu one."""
    tables = (TableSpec("t_small", 1_000, 16, 1.0), TableSpec("t_multi", 250_000, 64, 12.5),
              TableSpec("t_clf", 3_000_000, 64, 2.0, cache_load_factor=0.35), TableSpec("t_big", 60_000_000, 128, 4.0),
              TableSpec("t_m", 400_000, 64, 4.0, managed=True))
    return [PlannerInputs(tables=tables, topology=TopologySpec(8, 8, "cuda", hbm_gb=16.0, ddr_gb=256.0),
                          budgets=Budgets(cache_load_factor=0.15), batch_size_per_rank=1024),
            PlannerInputs(tables=tables[:4], topology=TopologySpec(4, 2, "cpu", hbm_gb=0.0, ddr_gb=48.0))]  # t_big splits


@pytest.mark.parametrize("which", range(2))
def test_plan_entries_equal_torchrec_encoding(which: int) -> None:
    inputs = _identity_like()[which]
    placed = partition(Enumerator(inputs).all_options(), inputs)
    names, t = [x.name for x in inputs.tables], inputs.topology
    kinds = {(p.option.sharding_type, p.option.cache_load_factor is not None) for p in placed}
    assert len(kinds) >= 2, kinds  # more than one kind of entry is compared
    plan = to_sharding_plan(placed, names, t.device, t.ranks_per_host, "m.ebc")
    encoded = plan_entries(placed, names, t.device, t.ranks_per_host, "m.ebc")
    assert encoded.entries == {"m.ebc": {n: planfile._encode_sharding(ps) for n, ps in plan.plan["m.ebc"].items()}}
    # A PlanFile holding the encoded plan writes the same text before and after it becomes TorchRec's plan.
    pf = make_plan_file(inputs, "m.ebc")
    before = planfile.dumps(pf)
    assert "plan" not in pf.__dict__  # not converted by writing
    assert {n: planfile._encode_sharding(ps) for n, ps in pf.plan.plan["m.ebc"].items()} == encoded.entries["m.ebc"]
    assert planfile.dumps(pf) == before
    assert dataclasses.replace(pf, planner={}).plan == pf.plan


def test_make_imports_no_torch_or_torchrec(tmp_path: Path) -> None:
    """`dlrm-plan make` in a process that cannot import torch, TorchRec or fbgemm writes this process's plan."""
    tables = tmp_path / "tables.json"
    tables.write_text(json.dumps({"tables": [t.to_dict() for t in _identity_like()[0].tables]}))
    args = ["make", "--tables", str(tables), "--world-size", "8", "--hbm-gb", "16", "--cache-load-factor", "0.15",
            "--batch-size-per-rank", "1024"]
    assert plan_main.main([*args, "-o", str(tmp_path / "here.json")]) == 0
    blocked = ("import sys\n"
               "for name in ('torch', 'torchrec', 'fbgemm_gpu'):\n"
               "    sys.modules[name] = None  # any import of them raises ImportError\n"
               "from dlrm_dist.cli.plan_main import main\n"
               f"code = main({[*args, '-o', str(tmp_path / 'there.json')]!r})\n"
               "loaded = [m for m in sys.modules if m.split('.')[0] in ('torch', 'torchrec', 'fbgemm_gpu')\n"
               "          and sys.modules[m] is not None]\n"
               "print('loaded:', loaded)\n"
               "sys.exit(code)\n")
    done = subprocess.run([sys.executable, "-c", blocked], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "loaded: []" in done.stdout
    assert (tmp_path / "there.json").read_bytes() == (tmp_path / "here.json").read_bytes()


def test_sorted_json_equals_json_dumps() -> None:
    """planfile.dumps' writer gives json.dumps(indent=1, sort_keys=True)'s text, on plans and on odd values."""
    import enum
    import random

    class Kind(enum.IntEnum):
        A = 3

    rng = random.Random(0)
    leaves = [0, -1, 2**70, 1.0, -0.0, 5e-324, 1e300, 0.1 + 0.2, float("nan"), float("inf"), -float("inf"), True,
              False, None, "", "plain", "quote\" back\\ slash \n tab\t", "\u00e9\u4e2d\U0001f600", "\x00\x1f", Kind.A]

    def value(depth: int):
        r = rng.random()
        if depth > 3 or r < 0.4:
            return rng.choice(leaves)
        if r < 0.6:
            return [value(depth + 1) for _ in range(rng.randrange(4))]
        if r < 0.7:
            return tuple(rng.randrange(-5, 10**12) for _ in range(rng.randrange(5)))
        return {rng.choice(["a", "b", "z", "é", "A", "shards", ""]) + str(rng.randrange(3)): value(depth + 1)
                for _ in range(rng.randrange(5))}

    cases = [value(0) for _ in range(300)] + [{1: "int key"}, {"k": {2.5: None}}, {"x": object}]
    cases += [planfile.to_data(make_plan_file(inputs, "m.ebc")) for inputs in _identity_like()]
    for case in cases:
        try:
            want = json.dumps(case, indent=1, sort_keys=True)
        except TypeError:
            with pytest.raises(TypeError):
                planfile.sorted_json(case)
            continue
        assert planfile.sorted_json(case) == want, case
