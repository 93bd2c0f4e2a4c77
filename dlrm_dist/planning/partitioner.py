"""Our proposer + partitioner: choose an option per table and a rank per shard.

1. Memory: if the tables cannot all sit in HBM, the tables whose UVM-cached variant costs
   least per byte of HBM saved are moved to a cached (then plain UVM) kernel until the
   total fits. If nothing fits, NoFitError says what would.
2. Cost: for a series of targets T, each table takes its cheapest option (total cost over
   shards) whose largest shard costs at most T — so big tables get split only as far as
   balance needs — and shards are placed largest first on the least loaded rank with room
   (LPT). Where that order leaves a table no room, the same choice is also placed the way
   TorchRec's greedy partitioner does, largest storage first, before tables are split
   further (see ``partition``). The best placement over all targets is kept.
3. Refinement: shards are moved off the bottleneck rank, or swapped with a cheaper shard of
   another rank, while that lowers it.

Everything is numpy over TorchRec's per-shard estimates (options.py).
"""

from __future__ import annotations

import heapq
from typing import Optional

import numpy as np

from dlrm_dist.planning.errors import NoFitError, fit_report
from dlrm_dist.names import UVM_KERNELS
from dlrm_dist.planning.placement import bottleneck, rank_totals
from dlrm_dist.planning.types import Capacity, Option, PlannerInputs, TablePlacement

NUM_TARGETS = 24
NUM_BREAKS = 16
REFINE_MOVES = 2000
SWAP_PARTNERS = 4  # a swap pairs the bottleneck rank with one of this many least-loaded ranks


def _in_hbm(o: Option) -> bool:
    return o.kernel not in UVM_KERNELS


def _hbm(o: Option) -> float:
    return float(o.hbm.sum())


def _tier(o: Option) -> int:
    """How much HBM an option's kind takes: 0 replicated (data_parallel), 1 sharded in HBM,
    2 UVM-cached (the cache in HBM), 3 plain UVM."""
    if _in_hbm(o):
        return 0 if o.sharding_type == "data_parallel" else 1
    return 2 if o.kernel == "fused_uvm_caching" else 3


def _fits_one_rank(o: Option, cap: Capacity) -> bool:
    return bool(o.hbm.max() <= cap.hbm and o.ddr.max() <= cap.ddr)


class _Tiers:
    """One table's memory tiers: per tier, the cost and HBM of its cheapest placeable option
    (the one the chooser takes unless a cost cap splits the table further)."""

    def __init__(self, opts: list[Option], cap: Capacity) -> None:
        placeable = [o for o in opts if _fits_one_rank(o, cap)] or opts
        best: dict[int, Option] = {}
        for o in placeable:
            k = _tier(o)
            if k not in best or (o.total_cost, _hbm(o)) < (best[k].total_cost, _hbm(best[k])):
                best[k] = o
        self.hbm = {k: _hbm(o) for k, o in best.items()}
        self.cost = {k: o.total_cost for k, o in best.items()}
        in_hbm = [k for k in best if k <= 1]
        self.current = min(in_hbm, key=lambda k: self.cost[k]) if in_hbm else min(best)

    def next_step(self) -> Optional[tuple[float, int]]:
        """(extra cost per HBM byte saved, tier) of the best deeper tier, if any saves HBM."""
        k = self.current
        steps = [((self.cost[j] - self.cost[k]) / (self.hbm[k] - self.hbm[j]), j)
                 for j in self.hbm if j > k and self.hbm[j] < self.hbm[k]]
        return min(steps) if steps else None


