"""Resharding a checkpoint, optimizer state included, where TorchRec's own path cannot:
data_parallel -> table_wise (state keys and, for row-wise Adagrad, shapes differ),
table_wise -> column_wise (row-wise state becomes one accumulator per column shard) and
back, table_wise -> row_wise at world size 4, row_wise -> data_parallel at world size 1; and managed
tables (TorchRec managed collisions) from 2 ranks to 1 (through --train.warm_start) and from 1 to 2.

Every checkpoint is written at world size 2 after K steps. Each case resumes it under another
sharding and (1) reads back what was loaded: the same weights, eval AUC and embedding
optimizer state as saved; (2) trains K more steps and matches the run that continued under
the original sharding: every loss and weight.

A managed table's ids change owner and row at another world size: the checkpoint read on its
own (no model) says which raw id held which embedding row, optimizer state and count; after
resharding every id kept has the same row values and state, a shard with too few rows keeps
the ids with the highest counts (LFU; ties: the lower id), the ids counted since the last
admission are all carried over, and training goes on.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from tests.state_helper import load_embedding_optimizer_state
from dlrm_dist.checkpoint.id_reshard import EMPTY, id_block
from dlrm_dist.checkpoint.io import read_state, verified_metadata
from dlrm_dist.checkpoint.manifest import Manifest
from dlrm_dist.checkpoint.store import step_dir
from tests.dist_helper import one_rank_here, run_ranks
from tests.multiprocess.reshard_worker import K, resharded, source_name, sources

pytestmark = pytest.mark.multiprocess

# (source sharding, target sharding, embedding optimizer, target world size)
CASES = [
    ("data_parallel", "table_wise", "adagrad", 2),
    ("data_parallel", "table_wise", "rowwise_adagrad", 2),
    ("table_wise", "column_wise", "adagrad", 2),
    ("table_wise", "column_wise", "rowwise_adagrad", 2),
    ("column_wise", "table_wise", "rowwise_adagrad", 2),
    ("table_wise", "row_wise", "adagrad", 4),
    ("row_wise", "data_parallel", "adagrad", 1),
    ("column_wise", "row_wise", "rowwise_adagrad", 1),
]
# Row-wise Adagrad keeps one accumulator per column shard under column-wise sharding: its
# updates are not the unsharded rule (see the equivalence tests), so a run that switches to
# or from column_wise cannot follow one that does not. Its state is carried exactly (1), and
# the first loss after the switch — which depends on the weights only — is equal.
DIFFERENT_RULE = {(s, d, o) for s, d, o, _ in CASES if o == "rowwise_adagrad" and "column_wise" in (s, d)}
# managed tables: (source, target, embedding optimizer, target world size); the 'managed' source
# is trained on 2 ranks, 'managed-ws1' on one
MANAGED_CASES = [("managed", "managed-warm", "adagrad", 1), ("managed-ws1", "managed", "adagrad", 2)]
SOURCE_WORLD = {"managed": 2, "managed-ws1": 1}
TOL = 1e-6  # float summation order differs between layouts; measured gaps are <= 1e-7
CONTROL = ("data_parallel", "table_wise", "adagrad")  # rerun with the optimizer state dropped


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reshard")
    layouts = sorted({(s, o) for s, _, o, _ in CASES + MANAGED_CASES if SOURCE_WORLD.get(s, 2) == 2})
    at = {world: [(s, d, o) for s, d, o, w in CASES + MANAGED_CASES if w == world] for world in (1, 2, 4)}
    assert sum(map(len, at.values())) == len(CASES) + len(MANAGED_CASES)
    with one_rank_here():  # the one-rank managed source, resharded to 2 ranks in the run below
        sources(str(out), [(s, o) for s, _, o, _ in MANAGED_CASES if SOURCE_WORLD.get(s) == 1])
    # the world-size-2 cases run in the sources' own process group, the world of one in this process
    run_ranks(sources, 2, str(out), layouts, at[2], CONTROL, timeout=600)
    run_ranks(resharded, 4, str(out), at[4], timeout=600)
    with one_rank_here():
        resharded(str(out), at[1])
    return out


def _case_id(case: tuple) -> str:
    s, d, o, w = case
    return f"{s}->{d}-{o}-ws{w}"


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_loads_what_was_saved(runs: Path, case: tuple) -> None:
    src, dst, opt, world = case
    source = torch.load(runs / f"{source_name(src, opt)}.pt", weights_only=False)
    target = torch.load(runs / f"{src}-to-{dst}-{opt}-ws{world}.pt", weights_only=False)
    assert target["loaded_eval"]["step"] == K
    assert target["loaded_eval"]["auc"] == pytest.approx(source["eval"]["auc"], abs=1e-6)
    assert target["loaded_eval"]["logloss"] == pytest.approx(source["eval"]["logloss"], abs=1e-6)
    saved = load_embedding_optimizer_state(step_dir(runs / source_name(src, opt) / "ckpt", K))
    loaded = load_embedding_optimizer_state(runs / f"{src}-to-{dst}-{opt}-ws{world}" / "probe")
    assert sorted(saved) == sorted(loaded) == [f"t_cat_{i}.sum" for i in range(4)]
    for key, value in saved.items():
        assert value.abs().max() > 0, key  # the state is real: K steps of gradients
        torch.testing.assert_close(loaded[key], value, rtol=1e-6, atol=0, msg=key)


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_training_continues_as_if_never_resharded(runs: Path, case: tuple) -> None:
    src, dst, opt, world = case
    never = torch.load(runs / f"{source_name(src, opt)}-continued.pt", weights_only=False)
    target = torch.load(runs / f"{src}-to-{dst}-{opt}-ws{world}.pt", weights_only=False)
    assert len(target["losses"]) == len(never["losses"]) == K
    assert target["losses"][0] == pytest.approx(never["losses"][0], abs=TOL)
    if (src, dst, opt) in DIFFERENT_RULE:
        return
    assert target["losses"] == pytest.approx(never["losses"], abs=TOL)
    for key, value in never["weights"].items():
        torch.testing.assert_close(target["weights"][key], value, rtol=0, atol=TOL, msg=key)


def test_dropping_the_optimizer_state_would_be_caught(runs: Path) -> None:
    """The control: weights resharded, embedding optimizer state lost (zeroed). The continued
    run departs from the never-resharded one far beyond the tolerance used above."""
    src, dst, opt = CONTROL
    never = torch.load(runs / f"{source_name(src, opt)}-continued.pt", weights_only=False)
    dropped = torch.load(runs / f"{src}-to-{dst}-{opt}-ws2-dropped.pt", weights_only=False)
    assert dropped["losses"][0] == pytest.approx(never["losses"][0], abs=TOL)  # same weights
    gap = max(abs(a - b) for a, b in zip(dropped["losses"], never["losses"]))
    weight_gap = max((dropped["weights"][k] - v).abs().max().item() for k, v in never["weights"].items())
    assert gap > 100 * TOL and weight_gap > 100 * TOL, (gap, weight_gap)


# -- managed tables ---------------------------------------------------------------------------------
REMAPPER = "model.model.managed_arch._managed_collision_collection._managed_collision_modules."
WEIGHT = "model.model.managed_arch._embedding_module.embedding_bags."
MANAGED_TABLES = {"t_user": "counts", "t_item": "last_access_iter"}
PLAIN = "t_site"


def _read(ckpt: Path, keys: list[str]) -> dict[str, torch.Tensor]:
    """Whole tensors of a checkpoint, read with no model and no process group."""
    metadata = verified_metadata(ckpt, Manifest.read(ckpt))
    md = metadata.state_dict_metadata
    out = {k: torch.zeros(tuple(md[k].size), dtype=md[k].properties.dtype) for k in keys}
    nested: dict = {}
    for key, value in out.items():  # DCP's flattened key "a.b" -> {"a": {"b": ...}}, split at the section
        section, rest = key.split(".", 1)
        nested.setdefault(section, {})[rest] = value
    read_state(ckpt, nested, metadata)
    return out


def _ids_of(ckpt: Path, table: str, score: str) -> tuple[dict[int, tuple], list[int], list[int]]:
    """{raw id: (embedding row, its adagrad state, its score)}, the pending ids, and the shards' rows."""
    ids, rows, meta = (f"{REMAPPER}{table}.{b}" for b in ("_mch_sorted_raw_ids", "_mch_remapped_ids_mapping",
                                                         f"_mch_{score}"))
    weight, state = f"{WEIGHT}{table}.weight", f"emb_optim.{table}.sum"
    clock, pending = f"managed.{table}.clock", f"managed.{table}.pending_ids"
    t = _read(ckpt, [ids, rows, meta, weight, state, clock, pending])
    held = {int(i): (t[weight][r], t[state][r], int(c)) for i, r, c in zip(t[ids].tolist(), t[rows].tolist(),
                                                                           t[meta].tolist()) if i != EMPTY}
    waiting = [i for rank, row in enumerate(t[pending]) for i in row[:int(t[clock][rank, 0])].tolist()]
    shard_rows = [c.sizes[0] for c in sorted(verified_metadata(ckpt, Manifest.read(ckpt)).state_dict_metadata[ids].chunks,
                                             key=lambda c: c.offsets[0])]
    return held, waiting, shard_rows


