"""Optimizers and the learning-rate schedule.

- Sharded embedding tables use fbgemm's fused optimizer, which updates rows inside the
  backward pass. It is requested the way TorchRec recommends: the embedding parameters are
  marked with PyTorch's ``_apply_optimizer_in_backward`` before planning (the marking also selects
  the fused kernel and lets the planner count optimizer state).
- Data-parallel tables have no fused kernel: their replicated weights get an ordinary
  optimizer of the same kind, so the embedding optimizer does not depend on the plan.
- MLPs: an ordinary optimizer over DDP-averaged gradients.
- Schedule: linear warmup, then polynomial decay (MLPerf DLRM), one factor for all groups.
"""

from __future__ import annotations

from dataclasses import dataclass
import torch
from torch import nn
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizer, KeyedOptimizerWrapper
from torchrec.optim.optimizers import in_backward_optimizer_filter
from torchrec import EmbeddingBagCollection

from dlrm_dist.config.sections import OptimConfig
from dlrm_dist.names import EMBEDDING_KEY
from dlrm_dist.optimizer_registry import DENSE, FUSED, REPLICATED_TABLES, mark_in_backward, optimizer_spec

def mark_embedding_optimizer(model: nn.Module, cfg: OptimConfig) -> None:
    """Attaches the fused embedding optimizer to every EmbeddingBagCollection's weights."""
    for module in model.modules():
        if isinstance(module, EmbeddingBagCollection):
            mark_in_backward(module.parameters(), cfg.embedding_optimizer, cfg.embedding_lr, cfg.eps)


def _is_embedding(name: str) -> bool:
    return EMBEDDING_KEY in name


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> KeyedOptimizer:
    """Fused (sharded tables) + replicated tables + dense, as one keyed optimizer."""
    fused = getattr(model, "fused_optimizer")
    unfused = list(in_backward_optimizer_filter(model.named_parameters(), include=False))
    parts: list[tuple[str, KeyedOptimizer]] = [(FUSED, fused)]
    dp_tables = {n: p for n, p in unfused if _is_embedding(n)}
    dense = {n: p for n, p in unfused if not _is_embedding(n)}
    if dp_tables:
        cls, kw = optimizer_spec(cfg.embedding_optimizer, cfg.embedding_lr, cfg.eps)
        parts.append((REPLICATED_TABLES, _eager(KeyedOptimizerWrapper(dp_tables, lambda ps: cls(ps, **kw)))))
    cls_d, kw_d = optimizer_spec(cfg.dense_optimizer, cfg.dense_lr, cfg.eps)
    parts.append((DENSE, _eager(KeyedOptimizerWrapper(dense, lambda ps: cls_d(ps, **kw_d)))))
    return CombinedOptimizer(parts)


def _eager(optimizer: KeyedOptimizer) -> KeyedOptimizer:
    """Creates lazily-made state (Adam's) now, as a fresh optimizer's, so a checkpoint can be
    loaded into it in place and every checkpoint has the same keys."""
    if len(optimizer.state) < len(optimizer.params):
        optimizer.init_state()  # a step with zero gradients: moments stay 0, weights unchanged
        for state in optimizer.state.values():
            if torch.is_tensor(state.get("step")):
                state["step"].zero_()  # that step must not count (Adam's bias correction)
        optimizer.zero_grad(set_to_none=True)
    return optimizer


@dataclass(frozen=True)
class LRSchedule:
    """Warmup then polynomial decay; ``factor(step)`` scales every group's peak rate."""

    warmup_steps: int = 0
    decay_start_step: int = 0
    decay_steps: int = 0
    decay_power: float = 2.0
    end_lr_factor: float = 0.0

    @staticmethod
    def from_config(cfg: OptimConfig) -> "LRSchedule":
        return LRSchedule(cfg.warmup_steps, cfg.decay_start_step, cfg.decay_steps, cfg.decay_power, cfg.end_lr_factor)

    def factor(self, step: int) -> float:
        """Multiplier of the peak rate at 0-based ``step``."""
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.decay_start_step and self.decay_steps and step >= self.decay_start_step:
            remaining = max(0.0, 1.0 - (step - self.decay_start_step) / self.decay_steps)
            return self.end_lr_factor + (1.0 - self.end_lr_factor) * remaining**self.decay_power
        return 1.0


class ScheduledLR:
    """Applies an LRSchedule to an optimizer's groups, remembering each group's peak rate.

    Call ``apply(step)`` before the step runs: the fused optimizer pushes its rate to the
    kernel on ``zero_grad``, i.e. before the backward pass that applies the update.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, schedule: LRSchedule) -> None:
        self.schedule = schedule
        self.groups = [(g, float(g["lr"])) for g in optimizer.param_groups]

    def apply(self, step: int) -> float:
        f = self.schedule.factor(step)
        for group, peak in self.groups:
            group["lr"] = peak * f
        return f
