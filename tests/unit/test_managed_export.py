"""Managed features exported, scored and served: raw 64-bit ids mapped as the trained model's remapper maps them.

- The frozen remapper (serving/remap.py) gives every id the row TorchRec's per-shard remappers give
  it in eval mode (1, 2 and 3 row-wise shards, blocks of the id space routed as TorchRec routes
  them): admitted ids, ids counted but not admitted, ids never seen, ids at block boundaries.
- A state TorchRec could not have written, or checkpoint chunks that are not one row-wise shard a
  rank, are refused by name at export; an id held by a shard that never receives it is left out
  (it maps to its own block's miss row, as in training).
- A model trained on a CSV (an int_modulo managed feature past 2**31, an fnv1a one, a hashed one)
  exported float scores as the trained model evaluates: ``dlrm-predict --data --split``,
  ``--input rows.csv`` (ids never seen included), ``Predictor.score`` and ``dlrm-serve``'s /predict.
  (Where torchrec and fbgemm_gpu cannot be imported: tests/multiprocess/test_serving.py loads a managed
  export and scores raw ids there.)
- A 1-rank checkpoint (the trainer under DMP, in this process) exported float and int8 scores its
  eval split and rows of ids never seen in training as the DMP model does in eval mode.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest
import torch

from dlrm_dist.serving.manifest import ExportError
from dlrm_dist.serving.remap import ARRAYS, EMPTY, ID_SPACE, block_starts, check_frozen, freeze, remap

INT8_TOL = 2e-3  # int8 against float probabilities (tests/unit/test_export_trust.py's bound)
ROWS = 240


# -- the frozen remapper against TorchRec's, shard by shard ----------------------------------------------
def _table(eviction: str = "lfu", rows: int = 12):
    from dlrm_dist.features.schema import Remapper, TableDef

    return TableDef("t_user", rows, 8, ("user",), "sum", Remapper(eviction, 2, 1.0))


def _shards(world: int, eviction: str = "lfu", rows: int = 12):
    """TorchRec remappers of one managed table sharded row-wise over ``world`` ranks (as its sharder builds them)."""
    from dlrm_dist.model.tables import remapper

    block = -(-rows // world)
    offsets = [min(r * block, rows) for r in range(world)] + [rows]
    base = remapper(_table(eviction, rows), torch.device("cpu"))
    return [base.rebuild_with_output_id_range((offsets[r], offsets[r + 1]), offsets) for r in range(world)], offsets


def _read_unsharded(mcs, eviction: str):
    """The shards' state loaded into one unsharded remapper, as read_unsharded loads a checkpoint (its
    load hook re-sorts the concatenated buffers as one: slots move across the shards' ranges)."""
    from dlrm_dist.model.tables import remapper

    module = remapper(_table(eviction), torch.device("cpu"))
    state = {k: _concatenated(mcs, k) if v.shape == (12,) else getattr(mcs[0], k)
             for k, v in module.state_dict().items()}
    module.load_state_dict(state)
    return module


def _route(mcs, ids: torch.Tensor, training: bool) -> torch.Tensor:
    """Each id through the remapper of the rank TorchRec routes it to (block bucketization, integer blocks)."""
    from torchrec.sparse.jagged_tensor import JaggedTensor

    block = (ID_SPACE + len(mcs) - 1) // len(mcs)  # rw_sharding: (hash_size + buckets - 1) // buckets
    rank, out = ids // block, torch.empty_like(ids)
    for r, mc in enumerate(mcs):
        mc.train(training)
        mine = rank == r
        jt = JaggedTensor(values=ids[mine], lengths=torch.ones(int(mine.sum()), dtype=torch.int64))
        out[mine] = mc({"t_user": jt})["t_user"].values()
    return out


def _concatenated(mcs, buffer: str) -> torch.Tensor:
    return torch.cat([getattr(mc, buffer) for mc in mcs])  # as a checkpoint reassembles the shards


