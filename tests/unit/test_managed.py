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
