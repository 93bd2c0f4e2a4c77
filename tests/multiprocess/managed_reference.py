"""Managed id spaces on 2 and 4 ranks equal one process, step by step: the case and its reference.

test_equivalence.py trains the case in its 2- and 4-rank runs (one process start for every case)
and checks it here. The model (tests/schemas/managed.toml: an LFU and an LRU managed feature beside a hashed one)
is trained by the real trainer on N gloo ranks, row-wise (the only sharding TorchRec has for
managed tables). TorchRec routes each raw id to the rank whose block of the id space holds it
(id // ceil((2**63 - 1) / N)), and that rank's remapper admits it into its shard's rows. The
reference, in this process with no process group, does the same in plain PyTorch: one
TorchRec remapper per shard (the unsharded module rebuilt for the shard's rows), the same
routing, evicted rows zeroed (the managed tables' init_fn) before the lookup, and
tests/reference_dlrm.py's DLRM on the rows it gives. Every loss within 1e-5 over 6 steps,
every weight within 1e-5 at the end, and each remapper's state (which raw ids hold which
rows) equal.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torchrec.sparse.jagged_tensor import JaggedTensor

from dlrm_dist.config import load_config
from dlrm_dist.config.arch import parse_mlp
from dlrm_dist.data.resolve import build_data
from dlrm_dist.features.schema import MANAGED_ID_SPACE
from dlrm_dist.model.tables import remapper
from dlrm_dist.training.build import resolve
from tests.multiprocess.equivalence_worker import BASE_ARGS
from tests.reference_dlrm import ReferenceDLRM, ReferenceOptimizer, bags_from_block

TOL = 1e-5
SCHEMA = str(Path(__file__).resolve().parents[1] / "schemas" / "managed.toml")
ARGS = BASE_ARGS + [f"--data.schema={SCHEMA}", "--model.bottom_mlp=2-16", "--sharding.sharding_type=row_wise",
                    "--optim.embedding_optimizer=sgd", "--optim.dense_optimizer=sgd", "--optim.embedding_lr=0.5",
                    "--optim.dense_lr=0.05"]
MANAGED = "model.managed_arch._embedding_module.embedding_bags."
REMAPPERS = "model.managed_arch._managed_collision_collection._managed_collision_modules."


class ShardedRemapper:
    """One table's remappers as TorchRec's row-wise sharding runs them, in one process."""

    def __init__(self, table, world: int) -> None:
        block = math.ceil(table.rows / world)
        offsets = [min(r * block, table.rows) for r in range(world)] + [table.rows]
        base = remapper(table, torch.device("cpu"))
        self.shards = [base.rebuild_with_output_id_range((offsets[r], offsets[r + 1]), offsets) for r in range(world)]
        self.id_block = math.ceil(MANAGED_ID_SPACE / world)
        self.name = table.name

    def __call__(self, raw: np.ndarray) -> tuple[np.ndarray, list[int]]:
        """(rows of ``raw``, rows evicted now), counting the ids as a training step does."""
        ids = torch.from_numpy(raw.astype(np.int64))
        rank = ids // self.id_block
        rows, evicted = torch.empty_like(ids), []
        for r, mc in enumerate(self.shards):
            mine = rank == r
            jt = JaggedTensor(values=ids[mine], lengths=torch.ones(int(mine.sum()), dtype=torch.int64))
            rows[mine] = mc({self.name: jt})[self.name].values()
            gone = mc.evict()
            evicted += gone.tolist() if gone is not None else []
        return rows.numpy(), evicted

    def state(self, buffer: str) -> torch.Tensor:
        return torch.cat([getattr(mc, buffer) for mc in self.shards])


def _reference(saved: dict, world: int) -> tuple[list[float], dict[str, torch.Tensor], dict[str, ShardedRemapper]]:
    cfg, schema, spec = resolve(load_config(saved["args"]))
    names = schema.table_names
    tables = [(schema.table_rows(t), schema.features_of(t)[0].dim or cfg.model.embedding_dim,
               schema.features_of(t)[0].pooling) for t in names]
    model = ReferenceDLRM(tables, [names.index(f.table) for f in schema.sparse],
                          parse_mlp(cfg.model.bottom_mlp, "b"), parse_mlp(cfg.model.top_mlp, "t"), spec.interaction)
    initial = {k.replace(MANAGED, "model.sparse_arch.embedding_bags."): v for k, v in saved["initial"].items()}
    model.load_from(initial, names)
    o = cfg.optim
    opt = ReferenceOptimizer(o.embedding_optimizer, o.dense_optimizer, model, o.embedding_lr, o.dense_lr, o.eps)
    remappers = {t.name: ShardedRemapper(t, world) for t in spec.tables if t.remapper is not None}
    data, gbs = build_data(cfg, schema), cfg.train.global_batch_size
    losses = []
    for step in range(cfg.train.steps):
        block = data.samples("train", step * gbs, gbs)[0]
        for i, f in enumerate(schema.sparse):
            if f.table in remappers:
                block.values[i], evicted = remappers[f.table](block.values[i])
                with torch.no_grad():  # the sharded collection rewrites evicted rows before the lookup
                    model.tables[names.index(f.table)].weight[evicted] = 0.0
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(model(torch.from_numpy(block.dense), bags_from_block(block)),
                                                  torch.from_numpy(block.labels))
        loss.backward()
        opt.step(1.0)
        losses.append(loss.item())
    weights = {(MANAGED if n in remappers else "model.sparse_arch.embedding_bags.") + f"{n}.weight": t.weight
               for n, t in zip(names, model.tables)}
    return losses, weights, remappers


def check_managed(saved: dict, world: int) -> None:
    """The ``world``-rank run ``saved`` (equivalence_worker's record) against the one-process reference."""
    losses, weights, remappers = _reference(saved, world)
    assert len(saved["losses"]) == len(losses) == 6
    for step, (a, b) in enumerate(zip(saved["losses"], losses)):
        assert abs(a - b) <= TOL, f"step {step}: loss {a} vs reference {b}"
    for key, ref in weights.items():
        diff = (saved["final"][key] - ref.detach()).abs().max().item()
        assert diff <= TOL, f"{key}: max |diff| {diff:.3g}"
        assert (saved["final"][key] - saved["initial"][key]).abs().max().item() > 1e-4, f"{key} never moved"
    for name, ref in remappers.items():
        for buffer in ("_mch_sorted_raw_ids", "_mch_remapped_ids_mapping"):
            assert torch.equal(saved["final"][REMAPPERS + f"{name}.{buffer}"], ref.state(buffer)), (name, buffer)
        admitted = ref.state("_mch_sorted_raw_ids") != torch.iinfo(torch.int64).max
        ranks = ref.state("_mch_sorted_raw_ids")[admitted] // ref.id_block
        with_room = {r for r, mc in enumerate(ref.shards) if mc.output_size() > 1}  # (a 1-row shard: its miss row)
        assert set(ranks.tolist()) == with_room, f"{name}: every shard with rows to give admitted ids"
