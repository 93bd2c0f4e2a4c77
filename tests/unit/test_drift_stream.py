"""benchmarks/drift_stream.py: the drifting stream is deterministic, drifts as stated, and its schemas load.

The realised share of ids unseen the day before is recomputed here from the CSVs (not read from the
generator's own record), and the rank AUC against torchmetrics'.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from torchmetrics.functional.classification import binary_auroc

from benchmarks.drift_stream import StreamSpec, auc, generate, item_ids, main, schema_toml, user_ids
from dlrm_dist.features.io import load_schema

SMALL = StreamSpec(days=3, rows=4000, users=250)


def _column(path: Path, name: str) -> list[str]:
    with path.open() as f:
        return [row[name] for row in csv.DictReader(f)]


def test_same_arguments_same_bytes_and_the_first_days_do_not_depend_on_the_last(tmp_path: Path) -> None:
    a, b, longer = tmp_path / "a", tmp_path / "b", tmp_path / "long"
    generate(SMALL, a, quiet=True)
    generate(SMALL, b, quiet=True)
    generate(StreamSpec(days=4, rows=4000, users=250), longer, quiet=True)
    for day in (1, 2, 3):
        name = f"day{day:02d}.csv"
        assert (a / name).read_bytes() == (b / name).read_bytes() == (longer / name).read_bytes()
    other = tmp_path / "seed1"
    generate(StreamSpec(days=1, rows=4000, users=250, seed=1), other, quiet=True)
    assert (other / "day01.csv").read_bytes() != (a / "day01.csv").read_bytes()


def test_a_quarter_to_a_third_of_each_days_ids_are_unseen_the_day_before(tmp_path: Path) -> None:
    record = generate(SMALL, tmp_path, quiet=True)
    for day in (2, 3):
        for column, key in (("user_id", "users_unseen_yesterday"), ("item", "items_unseen_yesterday")):
            today = set(_column(tmp_path / f"day{day:02d}.csv", column))
            yesterday = set(_column(tmp_path / f"day{day - 1:02d}.csv", column))
            share = len(today - yesterday) / len(today)
            assert 0.2 <= share <= 0.4, (day, column, share)
            assert record["days"][day - 1][key] == pytest.approx(share, abs=1e-4)
    days = _column(tmp_path / "day02.csv", "day")
    assert set(days) == {"2"} and len(days) == SMALL.rows
    users = _column(tmp_path / "day01.csv", "user_id")
    assert all(len(u) == 9 and u.isdigit() for u in users)
    assert all(i.startswith("sku-") and len(i) == 12 for i in _column(tmp_path / "day01.csv", "item"))


def test_raw_ids_are_bijections_of_the_entity_index() -> None:
    index = np.arange(30_000)
    assert np.unique(user_ids(index)).size == index.size
    assert np.unique(item_ids(index)).size == index.size


@pytest.mark.parametrize("ids", ["managed", "hash", "vocab"])
def test_every_schema_loads(tmp_path: Path, ids: str) -> None:
    path = tmp_path / "schema.toml"
    path.write_text(schema_toml(ids, {"user_id": 300, "item": 200}, eviction="lfu"))
    schema = load_schema(path)
    kinds = {f.name: f.kind for f in schema.sparse}
    assert kinds == {"user_id": ids, "item": ids, "category": "vocab"}
    if ids != "vocab":
        assert schema.table_rows("t_user_id") == 300 and schema.table_rows("t_item") == 200


def test_rank_auc_matches_torchmetrics() -> None:
    rng = np.random.default_rng(0)
    scores = np.round(rng.random(3000), 2)  # ties
    labels = (rng.random(3000) < scores).astype(np.int8)
    expected = float(binary_auroc(torch.from_numpy(scores), torch.from_numpy(labels).long()))
    assert auc(scores, labels) == pytest.approx(expected, abs=1e-6)


def test_the_cli_refuses_bad_sizes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path / "x"), "--days", "0"])
    assert e.value.code == 2 and "--days" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
