"""From parsed raw values to stored arrays: dense log transform and categorical ids.

- dense: log(1 + max(x, 0)) as float32 (missing = 0), as DLRM's reference does;
- ids, ``hash`` mode: raw 32-bit value modulo ``max_ind_range`` (MLPerf caps at 40M), or the
  raw value when no range is given (TorchRec-style: hashed at load time);
- ids, ``vocab`` mode: values seen at least ``threshold`` times in the training days get
  contiguous ids 1..K (by value); rare and missing values share id 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np


def dense_transform(raw: np.ndarray) -> np.ndarray:
    return np.log1p(np.maximum(raw, 0), dtype=np.float32)


@dataclass
class IdMapper:
    mode: str  # "hash" or "vocab"
    max_ind_range: int = 0
    vocab: Optional[list[np.ndarray]] = field(default=None, repr=False)  # sorted raw values per feature

    @property
    def dtype(self) -> np.dtype:
        if self.mode == "vocab" or 0 < self.max_ind_range <= 2**31:
            return np.dtype(np.int32)
        return np.dtype(np.int64)

    def table_sizes(self) -> list[int]:
        if self.mode == "vocab":
            return [len(v) + 1 for v in self.vocab or []]
        return [self.max_ind_range] * 26 if self.max_ind_range > 0 else []

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        if self.mode == "hash":
            return (raw % self.max_ind_range if self.max_ind_range > 0 else raw).astype(self.dtype)
        out = np.empty(raw.shape, dtype=np.int32)
        for j, values in enumerate(self.vocab or []):
            idx = np.searchsorted(values, raw[:, j])
            idx_c = np.minimum(idx, max(len(values) - 1, 0))
            found = (len(values) > 0) & (values[idx_c] == raw[:, j]) if len(values) else np.zeros(len(raw), bool)
            out[:, j] = np.where(found, idx_c + 1, 0)
        return out


class VocabCounter:
    """Counts raw values per feature over chunks; keeps memory to the distinct values."""

    def __init__(self, num_features: int = 26) -> None:
        self.values: list[list[np.ndarray]] = [[] for _ in range(num_features)]
        self.counts: list[list[np.ndarray]] = [[] for _ in range(num_features)]

    def add(self, raw: np.ndarray) -> None:
        for j in range(raw.shape[1]):
            v, c = np.unique(raw[:, j], return_counts=True)
            self.values[j].append(v)
            self.counts[j].append(c)
            if len(self.values[j]) > 64:
                self._merge(j)

    def _merge(self, j: int) -> None:
        v = np.concatenate(self.values[j])
        c = np.concatenate(self.counts[j])
        order = np.argsort(v, kind="stable")
        v, c = v[order], c[order]
        starts = np.flatnonzero(np.concatenate([[True], v[1:] != v[:-1]]))
        self.values[j], self.counts[j] = [v[starts]], [np.add.reduceat(c, starts)]

    def vocab(self, threshold: int) -> list[np.ndarray]:
        """Per feature: the sorted values seen at least ``threshold`` times (0 = missing excluded)."""
        out = []
        for j in range(len(self.values)):
            if not self.values[j]:
                out.append(np.zeros(0, np.int64))
                continue
            self._merge(j)
            v, c = self.values[j][0], self.counts[j][0]
            out.append(v[(c >= threshold) & (v != 0)])
        return out
