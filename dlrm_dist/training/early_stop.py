"""Early stopping and the best evaluation: a pure rule, and its decision shared by every rank.

``StopRule`` sees one metric value per evaluation. An evaluation improves when its value is
better than the best so far by more than ``min_delta`` (the first finite value always
does; NaN never does: an NE of a split without positives must not become "the best").
After ``patience`` evaluations in a row without an improvement the rule says stop.

Every rank must stop at the same step, or the ranks still training wait forever in their
next all-to-all. The metrics are already all-reduced (every rank computes the same values),
but a decision taken from floats on each rank separately is only as identical as those
floats; ``rank0_value`` broadcasts rank 0's value and every rank's rule judges that one, so
the ranks cannot disagree. The rule's state (``BestMark``) travels in each checkpoint's manifest, so a resumed
run keeps counting where it stopped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist

from dlrm_dist.checkpoint.manifest import BestMark


@dataclass(frozen=True)
class Verdict:
    improved: bool
    stop: bool


class StopRule:
    """Patience over evaluations (see the module docstring)."""

    def __init__(self, metric: str, mode: str, patience: int, min_delta: float = 0.0) -> None:
        if mode not in ("max", "min") or patience < 1 or not min_delta >= 0:
            raise ValueError(f"mode {mode!r}, patience {patience}, min_delta {min_delta}: need max|min, >= 1, >= 0")
        self.metric, self.mode, self.patience, self.min_delta = metric, mode, patience, min_delta
        self.best_step: Optional[int] = None
        self.best_value = math.nan
        self.stale = 0  # evaluations in a row without an improvement
        self.stopped = False

    @property
    def best(self) -> Optional[BestMark]:
        """The best evaluation so far and the rule's state (what a checkpoint manifest records)."""
        if self.best_step is None:
            return None
        return BestMark(self.best_step, self.metric, self.mode, self.best_value, self.stale, self.stopped)

    def resume(self, mark: Optional[BestMark]) -> None:
        """Takes up the state a checkpoint recorded (ignored if it judged another metric or mode)."""
        if mark is not None and (mark.metric, mark.mode) == (self.metric, self.mode):
            self.best_step, self.best_value, self.stale, self.stopped = mark.step, mark.value, mark.stale, mark.stopped

    def better(self, value: float) -> bool:
        """Whether ``value`` improves on the best so far by more than ``min_delta``."""
        if not math.isfinite(value):
            return False
        if self.best_step is None:
            return True
        gain = value - self.best_value if self.mode == "max" else self.best_value - value
        return gain > self.min_delta

    def observe(self, step: int, value: float) -> Verdict:
        """Records the evaluation at ``step``; says whether it improved and whether to stop."""
        if self.better(value):
            self.best_step, self.best_value, self.stale = step, float(value), 0
            return Verdict(improved=True, stop=False)
        self.stale += 1
        self.stopped = self.stale >= self.patience
        return Verdict(improved=False, stop=self.stopped)

    def reason(self) -> str:
        """Why the rule stopped (for the log and the summary)."""
        if self.best_step is None:
            return f"{self.metric} was not a finite number in {self.stale} evaluation(s)"
        return (f"{self.metric} has not improved by more than {self.min_delta:g} for {self.stale} "
                f"evaluation(s) (best {self.best_value:.4f} at step {self.best_step})")


def rank0_value(value: float, device: torch.device) -> float:
    """Rank 0's ``value`` on every rank (a collective; without a process group, ``value`` itself).

    Every rank then feeds the same number to its own ``StopRule``: the rules' states and
    verdicts are identical by construction, whatever the last bits of each rank's metrics.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.broadcast(t, src=0)
    return float(t.item())
