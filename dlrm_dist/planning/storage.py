"""The planner's first storage check: tables that cannot fit anywhere, refused before any work.

TorchRec's storage reservation and estimators size each shard while enumerating options;
for a table of 2**40 columns that enumeration itself allocates (a MemoryError after minutes,
or a shape that overflows int64). So before anything is enumerated, built or allocated, each
table's smallest possible footprint — its fp32 weights plus the optimizer state TorchRec's
storage estimator would count — is set against the memory of the whole topology after the
budget shares. A table that cannot fit even split over every rank
is named with its size in bytes, the budget and what would hold it.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Sequence

from dlrm_dist.planning.errors import NoFitError
from dlrm_dist.planning.inputs import MAX_MEMORY_GB, MAX_WORLD_SIZE
from dlrm_dist.planning.types import GB, Budgets, Capacity, PlannerInputs, TableSpec, TopologySpec

if TYPE_CHECKING:  # planning (dlrm-plan make) imports no torch: only the job check below uses it
    import torch

WEIGHT_BYTES = 4  # fp32, TorchRec's default embedding data type
INT64_MAX = 2**63 - 1  # TorchRec and torch size tensors in int64 elements and bytes
# Optimizer state per table as TorchRec's storage estimator counts it: (floats per row, per element).
OPTIMIZER_STATE = {"sgd": (0, 0), "rowwise_adagrad": (1, 0), "adagrad": (0, 1), "adam": (0, 2)}
# A managed table's remapper (torchrec/modules/mc_modules.py, MCHManagedCollisionModule), built per
# row-wise shard on the shard's device. Per row it registers three int64 buffers of zch_size
# (the shard's rows): _mch_sorted_raw_ids, _mch_remapped_ids_mapping and the eviction policy's
# one metadata buffer (_mch_counts for LFU, _mch_last_access_iter for LRU). Per shard, whatever
# its rows: _output_segments_tensor (1025 int64: up to 1024 row-wise shards' bounds),
# _current_iter_tensor, _mch_slots and _delimiter (one int64 each). Not counted: the history
# buffers (_history_accumulator, LRU's _history_last_access_iter), sized at the first batch as
# 1.25 x the ids seen per batch x eviction_interval, which the planner's inputs do not carry.
ID_BYTES = 8
MANAGED_ROW_BYTES = 3 * ID_BYTES
MANAGED_SHARD_BYTES = (1025 + 3) * ID_BYTES


def remapper_bytes(shard_rows: Any) -> Any:
    """The remapper's memory beside a managed table's shard(s) of ``shard_rows`` rows (int or array)."""
    return shard_rows * MANAGED_ROW_BYTES + MANAGED_SHARD_BYTES


def table_bytes(table: TableSpec, optimizer: str) -> int:
    """The least memory ``table`` takes in any placement: weights + optimizer state, and a managed
    table's remapper (as one shard) (exact int)."""
    per_row, per_element = OPTIMIZER_STATE.get(optimizer, (0, 0))
    elements = table.rows * table.dim
    weights = WEIGHT_BYTES * (elements * (1 + per_element) + table.rows * per_row)
    return weights + (remapper_bytes(table.rows) if table.managed else 0)


def budget_bytes(inputs: PlannerInputs) -> int:
    """Memory the embeddings may use on the whole topology (HBM + DDR of every rank, shares applied)."""
    cap = Capacity.of(inputs)
    return int((cap.hbm + cap.ddr) * inputs.topology.world_size)


def _gb(x: float) -> str:
    return f"{x / GB:,.2f} GB"


def _budget_text(inputs: PlannerInputs) -> str:
    cap, t = Capacity.of(inputs), inputs.topology
    return (f"{budget_bytes(inputs):,} bytes ({_gb(budget_bytes(inputs))} = {t.world_size} {t.device} rank(s) x "
            f"(HBM {_gb(cap.hbm)} + DDR {_gb(cap.ddr)}) after budget shares)")


def _remedy(size: int, inputs: PlannerInputs) -> str:
    """The smallest world size that could hold ``size`` bytes, if any within the inputs' limits."""
    cap = Capacity.of(inputs)
    per_rank = cap.hbm + cap.ddr
    ranks = math.ceil(size / per_rank) if per_rank > 0 else MAX_WORLD_SIZE + 1
    if size <= INT64_MAX and ranks <= MAX_WORLD_SIZE:
        return f"would fit: a world size of at least {ranks:,} with this memory per rank, or fewer rows or a smaller dim"
    return "no topology holds it: use fewer rows or a smaller dim"


def storage_problems(inputs: PlannerInputs) -> list[str]:
    """Every table that cannot fit the whole topology even split over all its ranks.

    Only single tables are checked here: several tables that fit one by one go on to the
    partitioner, whose no-fit report (errors.fit_report) knows their options and remedies.
    """
    budget = budget_bytes(inputs)
    problems = []
    for t in inputs.tables:
        size = table_bytes(t, inputs.optimizer)
        if size > budget or size > INT64_MAX:
            why = ", beyond int64, which TorchRec's sizes use" if size > INT64_MAX else ""
            problems.append(f"table {t.name}: {t.rows:,} rows x {t.dim:,} dim needs at least {size:,} bytes "
                            f"({_gb(size)}: fp32 weights + {inputs.optimizer} state{why}); {_remedy(size, inputs)}")
    if problems:
        problems.append(f"the memory budget is {_budget_text(inputs)}")
    return problems


def check_storage(inputs: PlannerInputs) -> None:
    """Raises NoFitError naming each table too large for the topology, before anything is allocated."""
    problems = storage_problems(inputs)
    if problems:
        raise NoFitError("a table cannot fit this topology's memory: " + "; ".join(problems))


def _machine_memory_gb(device: torch.device) -> tuple[float, float]:
    """(device memory per rank, host memory this process may use) in GB: an upper bound of any budget here."""
    from dlrm_dist.distributed import resources

    return resources.device_memory_bytes(device) / GB, resources.host_memory_bytes() / GB


def check_job_storage(tables: Sequence[Any], world_size: int, local_size: int, device: torch.device,
                      optimizer: str) -> None:
    """The same check on a training job's tables (anything with name, rows, dim; a schema TableDef's
    ``remapper`` marks a managed table) and this machine.

    The trainer calls it before it builds the model, so a table of 2**40 columns is refused by
    name, with its bytes and the budget, instead of by an attempt to allocate 140 TB. The
    budget is the machine's whole memory (every share 1): only what cannot fit at all is
    refused here; the planner then applies the job's real budgets.
    """
    hbm, ddr = _machine_memory_gb(device)
    inputs = PlannerInputs(
        tables=tuple(TableSpec(name=t.name, rows=t.rows, dim=t.dim, managed=getattr(t, "remapper", None) is not None)
                     for t in tables),
        topology=TopologySpec(world_size=world_size, ranks_per_host=local_size, device=device.type,
                              hbm_gb=min(hbm, MAX_MEMORY_GB), ddr_gb=min(ddr, MAX_MEMORY_GB)),
        budgets=Budgets(hbm_share=1.0, ddr_share=1.0),
        optimizer=optimizer,
    )
    check_storage(inputs)
