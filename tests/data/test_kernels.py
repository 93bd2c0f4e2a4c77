"""kernels.py's compiled steps give what the pyarrow formulation they replace gives: the bags of a
multi-hot column (split_bags vs encode.bags_of), and the Interner's ids when a block's slots are
loaded ahead (large tables, collisions, growth between blocks)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from dlrm_dist.data.columnar import encode, kernels
from dlrm_dist.features.schema import from_dict

CASES = ["a|b", "", None, "|", "||a||", "é|ü|", "abc", "a|", "|b", "x|y|z|w|v|u|t|s|r|q|p|o", "a b|c d"]


@pytest.mark.parametrize("texts", [CASES * 3, [], [None, None], ["", ""], ["long" * 40 + "|" + "x" * 300]])
@pytest.mark.parametrize("delimiter", ["|", ";"])
def test_split_bags_gives_the_bags_of_pyarrows_split(texts: list, delimiter: str) -> None:
    schema = from_dict({"name": "b", "label": {"column": "y"},
                        "sparse": [{"name": "t", "kind": "vocab", "delimiter": delimiter}]})
    col = pa.array([None if t is None else t.replace("|", delimiter) for t in texts], pa.string())
    ref = encode.bags_of(pa.RecordBatch.from_arrays([col], names=["text:t"]), schema.sparse[0])
    values, counts = kernels.split_bags(col, delimiter)
    assert values.to_pylist() == ref.values.to_pylist()
    assert counts.tolist() == ref.lengths.tolist()
    assert kernels.split_bags(col, delimiter * 2) is None  # (a delimiter of two bytes: pyarrow's split)


def test_the_interner_gives_first_sight_ids_across_blocks_and_growth() -> None:
    rng = np.random.default_rng(0)
    values = [f"v{x:x}" + "-" * int(x % 23) for x in rng.integers(0, 30_000, 60_000)]
    interner, ids = kernels.Interner(), []
    for lo in range(0, len(values), 7_000):  # (blocks smaller and larger than the look-ahead; the table grows)
        ids.extend(interner.ids(pa.array(values[lo: lo + 7_000] + [None])).tolist()[:-1])
    first: dict[str, int] = {}
    assert ids == [first.setdefault(v, len(first)) for v in values]
    assert interner.texts().to_pylist() == list(first)


def test_a_collision_is_still_named_with_the_loads_ahead(monkeypatch) -> None:
    monkeypatch.setattr(kernels.Interner, "HASH_MASK", np.uint64(0xF))  # 16 hashes: collisions certain
    interner = kernels.Interner()
    with pytest.raises(kernels.Collision) as e:
        interner.ids(pa.array([f"t{i}" for i in range(40)]))
    assert e.value.first != e.value.second and (int(e.value.hash) & ~0xF) == 0
