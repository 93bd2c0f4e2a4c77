"""Managed id spaces (kind = "managed"): the schema entry, the raw ids preprocessing writes, and
the model's remapper (TorchRec's MCHManagedCollisionModule) that maps them to rows.

No process group: the sharded run is tests/multiprocess/test_managed_equivalence.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from dlrm_dist.data.columnar import encode, layout, read
from dlrm_dist.data.columnar.kernels import fnv1a
from dlrm_dist.features import SchemaError
from dlrm_dist.features.schema import MANAGED_ID_SPACE, FeatureSchema, from_dict

USER = {"name": "user", "kind": "managed", "buckets": 8}
BASE = {"name": "m", "dense": [{"name": "x"}], "label": "y",
        "sparse": [USER, {"name": "item", "kind": "hash", "buckets": 16}]}


def schema(**user: object) -> FeatureSchema:
    return from_dict({**BASE, "sparse": [{**USER, **user}, BASE["sparse"][1]]})


# -- the declaration --------------------------------------------------------------------------------
def test_managed_reads_round_trips_and_its_table_has_buckets_rows() -> None:
    s = schema(eviction="lru", eviction_interval=5, decay_exponent=2.0)
    f = s.sparse[0]
    assert (f.kind, f.buckets, f.eviction, f.eviction_interval, f.decay_exponent) == ("managed", 8, "lru", 5, 2.0)
    assert f.managed and not s.sparse[1].managed
    assert s.table_rows(f.table) == 8 and s.id_range(f) == MANAGED_ID_SPACE and s.id_range(s.sparse[1]) == 16
    assert from_dict(json.loads(json.dumps(s.to_dict()))) == s
    assert s.stable_dict()["sparse"][0]["eviction"] == "lru"
    # the defaults of the new keys leave a schema's stable form (and fingerprint) as before
    assert "eviction" not in schema().stable_dict()["sparse"][1]
    assert schema().fingerprint() != schema(eviction="lru").fingerprint()


@pytest.mark.parametrize("user, words", [
    ({"buckets": None}, "sparse[0].buckets: kind managed needs buckets"),
    ({"buckets": 1}, "sparse[0].buckets: kind managed needs buckets >= 2"),
    ({"eviction": "fifo"}, "sparse[0].eviction"),
    ({"eviction_interval": 0}, "sparse[0].eviction_interval"),
    ({"decay_exponent": 2.0}, "sparse[0].decay_exponent: applies to eviction = \"lru\" only"),
    ({"eviction": "lru", "decay_exponent": 0.0}, "sparse[0].decay_exponent"),
    ({"kind": "hash", "eviction": "lru"}, "sparse[0].eviction: applies to kind managed only"),
    ({"kind": "hash", "eviction_interval": 3}, "sparse[0].eviction_interval: applies to kind managed only"),
    ({"oov_buckets": 2}, "sparse[0].oov_buckets: applies to kind vocab only"),
])
def test_a_bad_managed_entry_is_named(user: dict, words: str) -> None:
    entry = {k: v for k, v in {**USER, **user}.items() if v is not None}
    with pytest.raises(SchemaError) as e:
        from_dict({**BASE, "sparse": [entry, BASE["sparse"][1]]})
    assert words in str(e.value) and "\n" not in str(e.value)


def test_a_managed_table_is_not_shared_and_criteo_tsv_needs_integer_ids() -> None:
    shared = {**BASE, "sparse": [{**USER, "table": "t"}, {**USER, "name": "user2", "table": "t"}]}
    with pytest.raises(SchemaError, match=r"sparse\[1\].table: table 't' is kind managed: a managed table holds one"):
        from_dict(shared)
    criteo = {"name": "c", "sparse": [{**USER, "column": "c1"}], "input": {"format": "criteo_tsv", "header": False}}
    with pytest.raises(SchemaError, match=r"sparse\[0\].hash: format criteo_tsv reads categorical fields as integers"):
        from_dict(criteo)
    from_dict({**criteo, "sparse": [{**USER, "column": "c1", "hash": "int_modulo"}]})


# -- the raw ids preprocessing writes ------------------------------------------------------------------
def _ids(s: FeatureSchema, batch: pa.RecordBatch) -> np.ndarray:
    f = s.sparse[0]
    return encode.encode_batch(batch, s, {}).ids[f.name][0]


def _csv(tmp_path: Path, users: list[str]) -> pa.RecordBatch:
    path = tmp_path / "d.csv"
    path.write_text("x,y,user,item\n" + "".join(f"{i},{i % 2},{u},i{i}\n" for i, u in enumerate(users)))
    s = schema()
    return next(iter(read.read_file(path, s, read.BadLines())))


def test_text_ids_are_their_fnv1a_64_hash_stored_as_int64(tmp_path: Path) -> None:
    users = ["alice", "bob", "alice", "", "10007"]
    ids = _ids(schema(), _csv(tmp_path, users))
    want = [int(fnv1a(pa.array([u])).astype(np.uint64)[0]) % MANAGED_ID_SPACE for u in users]
    assert ids.dtype == np.int64 and ids.tolist() == want
    assert ids[0] == ids[2] and len(set(ids.tolist())) == 4 and (ids >= 0).all()
    assert max(want) > 2**31  # beyond int32: the layout stores int64 for a managed feature
    assert layout.id_dtype(schema().id_range(schema().sparse[0])) == np.int64


def test_integer_ids_are_the_value_and_the_loader_range_check_passes_them(tmp_path: Path) -> None:
    s = schema(hash="int_modulo")
    values = pa.array([0, 7, 2**62, -1, None], pa.int64())
    batch = pa.record_batch({"x": pa.array([0.0] * 5), "y": pa.array([0.0] * 5), "user": values,
                             "item": pa.array(["a"] * 5)})
    ids = encode.encode_ids(batch, s, s.sparse[0], encode.Bags(values, None), None)
    assert ids.tolist() == [0, 7, 2**62, MANAGED_ID_SPACE - 1, 0]  # -1 wraps below 2**63 - 1 (TorchRec's sentinel)


def test_preprocess_writes_raw_ids_and_the_loader_hands_them_over(tmp_path: Path, capsys) -> None:
    from dlrm_dist.cli.data_main import main as data_main
    from dlrm_dist.data.columnar.dataset import ColumnarDataset

    users = [f"u{i % 23}" for i in range(80)]  # 23 distinct users for an 8-row table: the remapper's job
    (tmp_path / "d.csv").write_text("x,y,user,item\n" + "".join(f"{i},{i % 2},{u},i{i % 5}\n"
                                                                 for i, u in enumerate(users)))
    (tmp_path / "s.json").write_text(json.dumps(BASE))
    code = data_main(["preprocess", "--schema", str(tmp_path / "s.json"), "--input", str(tmp_path / "d.csv"),
                      "--out", str(tmp_path / "out"), "--no-progress"])
    assert code == 0, capsys.readouterr().err
    stored = np.load(tmp_path / "out" / "train" / "user.ids.npy")
    assert stored.dtype == np.int64
    hashes = {int(fnv1a(pa.array([u])).astype(np.uint64)[0]) % MANAGED_ID_SPACE for u in set(users)}
    assert set(stored.tolist()) <= hashes and len(set(stored.tolist())) > 8
    data = ColumnarDataset(tmp_path / "out", eval_split="val", seed=0, shuffle=False)
    block = data.block("train", 0, 10)
    assert block.values[0].tolist() == stored[:10].tolist()
    from dlrm_dist.data.columnar.stats import compute_stats

    user = next(f for f in compute_stats(tmp_path / "out")["features"] if f["feature"] == "user")
    assert user["cardinality"] == len(set(stored.tolist())) and user["table_size"] == 8


# -- the model's remapper ------------------------------------------------------------------------------
def _model(**user: object):
    import torch

    from dlrm_dist.config.sections import ModelConfig
    from dlrm_dist.model.dlrm import build_model
    from dlrm_dist.model.spec import resolve_model

    spec = resolve_model(ModelConfig(embedding_dim=4, top_mlp="8-1", bottom_mlp="1-4"), schema(**user))
    return build_model(spec, 0, torch.device("cpu"))


def _kjt(users: list[int], items: list[int] | None = None):
    import torch
    from torchrec import KeyedJaggedTensor

    items = items if items is not None else [1] * len(users)
    return KeyedJaggedTensor.from_lengths_sync(keys=["item", "user"], values=torch.tensor(items + users),
                                               lengths=torch.ones(len(items) + len(users), dtype=torch.int64))


def _rows(model, users: list[int]) -> list[int]:
    """The rows the remapper gives ``users`` now (eval mode: nothing counted or admitted)."""
    from torchrec import KeyedJaggedTensor
    import torch

    mcc = model.model.managed_arch._managed_collision_collection
    was = mcc.training
    mcc.eval()
    out = mcc(KeyedJaggedTensor.from_lengths_sync(keys=["user"], values=torch.tensor(users),
                                                  lengths=torch.ones(len(users), dtype=torch.int64))).values()
    mcc.train(was)
    return out.tolist()


def _step(model, users: list[int]) -> None:
    import torch

    model.train()
    model.model(torch.zeros(len(users), 1), _kjt(users))


def test_a_new_id_gets_a_row_of_its_own_after_the_interval() -> None:
    model = _model(eviction_interval=2)
    raw = [2**62 + 5, 12345, 2**40, 7]  # 64-bit raw ids, far beyond the table's 8 rows
    assert _rows(model, raw) == [7, 7, 7, 7]  # not admitted yet: the last row (TorchRec's miss row)
    _step(model, raw)
    assert _rows(model, raw) == [7, 7, 7, 7]  # counted, admitted only at the interval's end
    _step(model, raw)
    rows = _rows(model, raw)
    assert len(set(rows)) == 4 and all(0 <= r < 7 for r in rows), rows
    _step(model, raw[::-1])
    assert _rows(model, raw) == rows  # admitted ids keep their rows


@pytest.mark.parametrize("eviction", ["lfu", "lru"])
def test_a_full_table_evicts_the_coldest_id_for_a_new_one(eviction: str) -> None:
    """3 rows: 2 for ids, 1 miss row. a (hot) and b are admitted; later c is seen more than b in one
    interval. LFU evicts b (fewest uses overall), LRU evicts a (seen longest ago)."""
    model = _model(buckets=3, eviction=eviction)
    a, b, c = 1001, 2002, 3003
    _step(model, [a] * 6 + [b] * 3)
    first = dict(zip((a, b), _rows(model, [a, b])))
    assert sorted(first.values()) == [0, 1]
    _step(model, [b])  # b is now the most recent
    _step(model, [c] * 4 + [b])
    got = dict(zip((a, b, c), _rows(model, [a, b, c])))
    if eviction == "lfu":  # counts a 6, b 3 + 1 + 1 = 5, c 4: c is not admitted
        assert got == {a: first[a], b: first[b], c: 2}
    else:  # last seen: a at step 1, b and c at step 3: a goes, c takes its row
        assert got == {a: 2, b: first[b], c: first[a]}


def test_the_forward_looks_up_the_remapped_rows_and_the_state_dict_holds_the_remapper() -> None:
    import torch

    model = _model()
    raw = [2**62 + 5, 12345, 2**40]
    _step(model, raw)
    rows = _rows(model, raw)
    model.eval()
    mcebc = model.model.managed_arch
    pooled, _ = mcebc(_user_kjt(raw))
    weight = mcebc._embedding_module.embedding_bags["t_user"].weight
    assert torch.equal(pooled["user"], weight[torch.tensor(rows)])
    state = model.state_dict()
    key = "model.managed_arch._managed_collision_collection._managed_collision_modules.t_user._mch_sorted_raw_ids"
    assert set(raw) <= set(state[key].tolist())
    fresh = _model()
    fresh.load_state_dict(state)
    assert _rows(fresh, raw) == rows  # a restored model maps the raw ids as the saved one did
    dense = torch.zeros(3, 1)
    assert torch.equal(fresh.eval().model(dense, _kjt(raw)), model.model(dense, _kjt(raw)))


def _user_kjt(users: list[int]):
    import torch
    from torchrec import KeyedJaggedTensor

    return KeyedJaggedTensor.from_lengths_sync(keys=["user"], values=torch.tensor(users),
                                               lengths=torch.ones(len(users), dtype=torch.int64))


# -- checkpoints ---------------------------------------------------------------------------------------
MANAGED_SCHEMA = str(Path(__file__).resolve().parents[1] / "schemas" / "managed.toml")
MANAGED_JOB = [f"--data.schema={MANAGED_SCHEMA}", "--model.bottom_mlp=2-8", "--model.embedding_dim=8",
               "--model.top_mlp=16-1", "--train.global_batch_size=64", "--train.progress=false",
               "--train.eval_interval=0", "--synthetic.eval_batches=1", "--sharding-type=row_wise", "--train.device=cpu"]


def _mid_interval_schema(tmp_path: Path) -> str:
    """managed.toml with the LRU feature's eviction_interval 4 (LFU's is 2): step 3 is inside both intervals."""
    text = Path(MANAGED_SCHEMA).read_text().replace('eviction = "lru"', 'eviction = "lru"\neviction_interval = 4')
    path = tmp_path / "managed_mid.toml"
    path.write_text(text)
    return str(path)


def test_a_run_killed_at_any_step_resumes_bitwise_with_the_remappers_state(tmp_path: Path) -> None:
    """A checkpoint inside both eviction intervals (step 3; intervals 2 and 4) holds each remapper's
    ids, rows, counts / last access and step, and what it counted since its last admission (the
    ids, their last access, its clock): the resumed run's losses are the uninterrupted run's, bit
    for bit. (Without the pending ids a resume diverged from the first resumed step.)"""
    import torch

    from dlrm_dist.checkpoint.io import read_state, verified_metadata
    from dlrm_dist.checkpoint.manifest import Manifest
    from dlrm_dist.checkpoint.unsharded import find_checkpoint
    from tests.checkpoint_helper import train_here

    job = MANAGED_JOB + [f"--data.schema={_mid_interval_schema(tmp_path)}"]
    straight = train_here(["--train.steps=7", f"--run-dir={tmp_path / 'a'}"], job)
    ckpt = tmp_path / "ckpt"
    train_here(["--train.steps=3", f"--train.checkpoint_dir={ckpt}", "--train.checkpoint_interval=3",
                f"--run-dir={tmp_path / 'b'}"], job)
    found = find_checkpoint(ckpt)
    metadata = verified_metadata(found, Manifest.read(found))
    keys = set(metadata.state_dict_metadata)
    for buffer in ("t_user._mch_counts", "t_item._mch_last_access_iter", "t_user._mch_sorted_raw_ids",
                   "t_item._mch_remapped_ids_mapping", "t_user._current_iter_tensor"):
        assert any(k.endswith(f"_managed_collision_modules.{buffer}") for k in keys), buffer
    saved = {k: torch.zeros(tuple(metadata.state_dict_metadata[f"managed.{k}"].size), dtype=torch.int64)
             for k in ("t_user.clock", "t_user.pending_ids", "t_item.clock", "t_item.pending_ids",
                       "t_item.pending_last_access_iter")}
    read_state(found, {"managed": saved}, metadata)
    # (pending, capacity, last admission, iteration): 1 step counted for LFU (admitted at 2), 3 for LRU
    assert saved["t_user.clock"][0, [0, 2, 3]].tolist()[1:] == [2, 3] and saved["t_user.clock"][0, 0] > 0
    assert saved["t_item.clock"][0, [2, 3]].tolist() == [0, 3] and saved["t_item.clock"][0, 0] > 0
    pending = int(saved["t_item.clock"][0, 0])
    assert set(saved["t_item.pending_last_access_iter"][0, :pending].tolist()) == {1, 2, 3}
    resumed = train_here(["--train.steps=7", f"--train.checkpoint_dir={ckpt}", f"--run-dir={tmp_path / 'c'}"], job)
    assert len(straight.losses) == 7 and len(resumed.losses) == 4
    assert resumed.losses == straight.losses[-4:], (resumed.losses, straight.losses)


# -- plans -----------------------------------------------------------------------------------------------
def test_a_plan_moves_managed_tables_to_their_collection_row_wise_only() -> None:
    from dlrm_dist.distributed.parallel import ManagedPlanError, split_plan
    from dlrm_dist.planning.plan import find_ebc, forced_plan

    model = _model()
    path, view = find_ebc(model)  # planning sees every table, under the plain collection's path
    assert path == "model.sparse_arch" and [c.name for c in view.embedding_bag_configs()] == ["t_item", "t_user"]
    plan = split_plan(forced_plan(model, "row_wise", 2, 2, "cpu"), model)
    assert set(plan.plan["model.sparse_arch"]) == {"t_item"} and set(plan.plan["model.managed_arch"]) == {"t_user"}
    assert plan.plan["model.managed_arch"]["t_user"].compute_kernel == "fused"  # evicted rows are rewritten there
    with pytest.raises(ManagedPlanError, match=r"managed table\(s\) t_user \(table_wise\): .*row-wise only"):
        split_plan(forced_plan(model, "table_wise", 2, 2, "cpu"), model)


# -- resharding a managed table (checkpoint/id_reshard.py: pure, no process group) -------------------
def _saved_shards(per_shard: list[list[tuple[int, int]]], rows: int):
    """Concatenated remapper buffers of len(per_shard) row-wise shards of ``rows`` rows each, each
    shard holding [(raw id, score)] in its first rows (its last row free: the miss row)."""
    import torch

    from dlrm_dist.checkpoint.id_reshard import EMPTY, Block

    blocks = [Block(k * rows, rows) for k in range(len(per_shard))]
    ids = torch.full((rows * len(blocks),), EMPTY, dtype=torch.int64)
    score = torch.zeros_like(ids)
    mapping = torch.arange(rows * len(blocks))
    for b, entries in zip(blocks, per_shard):
        for slot, (raw, s) in enumerate(sorted(entries)):
            ids[b.offset + slot], score[b.offset + slot] = raw, s
    return ids, mapping, score, blocks


@pytest.mark.parametrize("keep_by", ["counts", "last_access_iter"])
def test_a_full_new_shard_keeps_ids_in_the_eviction_policys_order(keep_by: str) -> None:
    """1 shard of 8 rows -> 2 shards of 4 (3 ids each). Block 0 of 2 receives 5 ids: it keeps the 3
    with the highest score (LFU count or LRU last access; a tie goes to the lower raw id), each with
    its embedding row; block 1 receives 2 and keeps both. Kept ids take the shard's first rows in
    raw id order; the miss rows take the old miss row."""
    import torch

    from dlrm_dist.checkpoint.id_reshard import Block, admitted, describe, id_block, place

    half = id_block(2)
    low = [(10, 5), (11, 9), (12, 5), (13, 1), (14, 7)]  # (raw id, score): block 0 of 2
    high = [(half + 3, 2), (half + 1, 4)]
    ids, mapping, score, old = _saved_shards([low + high], 8)
    adm, problems = admitted(ids, mapping, {keep_by: score}, old)
    assert problems == [] and sorted(adm.ids.tolist()) == sorted(i for i, _ in low + high)
    new = [Block(0, 4), Block(4, 4)]
    p0, p1 = place(adm, old, new, keep_by)
    assert p0.ids.tolist() == [10, 11, 14] and p0.dropped_ids.tolist() == [12, 13]  # 9, 7, then 5 (10 < 12)
    assert p1.ids.tolist() == [half + 1, half + 3] and p1.dropped_ids.numel() == 0
    weights = torch.arange(8.0).view(8, 1) * 10  # old row r holds 10 r
    slot = {raw: s for s, raw in enumerate(sorted(i for i, _ in low + high))}  # old rows, in sorted order
    assert p0.rows_of(weights).flatten().tolist() == [10 * slot[10], 10 * slot[11], 10 * slot[14], 70.0]
    assert p1.rows_of(weights).flatten().tolist() == [10 * slot[half + 1], 10 * slot[half + 3], 0.0, 70.0]
    sorted_ids, rows, meta = p0.slots()
    assert rows.tolist() == [0, 1, 2, 3] and meta[keep_by].tolist() == [5, 9, 7, 0]
    assert sorted_ids[:3].tolist() == [10, 11, 14]
    lines = describe("t_user", [p0, p1], 1, keep_by)
    assert "from 1 to 2 shard(s): 5 of 7 admitted ids kept" in lines[0] and len(lines) == 2
    assert "shard 0 (rows 0-3): 5 ids for 3 rows" in lines[1] and "dropped 2" in lines[1]


def test_two_shards_merge_into_one_keeping_every_id_and_a_miss_row() -> None:
    import torch

    from dlrm_dist.checkpoint.id_reshard import Block, admitted, id_block, place

    half = id_block(2)
    ids, mapping, score, old = _saved_shards([[(5, 1), (3, 2)], [(half + 9, 3)]], 4)
    adm, problems = admitted(ids, mapping, {"counts": score}, old)
    assert problems == []
    (merged,) = place(adm, old, [Block(0, 8)], "counts")
    assert merged.ids.tolist() == [3, 5, half + 9] and merged.dropped_ids.numel() == 0
    weights = torch.arange(8.0).view(8, 1)
    assert merged.rows_of(weights).flatten().tolist() == [0.0, 1.0, 4.0, 0.0, 0.0, 0.0, 0.0, 3.0]


@pytest.mark.parametrize("damage, words", [
    ("twice", "an id is admitted twice"),
    ("row", "maps an id to row 3, outside its rows"),
    ("owner", "is held by a shard that does not own its block"),
    ("full", "has no free slot for its miss row"),
])
def test_damaged_remapper_buffers_are_named(damage: str, words: str) -> None:
    from dlrm_dist.checkpoint.id_reshard import admitted, id_block

    ids, mapping, score, old = _saved_shards([[(5, 1), (7, 1)], [(id_block(2) + 1, 1)]], 4)
    if damage == "twice":
        ids[1] = 5  # shard 0 holds 5 in two slots
    elif damage == "row":
        mapping[0] = 3  # shard 0's miss row
    elif damage == "owner":
        ids[4] = 6  # block 0's id in shard 1
    else:
        ids[2:4] = 9
    _, problems = admitted(ids, mapping, {"counts": score}, old)
    assert any(words in p for p in problems), problems


def test_pending_ids_go_to_their_new_ranks_and_a_bad_clock_is_named() -> None:
    import torch

    from dlrm_dist.checkpoint.id_reshard import id_block
    from dlrm_dist.checkpoint.managed import _routed
    from dlrm_dist.checkpoint.remappers import Clock, Pending, clock_problems

    half = id_block(2)
    saved = [Pending(Clock(3, 10, 6, 7), torch.tensor([4, half + 2, 9]), {"last_access_iter": torch.tensor([7, 7, 6])})]
    low, high = (_routed(saved, saved[0].clock, 2, r) for r in (0, 1))
    assert low.ids.tolist() == [4, 9] and low.history["last_access_iter"].tolist() == [7, 6]
    assert high.ids.tolist() == [half + 2] and (low.clock.capacity, high.clock.capacity) == (5, 5)
    assert (high.clock.last_admission, high.clock.iteration, high.clock.pending) == (6, 7, 1)
    assert clock_problems(Clock(3, 10, 6, 7), 3, interval=3, iteration=7) == []
    assert "pending 4 ids with a history capacity of 3" in clock_problems(Clock(4, 3, 6, 7), 4, 3, 7)[0]
    assert "the eviction_interval is 3" in clock_problems(Clock(0, 3, 2, 7), 1, 3, 7)[0]
    assert "_current_iter_tensor says 8" in clock_problems(Clock(0, 3, 6, 7), 1, 3, 8)[0]
