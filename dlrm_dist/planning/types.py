"""Typed planner estimates: what a placement is expected to cost, per rank and in summary.

The per-rank time is TorchRec's own :class:`~torchrec.distributed.planner.types.Perf`
(its fields are the breakdown, ``Perf.total`` the cost), beside memory and IO bytes, as
TorchRec's planner keeps ``Perf`` and ``Storage`` per shard. Everything that follows from
other figures (cost, headroom, imbalance, samples/s) is a property, so a plan file stores
each number once.

Plan-file form (``to_dict``/``from_dict``), version 2; version-1 files are read by
``from_dict(..., version=1)``, which drops the numbers version 1 stored twice.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from torchrec.distributed.planner.types import Perf

# The fields of TorchRec's Perf, and those its ``total`` counts: input_dist_comms is reported
# but not counted (it overlaps with the previous batch).
PERF_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Perf))
COST_PARTS: tuple[str, ...] = tuple(f for f in PERF_FIELDS if f != "input_dist_comms")


def _imbalance(values: Sequence[float]) -> float:
    """max/mean - 1 (0 when everything is 0); never below 0, which rounding of equal loads could give."""
    mean = sum(values) / len(values) if values else 0.0
    return max(max(values) / mean - 1.0, 0.0) if mean > 0 else 0.0


def _fields(cls: type, d: dict[str, Any]) -> dict[str, Any]:
    """The entries of ``d`` that are fields of dataclass ``cls`` (a missing one raises KeyError)."""
    return {f.name: d[f.name] for f in dataclasses.fields(cls)}


@dataclass(frozen=True)
class RankEstimate:
    """One rank: TorchRec's perf breakdown (ms per iteration), memory, IO bytes, shards."""

    rank: int
    perf: Perf
    hbm_bytes: int
    ddr_bytes: int
    input_bytes: int  # ids received per iteration (TorchRec's IO-size model)
    output_bytes: int  # pooled embeddings sent per iteration
    num_tables: int
    shards_by_type: dict[str, int]
    hbm_by_type: dict[str, int]
    ddr_by_type: dict[str, int]

    @property
    def cost_ms(self) -> float:
        """TorchRec's Perf.total: what the planner balances."""
        return self.perf.total

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "perf"}
        return {**d, **dataclasses.asdict(self.perf)}

    def describe(self) -> dict[str, Any]:
        """``to_dict`` with the derived cost: what ``--json`` prints."""
        return {**self.to_dict(), "cost_ms": self.cost_ms}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RankEstimate":
        perf = Perf(**{f: float(d[f]) for f in PERF_FIELDS})
        kept = {f.name: d[f.name] for f in dataclasses.fields(cls) if f.name != "perf"}
        return cls(perf=perf, **kept)


@dataclass(frozen=True)
class TableCost:
    """A table's cost on the bottleneck rank (one of the tables driving it)."""

    table: str
    cost_ms: float


@dataclass(frozen=True)
class PlanSummary:
    """The plan as a whole: the bottleneck, balance, memory against budget, traffic."""

    bottleneck_rank: int
    bottleneck_tables: tuple[TableCost, ...]  # the top tables of the bottleneck rank by cost
    estimated_iteration_ms: float  # the bottleneck rank's cost: the embedding part's iteration time
    cost_imbalance: float  # max/mean - 1 over ranks
    hbm_imbalance: float
    ddr_imbalance: float
    hbm_budget_bytes: int  # per rank
    ddr_budget_bytes: int
    max_hbm_bytes: int  # on the fullest rank
    max_ddr_bytes: int
    all_to_all_bytes_per_sample: float
    global_batch_size: int

    @property
    def hbm_headroom_bytes(self) -> int:
        return self.hbm_budget_bytes - self.max_hbm_bytes

    @property
    def ddr_headroom_bytes(self) -> int:
        return self.ddr_budget_bytes - self.max_ddr_bytes

    @property
    def fits(self) -> bool:
        return self.hbm_headroom_bytes >= 0 and self.ddr_headroom_bytes >= 0

    @property
    def estimated_samples_per_s(self) -> Optional[float]:
        ms = self.estimated_iteration_ms
        return self.global_batch_size / (ms / 1000.0) if ms > 0 else None

    @classmethod
    def of(cls, per_rank: Sequence[RankEstimate], drivers: Sequence[TableCost], hbm_budget: int, ddr_budget: int,
           a2a_bytes_per_sample: float, global_batch_size: int) -> "PlanSummary":
        """The summary of ``per_rank`` (bottleneck, imbalance and maxima computed here)."""
        cost = [r.cost_ms for r in per_rank]
        hbm, ddr = [r.hbm_bytes for r in per_rank], [r.ddr_bytes for r in per_rank]
        top = max(range(len(cost)), key=cost.__getitem__)
        return cls(bottleneck_rank=top, bottleneck_tables=tuple(drivers), estimated_iteration_ms=cost[top],
                   cost_imbalance=_imbalance(cost), hbm_imbalance=_imbalance(hbm), ddr_imbalance=_imbalance(ddr),
                   hbm_budget_bytes=int(hbm_budget), ddr_budget_bytes=int(ddr_budget), max_hbm_bytes=max(hbm),
                   max_ddr_bytes=max(ddr), all_to_all_bytes_per_sample=a2a_bytes_per_sample,
                   global_batch_size=global_batch_size)

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["bottleneck_tables"] = [dataclasses.asdict(t) for t in self.bottleneck_tables]
        return d

    def describe(self) -> dict[str, Any]:
        """``to_dict`` with the derived figures: what ``--json`` prints."""
        return {**self.to_dict(), "hbm_headroom_bytes": self.hbm_headroom_bytes,
                "ddr_headroom_bytes": self.ddr_headroom_bytes, "fits": self.fits,
                "estimated_samples_per_s": self.estimated_samples_per_s}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PlanSummary":
        d = dict(d)
        d["bottleneck_tables"] = tuple(TableCost(**t) for t in d["bottleneck_tables"])
        return cls(**_fields(cls, d))


@dataclass(frozen=True)
class PlanEstimates:
    """Per-rank estimates and their summary, as a plan file holds them."""

    per_rank: tuple[RankEstimate, ...]
    summary: PlanSummary

    def to_dict(self) -> dict[str, Any]:
        return {"per_rank": [r.to_dict() for r in self.per_rank], "summary": self.summary.to_dict()}

    def describe(self) -> dict[str, Any]:
        """Every figure, derived ones included (``dlrm-plan inspect --json``)."""
        return {"per_rank": [r.describe() for r in self.per_rank], "summary": self.summary.describe()}

    @classmethod
    def from_dict(cls, d: dict[str, Any], version: int) -> "PlanEstimates":
        """Reads a plan file's ``estimates`` section (``version`` of the plan-file format)."""
        summary = dict(d["summary"])
        if version == 1:  # version 1 stored headroom (budget - max) and the iteration time twice
            summary["max_hbm_bytes"] = summary["hbm_budget_bytes"] - summary["hbm_headroom_bytes"]
            summary["max_ddr_bytes"] = summary["ddr_budget_bytes"] - summary["ddr_headroom_bytes"]
        return cls(tuple(RankEstimate.from_dict(r) for r in d["per_rank"]), PlanSummary.from_dict(summary))
