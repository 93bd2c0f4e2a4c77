"""Synthetic data of any feature schema, with a hidden "teacher" so that there is signal to learn.

Sample ``i`` of a split is a pure function of ``(seed, split, i)``: every random stream is
a counter-based Philox generator advanced straight to the sample. A rank generates only
its own slice of each global batch, and the global batches are the same whatever the world
size — which is what lets an N-rank run be compared with a single-process reference.

- ids: for each sparse feature of the schema, a bounded power law (Zipf-like) over the rows
  of the table it looks up (shared tables included), scrambled by a fixed bijection so that
  popular ids are spread over the table (as Criteo's hashing does);
- managed features (kind managed) draw the same way over MANAGED_DRAW x their table's rows,
  so that there are more distinct ids than rows (the remapper's job), and carry the draw as a
  raw 64-bit id (splitmix64 of it, modulo 2**63 - 1: spread over every row-wise shard's range);
- bags: a fixed number of ids per sample, or a length uniform in [1, 2p-1] (mean p);
- dense: one non-negative, log-transformed value per dense feature of the schema (any number,
  zero included), as Criteo's after preprocessing;
- labels: Bernoulli(sigmoid(teacher logit)); the teacher mixes a linear term on the dense
  features, a hashed weight per id of every table and pairwise products of some tables'
  weights (which a dot interaction can represent). The teacher's own AUC on the eval split
  is the best any model can reach on it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterator, Optional

import numpy as np
import torch
from torchmetrics.functional.classification import binary_auroc
from torchrec.datasets.utils import Batch

from dlrm_dist.data.batches import SampleBlock, to_batch
from dlrm_dist.data.hashing import U64, splitmix64, unit_uniform
from dlrm_dist.features.schema import MANAGED_ID_SPACE, FeatureSchema

SPLITS = {"train": 0, "eval": 1}
_BIAS = -1.0  # teacher logit offset: a click rate around a quarter
_SCRAMBLE_PRIME = 1_000_003
MANAGED_DRAW = 4  # a managed feature draws over this many times its table's rows


def _hash_uniform(seed: int, table: int, ids: np.ndarray) -> np.ndarray:
    """A fixed weight in [-sqrt3, sqrt3] (unit variance) for each id of ``table``."""
    salt = splitmix64(np.array([(seed << 20) ^ (table + 1)], dtype=U64))[0]
    with np.errstate(over="ignore"):
        z = splitmix64(ids.astype(U64) ^ salt)
    return (2.0 * unit_uniform(z) - 1.0) * math.sqrt(3.0)


def _power_law(u: np.ndarray, rows: int, alpha: float) -> np.ndarray:
    """Inverse CDF of a power law over ``[0, rows)``: id k has weight ~ (k + 1) ** -alpha."""
    if alpha == 0:
        x = u * rows + 1.0
    elif abs(alpha - 1.0) < 1e-9:
        x = np.exp(u * math.log(rows + 1.0))
    else:
        a = 1.0 - alpha
        x = (1.0 + u * ((rows + 1.0) ** a - 1.0)) ** (1.0 / a)
    return np.minimum(x.astype(np.int64) - 1, rows - 1)


@dataclass(frozen=True)
class SyntheticSpec:
    """How the generator draws; see config.sections.SyntheticConfig for the meaning of each field."""

    seed: int = 1234
    zipf_alpha: float = 1.1
    pooling_factor: int = 1
    variable_pooling: bool = False
    teacher_scale: float = 1.5


class SyntheticData:
    """Deterministic, sliceable synthetic data of ``schema``'s shape with a known best AUC."""

    def __init__(self, spec: SyntheticSpec, schema: FeatureSchema, eval_batches: int = 16) -> None:
        self.spec = spec
        self.schema = schema
        self.feature_names = schema.sparse_names
        # Rows each feature draws ids from: its table's (a shared table's, for several features).
        self.feature_rows = [schema.table_rows(f.table) * (MANAGED_DRAW if f.managed else 1) for f in schema.sparse]
        self._managed = [f.managed for f in schema.sparse]
        self.eval_batches = eval_batches
        self.max_bag = 2 * spec.pooling_factor - 1 if spec.variable_pooling else spec.pooling_factor
        num_dense = schema.num_dense
        # Dense feature j is log1p of an exponential with mean 10**(j/4): a spread of scales.
        self._dense_means = 10.0 ** (np.arange(num_dense) / 4.0)
        rng = np.random.default_rng(spec.seed)
        self._dense_w = rng.uniform(-1.0, 1.0, num_dense)
        self._dense_center = np.log1p(self._dense_means)
        n_pairs = min(len(self.feature_names) // 2, 4)
        self._pairs = [(2 * k, 2 * k + 1) for k in range(n_pairs)]

    # -- random streams ---------------------------------------------------------------
    def _uniforms(self, split: str, stream: int, start: int, count: int, width: int) -> np.ndarray:
        width4 = (width + 3) // 4 * 4  # whole Philox blocks per sample: exact jumps
        key = (self.spec.seed << 40) | (SPLITS[split] << 32) | stream
        bit_gen = np.random.Philox(key=key)
        bit_gen.advance(start * width4 // 4)
        return np.random.Generator(bit_gen).random((count, width4))[:, :width]

    def _bags(self, split: str, table: int, start: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        """(ids as an n x max_bag matrix, lengths)."""
        rows = self.feature_rows[table]
        u = self._uniforms(split, 2 + table, start, count, 1 + self.max_bag)
        if self.spec.variable_pooling:
            lengths = 1 + (u[:, 0] * self.max_bag).astype(np.int64)
        else:
            lengths = np.full(count, self.max_bag, dtype=np.int64)
        ids = _power_law(u[:, 1:], rows, self.spec.zipf_alpha)
        prime = _SCRAMBLE_PRIME if math.gcd(_SCRAMBLE_PRIME, rows) == 1 else 1
        ids = (ids * prime + 7919 * (table + 1)) % rows
        if self._managed[table]:  # a raw id (the teacher's weights follow it as they follow any id)
            ids = (splitmix64(ids.astype(U64) + U64(table)) % U64(MANAGED_ID_SPACE)).astype(np.int64)
        return ids, lengths

    # -- samples ------------------------------------------------------------------------
    def samples(self, split: str, start: int, count: int) -> tuple[SampleBlock, np.ndarray]:
        """Samples ``[start, start + count)`` of ``split`` and the teacher's probabilities."""
        num_dense = len(self._dense_w)
        u = self._uniforms(split, 0, start, count, num_dense)
        dense = np.log1p(-self._dense_means * np.log1p(-u))
        logit = (dense - self._dense_center) @ self._dense_w / math.sqrt(max(num_dense, 1))
        values, lengths, table_w = [], [], []
        for t in range(len(self.feature_names)):
            ids, lens = self._bags(split, t, start, count)
            mask = np.arange(self.max_bag)[None, :] < lens[:, None]
            w = np.where(mask, _hash_uniform(self.spec.seed, t, ids), 0.0).sum(1) / lens
            values.append(ids[mask])
            lengths.append(lens)
            table_w.append(w)
        logit += np.sum(table_w, axis=0) / math.sqrt(len(table_w))
        for a, b in self._pairs:
            logit += table_w[a] * table_w[b] / math.sqrt(len(self._pairs))
        prob = 1.0 / (1.0 + np.exp(-(self.spec.teacher_scale * logit + _BIAS)))
        labels = (self._uniforms(split, 1, start, count, 1)[:, 0] < prob).astype(np.float32)
        block = SampleBlock(dense.astype(np.float32), values, lengths, labels)
        return block, prob

    def batches(
        self,
        split: str,
        global_batch_size: int,
        rank: int,
        world_size: int,
        num_batches: Optional[int] = None,
        start_batch: int = 0,
    ) -> Iterator[Batch]:
        """This rank's slice of global batches ``start_batch, start_batch + 1, ...``."""
        local = global_batch_size // world_size
        b = start_batch
        while num_batches is None or b < start_batch + num_batches:
            block, _ = self.samples(split, b * global_batch_size + rank * local, local)
            yield to_batch(block, self.feature_names)
            b += 1

    def eval_batch_count(self, global_batch_size: int) -> int:
        return self.eval_batches

    def bag_lengths(self) -> dict[str, float]:
        """Mean ids per sample of each feature."""
        mean = (1 + self.max_bag) / 2 if self.spec.variable_pooling else self.max_bag
        return {f: float(mean) for f in self.feature_names}

    def teacher_auc(self, global_batch_size: int) -> float:
        """AUC of the teacher's own probabilities on the eval split: the best reachable there."""
        return _teacher_auc(self, "eval", self.eval_batches * global_batch_size)


@lru_cache(maxsize=8)
def _teacher_auc(data: SyntheticData, split: str, num_samples: int) -> float:
    block, prob = data.samples(split, 0, num_samples)
    return float(binary_auroc(torch.from_numpy(prob), torch.from_numpy(block.labels).long()))