@pytest.mark.parametrize("world, eviction", [(1, "lfu"), (2, "lru"), (3, "lfu")])
def test_the_frozen_remapper_maps_every_id_as_torchrecs_shards_do_in_eval_mode(world: int, eviction: str) -> None:
    mcs, offsets = _shards(world, eviction)
    rng = np.random.default_rng(world)
    pool = rng.integers(0, ID_SPACE, 40)  # more ids than rows: evictions, and ids counted but never admitted
    for _ in range(10):
        _route(mcs, torch.from_numpy(rng.choice(pool, 24)), training=True)
    frozen = freeze("t_user", _concatenated(mcs, "_mch_sorted_raw_ids"),
                    _concatenated(mcs, "_mch_remapped_ids_mapping"), offsets)
    read = _read_unsharded(mcs, eviction)
    assert world == 1 or not torch.equal(read._mch_sorted_raw_ids, _concatenated(mcs, "_mch_sorted_raw_ids"))
    assert all(torch.equal(getattr(frozen, a), getattr(freeze("t_user", read._mch_sorted_raw_ids,
                                                                read._mch_remapped_ids_mapping, offsets), a))
               for a in ARRAYS)  # the same frozen state from a checkpoint read unsharded
    edges = [v for s in block_starts(world) for v in (s - 1, s, s + 1) if 0 <= v < ID_SPACE] + [ID_SPACE - 1]
    probe = torch.from_numpy(np.concatenate([pool, rng.integers(0, ID_SPACE, 60), np.asarray(edges, np.int64)]))
    want = _route(mcs, probe, training=False)
    assert torch.equal(remap(probe, frozen.ids, frozen.rows, frozen.starts, frozen.miss), want)
    admitted = _concatenated(mcs, "_mch_sorted_raw_ids") != EMPTY
    assert 0 < frozen.admitted == int(admitted.sum()) < len(pool)  # some ids were counted, never admitted
    assert set(want[-60 - len(edges):-len(edges)].tolist()) <= {o - 1 for o in offsets[1:]}  # never seen: miss rows
    assert check_frozen("t_user", {a: getattr(frozen, a) for a in ARRAYS}, offsets, frozen.admitted) == []


def test_a_remapper_state_torchrec_could_not_write_is_refused_and_an_unreachable_id_left_out() -> None:
    mcs, offsets = _shards(2)
    ids, rows = _concatenated(mcs, "_mch_sorted_raw_ids").clone(), _concatenated(mcs, "_mch_remapped_ids_mapping")
    with pytest.raises(ExportError, match=r"table 't_user': _mch_remapped_ids_mapping does not hold each of the rows "
                                          r"0-11 once; nothing was written"):
        freeze("t_user", ids, torch.cat([rows[:6], rows[:6]]), offsets)
    ids[:2] = 5
    with pytest.raises(ExportError, match="a shard's _mch_sorted_raw_ids admits an id twice"):
        freeze("t_user", ids, rows, offsets)
    ids[:2] = torch.tensor([5, ID_SPACE - 1])  # shard 0's rows hold an id of shard 1's block: never routed to it
    frozen = freeze("t_user", ids, rows, offsets)
    assert frozen.admitted == 1
    assert remap(torch.tensor([5, ID_SPACE - 1]), frozen.ids, frozen.rows, frozen.starts, frozen.miss).tolist() == \
        [int(rows[0]), 11]


# -- a model trained on raw rows: export, predict, serve ----------------------------------------------
SCHEMA = {"name": "mc", "label": {"column": "clicked"}, "input": {"format": "csv"},
          "split": {"by": "random", "fractions": [0.6, 0.2, 0.2], "seed": 3},
          "dense": [{"name": "price"}],
          "sparse": [{"name": "uid", "kind": "managed", "hash": "int_modulo", "buckets": 16, "eviction": "lfu",
                      "eviction_interval": 2},
                     {"name": "item", "kind": "managed", "buckets": 8, "eviction": "lru"},
                     {"name": "city", "kind": "hash", "buckets": 7}]}