def _expected(source: dict[int, tuple], shard_rows: list[int], score: str) -> set[int]:
    """The ids each new shard keeps: those of its block of the id space, the best rows - 1 by the
    policy's score (higher stays), ties to the lower raw id."""
    kept = set()
    for rank, rows in enumerate(shard_rows):
        mine = [i for i in source if i // id_block(len(shard_rows)) == rank]
        kept |= set(sorted(mine, key=lambda i: (-source[i][2], i))[:rows - 1])
    return kept


@pytest.mark.parametrize("case", MANAGED_CASES, ids=_case_id)
def test_a_managed_table_reshards_by_raw_id(runs: Path, case: tuple) -> None:
    src, dst, opt, world = case
    source_ckpt = step_dir(runs / source_name(src, opt) / "ckpt", K)
    name = f"{src}-to-{dst}-{opt}-ws{world}"
    probe = next((runs / name / "probe").glob("step_*"))
    for table, score in MANAGED_TABLES.items():
        before, waiting_before, rows_before = _ids_of(source_ckpt, table, score)
        after, waiting_after, rows_after = _ids_of(probe, table, score)
        assert len(rows_before) == SOURCE_WORLD[src] and len(rows_after) == world
        assert len(before) > sum(rows_after) // 2, (table, len(before))  # the tables were well filled
        expected = _expected(before, rows_after, score)
        assert set(after) == expected, (table, sorted(set(before) - set(after)))
        if world < SOURCE_WORLD[src]:
            assert expected == set(before)  # more rows per shard: every id is kept
        else:
            assert len(expected) < len(before)  # a full shard dropped its coldest ids
        for i in expected:
            torch.testing.assert_close(after[i][0], before[i][0], rtol=0, atol=0, msg=f"{table} id {i}: row")
            torch.testing.assert_close(after[i][1], before[i][1], rtol=0, atol=0, msg=f"{table} id {i}: state")
            assert after[i][2] == before[i][2], (table, i)
        assert max(before[i][1].abs().max() for i in expected) > 0  # the state is real: K steps of gradients
        assert waiting_before and sorted(waiting_after) == sorted(waiting_before), table  # inside the interval
    # the plain table beside them (row-wise, dense kernel: torch-optimizer state) is saved whole and resharded
    plain = f"emb_optim.{PLAIN}.sum"
    saved, loaded = _read(source_ckpt, [plain])[plain], _read(probe, [plain])[plain]
    assert saved.shape == loaded.shape == (16, 8) and saved.abs().sum(1).gt(0).sum() > 8
    torch.testing.assert_close(loaded, saved, rtol=0, atol=0)
    target = torch.load(runs / f"{name}.pt", weights_only=False)
    assert len(target["losses"]) == K and all(math.isfinite(x) for x in target["losses"])  # training goes on
