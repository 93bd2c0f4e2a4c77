"""Model pieces on one process: shapes, interactions, init, schedule."""

from __future__ import annotations

import math

import pytest
import torch

from dlrm_dist.config import load_config
from dlrm_dist.data.batches import to_batch
from dlrm_dist.data.synthetic import SyntheticData, SyntheticSpec
from dlrm_dist.features import demo_schema
from dlrm_dist.model import build_model
from dlrm_dist.model.init import ShardFill, fill_shards
from dlrm_dist.model.interaction import CatInteraction, DCNInteraction, DotInteraction
from dlrm_dist.training.build import resolve
from dlrm_dist.training.optimizer_setup import LRSchedule


@pytest.mark.parametrize("interaction, bottom", [("dot", "13-32-8"), ("cat", "13-32-5"), ("dcn", "13-32-8")])
def test_forward_backward_on_cpu(interaction: str, bottom: str) -> None:
    cfg = load_config([
        f"--model.interaction={interaction}", f"--model.bottom_mlp={bottom}", "--model.embedding_dim=8",
        "--model.top_mlp=16-1", "--data.schema=demo:table_sizes=20/30/40", "--model.dcn_low_rank_dim=4",
    ])
    cfg, schema, spec = resolve(cfg)
    model = build_model(spec, seed=0, device=torch.device("cpu"))
    data = SyntheticData(SyntheticSpec(pooling_factor=2), schema)
    batch = next(data.batches("train", 16, 0, 1, 1))
    loss, (_, logits, labels) = model(batch)
    assert logits.shape == (16,) and labels.shape == (16,)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_dot_interaction_widths_and_values() -> None:
    dense, e0, e1 = torch.randn(4, 3), torch.randn(4, 3), torch.randn(4, 3)
    embs = torch.cat([e0, e1], dim=1)  # features side by side
    out = DotInteraction(2, 3, 3)(dense, embs)
    assert out.shape == (4, 3 + 3)
    assert torch.allclose(out[:, 3], (dense * e0).sum(1))  # pair (0, 1) first
    assert torch.allclose(out[:, 5], (e0 * e1).sum(1))
    with_self = DotInteraction(2, 3, 3, self_interaction=True)
    assert with_self(dense, embs).shape == (4, 3 + 6)
    no_dense = DotInteraction(2, 3, 0)(None, embs)  # a schema without dense features
    assert no_dense.shape == (4, 1) and torch.allclose(no_dense[:, 0], (e0 * e1).sum(1))
    mixed = torch.randn(4, 11)  # dims 3 and 8
    assert CatInteraction([3, 8], 3)(dense, mixed).shape == (4, 14)
    assert CatInteraction([3, 8], 0)(None, mixed).shape == (4, 11)
    assert DCNInteraction([3, 8], 3, num_layers=2, low_rank=2)(dense, mixed).shape == (4, 14)


def test_mlp_weights_depend_only_on_seed() -> None:
    _, _, spec = resolve(load_config([]))
    a = build_model(spec, seed=3).model.dense_arch[0].weight
    b = build_model(spec, seed=3).model.dense_arch[0].weight
    c = build_model(spec, seed=4).model.dense_arch[0].weight
    assert torch.equal(a, b) and not torch.equal(a, c)


def _table(seed: int, table_index: int, rows: int, dim: int) -> torch.Tensor:
    full = torch.empty(rows, dim)
    fill_shards([ShardFill(full, table_index, rows, dim)], seed)
    return full


def test_embedding_init_is_shard_independent() -> None:
    full = _table(seed=5, table_index=2, rows=100, dim=10)
    assert full.abs().max() <= math.sqrt(1 / 100)
    shard = torch.empty(30, 4)
    fill_shards([ShardFill(shard, 2, 100, 10, row_offset=40, col_offset=6)], seed=5)
    assert torch.equal(shard, full[40:70, 6:10])
    assert not torch.equal(full, _table(seed=5, table_index=3, rows=100, dim=10))


def test_lr_schedule_warmup_and_decay() -> None:
    s = LRSchedule(warmup_steps=4, decay_start_step=10, decay_steps=10, decay_power=2.0, end_lr_factor=0.1)
    assert [s.factor(i) for i in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert s.factor(9) == 1.0
    assert s.factor(10) == pytest.approx(1.0)
    assert s.factor(15) == pytest.approx(0.1 + 0.9 * 0.25)
    assert s.factor(20) == pytest.approx(0.1) and s.factor(500) == pytest.approx(0.1)
    assert LRSchedule().factor(123) == 1.0


def test_to_batch_is_key_major() -> None:
    data = SyntheticData(SyntheticSpec(pooling_factor=2), demo_schema([5, 6]))
    block, _ = data.samples("train", 0, 3)
    kjt = to_batch(block, data.feature_names).sparse_features
    assert kjt.keys() == ["cat_0", "cat_1"]
    assert kjt["cat_1"].values().tolist() == block.values[1].tolist()


def test_embeddings_reach_the_interaction_in_schema_order_with_one_gather() -> None:
    """A shared table puts g1, g2 side by side in the collection; the schema says g1, u, g2."""
    from dlrm_dist.features.schema import from_dict
    from dlrm_dist.model import resolve_model

    schema = from_dict({"dense": [{"name": "x"}], "sparse": [
        {"name": "g1", "kind": "hash", "buckets": 9, "table": "genre", "dim": 4},
        {"name": "u", "kind": "identity", "buckets": 50, "dim": 8},
        {"name": "g2", "kind": "hash", "buckets": 9, "table": "genre", "dim": 4}]})
    cfg = load_config(["--model.interaction=cat", "--model.bottom_mlp=1-4", "--model.top_mlp=4-1"])
    model = build_model(resolve_model(cfg.model, schema), seed=0, device=torch.device("cpu")).model
    batch = next(SyntheticData(SyntheticSpec(pooling_factor=2), schema).batches("train", 8, 0, 1, 1))
    pooled = model.sparse_arch(batch.sparse_features)
    assert list(pooled.keys()) == ["g1", "g2", "u"]  # the collection's own order
    by_name = pooled.to_dict()
    expected = torch.cat([by_name["g1"], by_name["u"], by_name["g2"]], dim=1)
    assert torch.equal(model.ordered(pooled), expected)
    assert len(model._gathers) == 1  # noqa: SLF001 - the index is built once per key order
    model.ordered(pooled)
    assert len(model._gathers) == 1  # noqa: SLF001


def test_prefetcher_keeps_order_stops_and_reraises() -> None:
    from dlrm_dist.data.prefetch import Prefetcher

    assert list(Prefetcher(iter(range(50)), depth=3)) == list(range(50))

    def broken():
        yield 1
        raise ValueError("bad batch")

    p = Prefetcher(broken())
    assert next(p) == 1
    with pytest.raises(ValueError, match="bad batch"):
        next(p)
    endless = Prefetcher(iter(range(10**9)), depth=2)
    assert next(endless) == 0
    endless.close()
    assert not endless._thread.is_alive()  # noqa: SLF001
