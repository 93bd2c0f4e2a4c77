"""Optimizer names used in configs and plan inputs, mapped to their torch/torchrec classes."""

from __future__ import annotations

from typing import Any

import torch
from torchrec.optim import RowWiseAdagrad

OPTIMIZER_CLASSES: dict[str, type[torch.optim.Optimizer]] = {
    "sgd": torch.optim.SGD,
    "adagrad": torch.optim.Adagrad,
    "rowwise_adagrad": RowWiseAdagrad,
    "adam": torch.optim.Adam,
}


def optimizer_spec(name: str, lr: float, eps: float) -> tuple[type[torch.optim.Optimizer], dict[str, Any]]:
    """The optimizer class and its arguments for a config name."""
    if name not in OPTIMIZER_CLASSES:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZER_CLASSES)}")
    kwargs: dict[str, Any] = {"lr": lr}
    if name != "sgd":
        kwargs["eps"] = eps
    return OPTIMIZER_CLASSES[name], kwargs
