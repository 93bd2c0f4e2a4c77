"""Optimizer construction details that checkpoints rely on."""

from __future__ import annotations

import torch
from torchrec.optim.keyed import KeyedOptimizerWrapper

from dlrm_dist.training.optimizer_setup import _eager


def test_eager_state_leaves_adam_exactly_as_a_fresh_one() -> None:
    """State made up front (so a checkpoint can load into it) must not count as a step."""
    torch.manual_seed(0)
    a = torch.nn.Parameter(torch.randn(5, 3))
    b = torch.nn.Parameter(a.detach().clone())
    eager = _eager(KeyedOptimizerWrapper({"w": a}, lambda ps: torch.optim.Adam(ps, lr=0.1)))
    assert set(eager.state[a]) == {"step", "exp_avg", "exp_avg_sq"} and float(eager.state[a]["step"]) == 0
    assert a.grad is None and torch.equal(a, b)
    fresh = torch.optim.Adam([b], lr=0.1)
    for _ in range(3):
        g = torch.randn(5, 3)
        a.grad, b.grad = g.clone(), g.clone()
        eager.step()
        fresh.step()
    assert torch.equal(a, b)
    assert torch.equal(eager.state[a]["exp_avg_sq"], fresh.state[b]["exp_avg_sq"])
