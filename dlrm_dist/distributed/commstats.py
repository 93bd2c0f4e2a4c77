"""Measured bytes of the embedding exchange: TorchRec's all-to-alls, counted as they happen.

TorchRec's sharded collections call ``torch.distributed.all_to_all_single`` (ids to their
owners, pooled embeddings back); row-wise shards return pooled sums through
``reduce_scatter_tensor``. ``CommCounter`` wraps both for the life of a run and adds up the
bytes each rank receives: a measurement to set beside the planner's estimate.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import torch.distributed as dist

_WRAPPED = ("all_to_all_single", "reduce_scatter_tensor")


class CommCounter:
    """Counts received bytes of the wrapped collectives until ``close``."""

    def __init__(self) -> None:
        self.bytes_received = 0
        self._originals: dict[str, Callable[..., Any]] = {}
        for name in _WRAPPED:
            original = getattr(dist, name)
            self._originals[name] = original
            setattr(dist, name, self._counting(original))

    def _counting(self, original: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(original)
        def wrapper(output, *args, **kwargs):
            self.bytes_received += output.numel() * output.element_size()
            return original(output, *args, **kwargs)

        return wrapper

    def close(self) -> None:
        for name, original in self._originals.items():
            setattr(dist, name, original)
        self._originals = {}
