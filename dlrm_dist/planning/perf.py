"""TorchRec's ``Perf`` (a shard's or rank's time per phase, ms), without importing TorchRec.

The same fields, defaults, ``total`` (what TorchRec's planner balances: every phase but
``input_dist_comms``, which overlaps with the previous batch; prefetch counted as blocking) and
``__add__`` as ``torchrec.distributed.planner.types.Perf``; a test keeps the two equal. Plan
estimates hold this one, so a plan file is read (``dlrm-plan inspect``, ``validate``) without
loading torch or TorchRec, which take several seconds to import.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(repr=True, eq=True)
class Perf:
    fwd_compute: float
    fwd_comms: float
    bwd_compute: float
    bwd_comms: float
    input_dist_comms: float = 0.0
    prefetch_compute: float = 0.0

    @property
    def total(self) -> float:
        return self.fwd_compute + self.bwd_compute + self.fwd_comms + self.bwd_comms + self.prefetch_compute

    def __add__(self, other: "Perf") -> "Perf":
        return Perf(
            fwd_compute=self.fwd_compute + other.fwd_compute,
            fwd_comms=self.fwd_comms + other.fwd_comms,
            bwd_compute=self.bwd_compute + other.bwd_compute,
            bwd_comms=self.bwd_comms + other.bwd_comms,
            input_dist_comms=self.input_dist_comms + other.input_dist_comms,
            prefetch_compute=self.prefetch_compute + other.prefetch_compute,
        )

    def __hash__(self) -> int:
        return hash((self.fwd_compute, self.fwd_comms, self.bwd_compute, self.bwd_comms,
                     self.input_dist_comms, self.prefetch_compute))