UIDS = np.random.default_rng(5).integers(2**33, 2**59, 30)  # raw ids far past int32 (15 hex digits at most)
MODEL = ["--model.embedding_dim=8", "--model.top_mlp=16-1", "--model.bottom_mlp=1-8", "--train.global_batch_size=32",
         "--train.progress=false"]


def _rows(n: int, seed: int, uids: np.ndarray = UIDS) -> pa.Table:
    rng = np.random.default_rng(seed)
    return pa.table({"price": rng.random(n).round(3), "uid": [format(int(u), "x") for u in rng.choice(uids, n)],
                     "item": [f"item-{i}" for i in rng.integers(0, 20, n)],
                     "city": [f"c{i}" for i in rng.integers(0, 9, n)],
                     "clicked": (rng.random(n) < 0.4).astype(np.int64)})


def _encoded(p, table: pa.Table) -> tuple:
    """The program's inputs for ``table``'s rows as records, encoded by the Predictor's pipeline."""
    from dlrm_dist.serving.records import RECORDS, records_batch

    raw, problems = records_batch(table.drop(["clicked"]).to_pylist(), p.row_schema, integers=p.integers)
    assert not problems
    return p.prepare(raw, RECORDS, "record", lambda i: i)[1]


def _evaluated(dlrm, inputs: tuple) -> np.ndarray:
    """The trained (unsharded) model's own eval-mode scores: TorchRec's remapper, then the lookup."""
    from torchrec import KeyedJaggedTensor

    dense, ids, offsets = inputs
    kjt = KeyedJaggedTensor(keys=list(dlrm.feature_names), values=torch.cat(ids),
                            lengths=torch.cat([o[1:] - o[:-1] for o in offsets]))
    with torch.no_grad():
        return torch.sigmoid(dlrm.eval()(dense, kjt)).double().numpy()


@pytest.fixture(scope="module")
def csv_trained(tmp_path_factory) -> dict:
    """A model of the CSV, its remappers trained on the training split (train mode: ids counted and
    admitted, some evicted), exported float with --data (int8 of a managed checkpoint: the 1-rank test)."""
    from dlrm_dist.data.columnar.preprocess import Options, preprocess
    from dlrm_dist.data.resolve import build_data
    from dlrm_dist.features.schema import from_dict
    from dlrm_dist.serving.export import export_model
    from tests.serving_helper import build_dlrm

    tmp = tmp_path_factory.mktemp("managed_export")
    pacsv.write_csv(_rows(ROWS, 0), tmp / "rows.csv")
    data = tmp / "data"
    preprocess(Options(from_dict(SCHEMA), [tmp / "rows.csv"], data, progress=False))
    cfg, dlrm = build_dlrm(["--data.source=columnar", f"--data.data_dir={data}", *MODEL])
    dataset = build_data(cfg, from_dict(cfg.features))
    dlrm.train()
    with torch.no_grad():
        for batch in dataset.batches("train", 32, 0, 1, 8):
            dlrm(batch.dense_features, batch.sparse_features)
    export_model(dlrm, cfg, tmp / "none", data_dir=str(data), progress=False)
    return {"tmp": tmp, "data": data, "dlrm": dlrm.eval(), "none": tmp / "none"}


def test_dlrm_predict_scores_the_eval_split_as_the_trained_model_evaluates_it(csv_trained, capsys) -> None:
    from dlrm_dist.cli import predict_main
    from dlrm_dist.serving.load import load_export
    from dlrm_dist.serving.predict import model_inputs, open_split
    from dlrm_dist.serving.pipeline import export_config

    manifest = json.loads((csv_trained["none"] / "export.json").read_text())
    assert manifest["remappers"]["t_uid"]["shard_offsets"] == [0, 16] and manifest["remappers"]["t_uid"]["admitted"] > 0
    loaded = load_export(csv_trained["none"])
    data = open_split(export_config(loaded.manifest), str(csv_trained["data"]), "val")
    want = np.concatenate([_evaluated(csv_trained["dlrm"], model_inputs(b, loaded.feature_names))[b.labels.numpy() >= 0]
                           for b in data.batches("eval", 32, 0, 1, data.eval_batch_count(32))])
    out = csv_trained["tmp"] / "val.npy"
    assert predict_main.main([str(csv_trained["none"]), "--data", str(csv_trained["data"]), "--split", "val",
                              "--out", str(out), "--no-progress"]) == 0, capsys.readouterr().err
    got = np.load(out)
    assert got.shape == want.shape and np.abs(got - want).max() < 1e-6, np.abs(got - want).max()