def _memory_tiers(options: list[list[Option]], inputs: PlannerInputs, cap: Capacity) -> list[list[Option]]:
    """Per table, the options allowed once enough tables are offloaded to fit memory.

    Tables start in their cheapest in-HBM tier (replicated or sharded; UVM if constraints
    allow nothing else); while the HBM they need exceeds the budget, the table whose next
    tier (sharded instead of replicated, UVM-cached, plain UVM) costs least per byte of HBM
    saved moves to it, and keeps only options of that tier or deeper. A tier's HBM is that
    of the option the chooser will take there: a cached table keeps its cache (the load
    factor's share of rows) in HBM, a replicated one a copy per rank. Counting every UVM option as the plain UVM
    kernel's near-zero HBM while the table then takes the cheaper cached kernel offloaded
    too few tables, and the partitioner's repairs then fell to plain-UVM or row-wise options
    costing 10-100x (issue 22's 300-table case). Only options whose every shard fits one
    rank count: a table too big for one rank's host memory has no table-wise UVM tier.
    """
    if inputs.topology.device != "cuda":
        return options  # CPU: every kernel is host memory; the partitioner checks DDR
    budget = 0.97 * cap.hbm * inputs.topology.world_size
    tiers = [_Tiers(opts, cap) for opts in options]
    # A table none of whose in-HBM options fits one rank starts in the (UVM) tier it can be placed in:
    # keeping only its in-HBM options left it unplaceable whenever the other tables fit HBM (suite s1019).
    allowed = [([o for o in opts if _in_hbm(o)] or opts) if tt.current <= 1
               else [o for o in opts if _tier(o) >= tt.current] for opts, tt in zip(options, tiers)]
    demand = sum(tt.hbm[tt.current] for tt in tiers)
    if demand <= budget:
        return allowed
    heap = [(step[0], t) for t, tt in enumerate(tiers) if (step := tt.next_step()) is not None]
    heapq.heapify(heap)
    moved: set[int] = set()
    while demand > budget and heap:
        _, t = heapq.heappop(heap)
        tt = tiers[t]
        step = tt.next_step()
        if step is None:
            continue
        demand -= tt.hbm[tt.current] - tt.hbm[step[1]]
        tt.current = step[1]
        moved.add(t)
        nxt = tt.next_step()
        if nxt is not None:
            heapq.heappush(heap, (nxt[0], t))
    for t in moved:
        allowed[t] = [o for o in options[t] if _tier(o) >= tiers[t].current]
    return allowed


