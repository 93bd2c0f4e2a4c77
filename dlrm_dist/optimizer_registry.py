"""Optimizer names used in configs and plan inputs, mapped to their torch/torchrec classes,
and the names the training optimizer's parts and states go by (shared by training and
checkpointing, so neither imports the other)."""

from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import nn
from torch.distributed.optim import _apply_optimizer_in_backward
from torchrec.optim import RowWiseAdagrad

OPTIMIZER_CLASSES: dict[str, type[torch.optim.Optimizer]] = {
    "sgd": torch.optim.SGD,
    "adagrad": torch.optim.Adagrad,
    "rowwise_adagrad": RowWiseAdagrad,
    "adam": torch.optim.Adam,
}

# The parts of the combined training optimizer: fbgemm's fused optimizer of the sharded
# tables, ordinary optimizers of the data-parallel (replicated) tables and of the MLPs.
FUSED, REPLICATED_TABLES, DENSE = "fused", "replicated_tables", "dense"

# Per-row/element state of each embedding optimizer: the torch optimizer's name (used for
# data-parallel tables, and as the layout-independent name in checkpoints) -> fbgemm's name.
EMBEDDING_STATES: dict[str, dict[str, str]] = {
    "sgd": {},
    "adagrad": {"sum": "momentum1"},
    "rowwise_adagrad": {"sum": "momentum1"},
    "adam": {"exp_avg": "momentum1", "exp_avg_sq": "momentum2"},
}


def mark_in_backward(params: Iterable[nn.Parameter], name: str, lr: float, eps: float) -> None:
    """Attaches optimizer ``name`` to ``params`` to run inside the backward pass (fbgemm's fused update).

    PyTorch's ``_apply_optimizer_in_backward``, which TorchRec 1.8 names as the replacement of
    its own deprecated ``apply_optimizer_in_backward`` (a wrapper around it).
    """
    cls, kwargs = optimizer_spec(name, lr, eps)
    _apply_optimizer_in_backward(optimizer_class=cls, params=params, optimizer_kwargs=kwargs)


def optimizer_spec(name: str, lr: float, eps: float) -> tuple[type[torch.optim.Optimizer], dict[str, Any]]:
    """The optimizer class and its arguments for a config name."""
    if name not in OPTIMIZER_CLASSES:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZER_CLASSES)}")
    kwargs: dict[str, Any] = {"lr": lr}
    if name != "sgd":
        kwargs["eps"] = eps
    return OPTIMIZER_CLASSES[name], kwargs