def test_raw_rows_with_ids_never_seen_score_as_the_trained_model_evaluates_them(csv_trained, capsys) -> None:
    """Rows whose uids are half the training's, half never seen (and items never seen), through
    Predictor.score, dlrm-predict --input rows.csv and dlrm-serve's /predict (its /metadata names the
    frozen remappers)."""
    from dlrm_dist.cli import predict_main
    from dlrm_dist.serving.predictor import Predictor
    from dlrm_dist.serving.server import Limits, build_app

    fresh = np.random.default_rng(9).integers(2**59, 2**60, 20)  # ids no training row had
    table = pa.concat_tables([_rows(20, 1), _rows(20, 2, fresh)])
    table = table.set_column(2, "item", pa.array([f"new-{i}" if i % 3 == 0 else v
                                                  for i, v in enumerate(table.column("item").to_pylist())]))
    csv_path = csv_trained["tmp"] / "new_rows.csv"
    pacsv.write_csv(table, csv_path)
    p = Predictor.load(csv_trained["none"])
    inputs = _encoded(p, table)
    uid = p.pipeline.feature_names.index("uid")
    assert inputs[1][uid].dtype == torch.int64 and set(inputs[1][uid][20:].tolist()) <= set(fresh.tolist())
    want = _evaluated(csv_trained["dlrm"], inputs)
    assert np.abs(p.score(table.drop(["clicked"]).to_pylist()) - want).max() < 1e-6
    out = csv_trained["tmp"] / "rows.npy"
    assert predict_main.main([str(csv_trained["none"]), "--input", str(csv_path), "--out", str(out),
                              "--no-progress"]) == 0, capsys.readouterr().err
    assert np.abs(np.load(out) - want).max() < 1e-6
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient` is deprecated")
        from fastapi.testclient import TestClient
    with TestClient(build_app(p, Limits(max_batch_rows=64, max_wait_ms=1.0, max_request_rows=64))) as client:
        reply = client.post("/predict", json={"records": table.drop(["clicked"]).to_pylist()})
        meta = client.get("/metadata").json()
    assert meta["remappers"]["t_uid"] == {"feature": "uid", "eviction": "lfu", "shard_offsets": [0, 16],
                                          "admitted": p.export.manifest.remappers["t_uid"].admitted}
    assert reply.status_code == 200, reply.text
    assert np.abs(np.asarray(reply.json()["scores"]) - want).max() < 1e-6


def test_a_tampered_remapper_is_refused_by_table_and_array(csv_trained, tmp_path) -> None:
    """A remapper array of the program rewritten into a state no TorchRec remapper holds (model_sha256
    recomputed, as whoever can write the directory could): load_export refuses it, exit 4, naming the
    table. (An id moved to a free row of its shard is another model, not a damaged one: only the
    sha256 can tell, as for a weight edited.)"""
    import shutil

    from dlrm_dist.serving.load import load_export
    from tests.serving_helper import archive_entries, write_archive

    d = tmp_path / "export"
    shutil.copytree(csv_trained["none"], d)
    root, entries = archive_entries(d)
    config = json.loads(entries["data/weights/model_weights_config.json"])["config"]
    weights = dict(load_export(csv_trained["none"]).module.named_buffers())
    index = sorted(json.loads((d / "export.json").read_text())["tables"]).index("t_uid")
    name = f"remap_{index}_rows"
    path = "data/weights/" + config[name]["path_name"]
    rows = weights[name].clone()
    rows[0] = rows[1]  # two admitted ids on one row: no remapper of TorchRec's holds that
    entries[path] = rows.numpy().tobytes() + entries[path][rows.numel() * 8:]
    write_archive(d, root, entries)
    with pytest.raises(ExportError, match=r"the remapper of table 't_uid': rows are not distinct rows") as e:
        load_export(d)
    assert e.value.exit_code == 4


# -- a 1-rank checkpoint of the trainer (DMP), in this process ------------------------------------------
def test_a_one_rank_checkpoint_exports_scoring_as_the_dmp_model_evaluates(tmp_path: Path) -> None:
    from dlrm_dist.cli import export_main
    from dlrm_dist.serving.load import load_export
    from tests.managed_serving_helper import MANAGED_JOB, train_and_score_here

    record = train_and_score_here(tmp_path, MANAGED_JOB)
    fresh = record["batches"][-1][0][1]  # the batch of new ids: every other managed id
    for quantize, tol in (("none", 1e-6), ("int8", INT8_TOL)):
        out = tmp_path / quantize
        assert export_main.main([str(tmp_path / "ckpt"), "--out", str(out), "--quantize", quantize,
                                 "--no-progress"]) == 0
        loaded = load_export(out)
        with torch.no_grad():
            for inputs, probs in record["batches"]:
                got = loaded.module(*inputs)
                worst = (got - probs).abs().max()
                assert got.shape == probs.shape and worst < tol, (quantize, worst)
    buffers, tables = dict(loaded.module.named_buffers()), sorted(loaded.manifest.tables)
    for f, name in enumerate(loaded.feature_names):
        if name in ("user", "item"):  # the managed ones: their new ids were admitted nowhere
            admitted = buffers[f"remap_{tables.index('t_' + name)}_ids"]
            assert loaded.manifest.remappers["t_" + name].admitted > 0
            assert not torch.isin(fresh[f][::2], admitted).any() and torch.isin(fresh[f][1::2], admitted).any()


def test_the_shards_of_a_checkpoint_are_its_saved_chunks_one_per_rank_or_refused_by_name(monkeypatch) -> None:
    """checkpoint_shards: each managed table's row offsets from the chunks its remapper buffers were saved
    in; chunks that are not one per rank of the checkpoint's world tiling the rows, or no remapper
    state at all, are refused by name before anything is written."""
    from types import SimpleNamespace

    from dlrm_dist.checkpoint import reader
    from dlrm_dist.features.schema import from_dict
    from dlrm_dist.serving.export import checkpoint_shards

    schema = from_dict(SCHEMA)
    key = "model.model.managed_arch._managed_collision_collection._managed_collision_modules.{}._mch_sorted_raw_ids"
    chunks = {"t_uid": [(8, 8), (0, 8)], "t_item": [(0, 4), (4, 4)]}

    def saved(world: int):
        entries = {key.format(t): SimpleNamespace(chunks=[SimpleNamespace(offsets=[o], sizes=[n]) for o, n in c])
                   for t, c in chunks.items()}
        metadata = SimpleNamespace(state_dict_metadata=entries)
        monkeypatch.setattr(reader, "read_metadata", lambda path, files=None: metadata)
        return SimpleNamespace(path=Path("ckpt"), manifest=SimpleNamespace(world_size=world, files=None))

    assert checkpoint_shards(saved(2), schema) == {"t_uid": [0, 8, 16], "t_item": [0, 4, 8]}
    with pytest.raises(ExportError, match=r"managed table 't_uid': .*not 3 row-wise shards tiling its 16 rows"):
        checkpoint_shards(saved(3), schema)
    chunks["t_item"] = [(0, 4), (5, 3)]
    with pytest.raises(ExportError, match=r"'t_item'.*chunks \[\(0, 4\), \(5, 3\)\]"):
        checkpoint_shards(saved(2), schema)
    del chunks["t_item"]
    with pytest.raises(ExportError, match=r"no remapper state for managed table 't_item'"):
        checkpoint_shards(saved(2), schema)