class _Placer:
    """LPT placement of one choice of options, honouring per-rank memory."""

    def __init__(self, inputs: PlannerInputs, cap: Capacity) -> None:
        self.n = inputs.topology.world_size
        self.local = inputs.topology.ranks_per_host
        self.cap = cap
        self._uniform_loads: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = {}  # by id(option)

    def place(self, choice: list[Option], by_storage: bool = False) -> tuple[Optional[list[TablePlacement]], list[int]]:
        """Places fixed (uniform) options, then the others largest cost first (LPT), or with ``by_storage``
        largest storage first (TorchRec's GreedyPerfPartitioner's order). None and the failed tables when
        some table has no room."""
        load, hbm, ddr = np.zeros(self.n), np.zeros(self.n), np.zeros(self.n)
        placed: list[Optional[TablePlacement]] = [None] * len(choice)
        failed: list[int] = []
        for t, o in enumerate(choice):  # fixed placements first
            if o.placement == "uniform":
                ranks, dl, dh, dd = self._uniform(o)
                if not self._fits(hbm, ddr, dh, dd).all():
                    failed.append(t)
                    continue
                placed[t] = TablePlacement(o, ranks)
                load += dl
                hbm += dh
                ddr += dd
        movable = [t for t, o in enumerate(choice) if o.placement != "uniform"]
        movable.sort(key=(lambda t: (-_hbm(choice[t]), -float(choice[t].ddr.sum()))) if by_storage
                     else (lambda t: -choice[t].max_cost))
        for t in movable:
            o = choice[t]
            ranks = self._place_host(o, load, hbm, ddr) if o.placement == "host" else self._place_device(o, load, hbm, ddr)
            if ranks is None:
                failed.append(t)
                continue
            placed[t] = TablePlacement(o, ranks)
        if failed:
            return None, failed
        return placed, []  # type: ignore[return-value]

    def _uniform(self, o: Option) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """A fixed-placement option's ranks and per-rank load, HBM and DDR: the same for every target, so
        computed once per option (the partitioner places each choice of up to 50 targets)."""
        if id(o) not in self._uniform_loads:
            ranks = np.arange(len(o.sizes)) % self.n
            self._uniform_loads[id(o)] = (ranks, *(np.bincount(ranks, w, minlength=self.n)
                                                   for w in (o.shard_cost, o.hbm, o.ddr)))
        return self._uniform_loads[id(o)]

    def _fits(self, hbm: np.ndarray, ddr: np.ndarray, dh: float, dd: float) -> np.ndarray:
        return (hbm + dh <= self.cap.hbm + 1e-6) & (ddr + dd <= self.cap.ddr + 1e-6)

    def _place_device(self, o: Option, load, hbm, ddr) -> Optional[np.ndarray]:
        ranks = np.empty(len(o.sizes), dtype=np.int64)
        cost = o.shard_cost
        for s in np.argsort(-cost, kind="stable"):
            ok = self._fits(hbm, ddr, o.hbm[s], o.ddr[s])
            if not ok.any():
                return None
            r = int(np.argmin(np.where(ok, load, np.inf)))
            ranks[s] = r
            load[r] += cost[s]
            hbm[r] += o.hbm[s]
            ddr[r] += o.ddr[s]
        return ranks

    def _place_host(self, o: Option, load, hbm, ddr) -> Optional[np.ndarray]:
        """Shard j on local rank j % L of the host where the resulting peak load is lowest."""
        local = np.arange(len(o.sizes)) % self.local
        dl, dh, dd = (np.bincount(local, w, minlength=self.local) for w in (o.shard_cost, o.hbm, o.ddr))
        shape = (self.n // self.local, self.local)
        fits = ((hbm.reshape(shape) + dh <= self.cap.hbm + 1e-6) & (ddr.reshape(shape) + dd <= self.cap.ddr + 1e-6)).all(1)
        if not fits.any():
            return None
        peak = np.where(fits, (load.reshape(shape) + dl).max(1), np.inf)
        host = int(np.argmin(peak))
        sl = slice(host * self.local, (host + 1) * self.local)
        load[sl] += dl
        hbm[sl] += dh
        ddr[sl] += dd
        return host * self.local + local


def _choose(allowed: list[list[Option]], target: float) -> list[Option]:
    choice = []
    for opts in allowed:
        under = [o for o in opts if o.max_cost <= target]
        choice.append(min(under, key=lambda o: o.total_cost) if under else min(opts, key=lambda o: o.max_cost))
    return choice


def _targets(allowed: list[list[Option]], n: int) -> np.ndarray:
    """Per-shard cost caps to try, from the floor (no table can be split finer) upwards.

    Caps below the mean load matter: splitting a big table that would fit whole often
    packs the rest better.
    """
    cheapest = [min(opts, key=lambda o: o.total_cost) for opts in allowed]
    floor = max(min(o.max_cost for o in opts) for opts in allowed)
    upper = max(o.max_cost for o in cheapest)
    if upper <= floor:
        return np.array([upper])
    steps = np.geomspace(floor, upper, NUM_TARGETS)
    # Also exactly at (just under) the heaviest tables' whole-table costs: where choices change.
    breaks = np.sort([o.max_cost for o in cheapest if floor <= o.max_cost <= upper])[-NUM_BREAKS:]
    return np.unique(np.concatenate([steps, breaks, breaks * (1 - 1e-9), [upper]]))


def _repair(allowed: list[list[Option]], choice: list[Option], failed: list[int]) -> bool:
    """For tables that did not fit, the cheapest option with smaller shards (one step down).

    Stepping to the cheapest smaller option rather than the smallest one matters: a 70M-row
    table that does not fit table-wise fits table-row-wise (8 shards, 8 ms) long before it
    needs row-wise (32 shards, 170 ms, or 7,700 ms in plain UVM); the caller repeats.
    """
    changed = False
    for t in failed:
        here = (choice[t].hbm.max(), choice[t].ddr.max())
        smaller = [o for o in allowed[t] if (o.hbm.max(), o.ddr.max()) < here]
        if smaller:
            choice[t] = min(smaller, key=lambda o: (o.total_cost, o.hbm.max() + o.ddr.max()))
            changed = True
    return changed


class _Refiner:
    """Local search on a placement: single device-placed shards moved, or pairs swapped, off the bottleneck rank."""

    def __init__(self, placed: list[TablePlacement], n: int, cap: Capacity) -> None:
        self.cap = cap
        self.load, self.hbm, self.ddr = rank_totals(placed, n)
        self.movable = [(tp, s) for tp in placed if tp.option.placement == "device" for s in range(len(tp.ranks))]
        self.rank = np.array([tp.ranks[s] for tp, s in self.movable], dtype=np.int64)
        self.cost = np.array([tp.option.shard_cost[s] for tp, s in self.movable])
        self.shard_hbm = np.array([tp.option.hbm[s] for tp, s in self.movable], dtype=np.float64)
        self.shard_ddr = np.array([tp.option.ddr[s] for tp, s in self.movable], dtype=np.float64)

    def _room(self, r: np.ndarray, dh: np.ndarray, dd: np.ndarray) -> np.ndarray:
        return (self.hbm[r] + dh <= self.cap.hbm + 1e-6) & (self.ddr[r] + dd <= self.cap.ddr + 1e-6)

    def move(self) -> bool:
        """The move with the largest gain (the first such in table, then shard order) of a shard on the
        bottleneck to the least-loaded rank with room for it; False if none lowers the bottleneck."""
        load = self.load
        top = int(np.argmax(load))
        here = np.flatnonzero(self.rank == top)
        if not len(here):
            return False
        c = self.cost[here]
        ok = ((self.hbm + self.shard_hbm[here, None] <= self.cap.hbm + 1e-6)
              & (self.ddr + self.shard_ddr[here, None] <= self.cap.ddr + 1e-6))
        ok[:, top] = False
        room = ok.any(axis=1)
        to = np.argmin(np.where(ok, load, np.inf), axis=1)
        gain = load[top] - np.maximum(load[top] - c, load[to] + c)
        gain = np.where(room & (gain > 1e-12), gain, -np.inf)
        k = int(np.argmax(gain))
        if gain[k] == -np.inf:
            return False
        self._shift(int(here[k]), top, int(to[k]))
        return True

    def swap(self) -> bool:
        """The swap with the largest gain of a shard on the bottleneck with a cheaper one on one of the
        SWAP_PARTNERS least-loaded ranks; False if none lowers the bottleneck. A move cannot balance two
        ranks whose difference is smaller than every shard's cost; a swap moves only the difference of two."""
        load = self.load
        top = int(np.argmax(load))
        here = np.flatnonzero(self.rank == top)
        partners = [r for r in np.argsort(load, kind="stable")[:SWAP_PARTNERS] if r != top]
        there = np.flatnonzero(np.isin(self.rank, partners))
        if not len(here) or not len(there):
            return False
        d = self.cost[here, None] - self.cost[None, there]  # what the bottleneck sheds
        to = self.rank[there][None, :]
        gain = load[top] - np.maximum(load[top] - d, load[to] + d)
        dh = self.shard_hbm[here, None] - self.shard_hbm[None, there]
        dd = self.shard_ddr[here, None] - self.shard_ddr[None, there]
        ok = self._room(np.full_like(to, top), -dh, -dd) & self._room(to, dh, dd) & (gain > 1e-12)
        gain = np.where(ok, gain, -np.inf)
        i, j = np.unravel_index(int(np.argmax(gain)), gain.shape)
        if gain[i, j] == -np.inf:
            return False
        a, b = int(here[i]), int(there[j])
        r = int(self.rank[b])
        self._shift(a, top, r)
        self._shift(b, r, top)
        return True

    def _shift(self, j: int, frm: int, to: int) -> None:
        tp, s = self.movable[j]
        for arr, v in ((self.load, tp.option.shard_cost[s]), (self.hbm, tp.option.hbm[s]), (self.ddr, tp.option.ddr[s])):
            arr[frm] -= v
            arr[to] += v
        tp.ranks[s] = to
        self.rank[j] = to


def _place_repaired(placer: _Placer, allowed: list[list[Option]], choice: list[Option],
                    by_storage: bool) -> tuple[Optional[list[TablePlacement]], list[int], bool]:
    """Places ``choice`` (changed in place), repairing tables that found no room until all fit or no
    table can shrink; and whether any repair was needed."""
    for attempt in range(len(choice) + 1):
        placed, failed = placer.place(choice, by_storage)
        if placed is not None or not _repair(allowed, choice, failed):
            break
    return placed, failed, attempt > 0 or placed is None


def _refine(placed: list[TablePlacement], n: int, cap: Capacity) -> None:
    """Moves single device-placed shards off the bottleneck rank while it helps; when no move does, one
    swap, then moves again (at most REFINE_MOVES steps in all)."""
    r = _Refiner(placed, n, cap)
    if not r.movable:
        return
    for _ in range(REFINE_MOVES):
        if not (r.move() or r.swap()):
            return


def partition(options: list[list[Option]], inputs: PlannerInputs) -> list[TablePlacement]:
    """The best placement found; raises NoFitError when the tables cannot fit at all."""
    cap = Capacity.of(inputs)
    n = inputs.topology.world_size
    empty = [inputs.tables[t] for t, opts in enumerate(options) if not opts]
    if empty:
        said = "; ".join(f"{t.name} (sharding_types {list(t.sharding_types or ['any'])}, compute_kernels "
                         f"{list(t.compute_kernels or ['any'])})" for t in empty[:10])
        raise NoFitError(f"no sharding option is allowed on {inputs.topology.device} for table(s) {said}: the "
                         "device's sharder offers no allowed (sharding type, kernel) pair; allow more of either")
    allowed = _memory_tiers(options, inputs, cap)
    placer = _Placer(inputs, cap)
    best: Optional[list[TablePlacement]] = None
    best_cost = np.inf
    last_failed: list[int] = []
    failures: dict[tuple[int, ...], list[int]] = {}
    tried: set[tuple[int, ...]] = set()
    for target in _targets(allowed, n):
        choice = _choose(allowed, float(target))
        # Neighbouring targets often choose the same options; placing is deterministic, so a choice
        # already placed gives the same placement (not better than itself) or the same failure.
        key = tuple(id(o) for o in choice)
        if key in tried:
            last_failed = failures.get(key, last_failed)
            continue
        tried.add(key)
        # LPT by cost places the cheap but large shards last, into memory the others have fragmented
        # (suite s1034: big one-hot tables table-row-wise found no host with room on all its ranks,
        # and the repairs split them row-wise at 44x the cost). So where the cost order leaves a table
        # no room, the unrepaired choice is also placed largest storage first (TorchRec's order); both
        # are repaired as needed and the better kept: a superset of the cost order's candidates.
        for by_storage in (False, True):
            placed, failed, repaired = _place_repaired(placer, allowed, list(choice), by_storage)
            if placed is None:
                if not by_storage:
                    last_failed = failures[key] = failed
            elif (cost := bottleneck(placed, n)) < best_cost - 1e-12:
                best, best_cost = placed, cost
            if placed is not None and not repaired:
                break  # the cost order placed the choice as chosen
    if best is None:
        raise NoFitError(fit_report(options, inputs, cap, last_failed))
    _refine(best, n, cap)
    return best
