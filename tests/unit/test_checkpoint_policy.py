"""Checkpoint policy and manifest without a process group: when a save is due, what a
manifest holds, and how a foreign or damaged one is refused."""

from __future__ import annotations

import json

import pytest

from dlrm_dist.checkpoint import CheckpointError, CheckpointManager, CheckpointPolicy, Manifest, RunInfo
from dlrm_dist.checkpoint.manifest import MANIFEST
from dlrm_dist.config import load_config

INFO = RunInfo("adagrad", "sgd", [{"table": "t_a"}], {"train": {"steps": 10}})


def _manager(**policy) -> CheckpointManager:
    return CheckpointManager(CheckpointPolicy(**policy), model=None, optimizer=None, info=INFO)


def test_due_steps() -> None:
    assert _manager().due_steps(10) == []  # no directory: nothing is ever due
    assert _manager(directory="d").due_steps(10) == [10]  # only at the end
    assert _manager(directory="d", interval=4).due_steps(10) == [4, 8, 10]
    assert _manager(directory="d", interval=5).due_steps(10) == [5, 10]


def test_policy_from_config() -> None:
    cfg = load_config(["--train.checkpoint_dir=ck", "--train.checkpoint_interval=3", "--train.keep_last=1",
                       "--train.resume=false"])
    assert CheckpointPolicy.from_config(cfg.train) == CheckpointPolicy("ck", 3, 1, False, None)


def test_save_without_a_directory_is_refused() -> None:
    with pytest.raises(CheckpointError, match="no checkpoint directory"):
        _manager().save(3)


def test_manifest_round_trip(tmp_path) -> None:
    m = Manifest(step=7, world_size=2, tables={"t_a": (10, 8)}, info=INFO)
    m.write(tmp_path)
    back = Manifest.read(tmp_path)
    assert back == m and back.tables["t_a"] == (10, 8)
    stored = json.loads((tmp_path / MANIFEST).read_text())
    assert stored["format"] == "dlrm_dist.checkpoint" and stored["embedding_optimizer"] == "adagrad"


def test_foreign_and_damaged_manifests_are_named(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="no readable manifest"):
        Manifest.read(tmp_path)
    good = Manifest(step=7, world_size=2, tables={"t_a": (10, 8)}, info=INFO).to_dict()
    for change, words in (({"format": "other"}, "is not dlrm_dist.checkpoint v2 or v3"), ({"version": 1}, "v1 is not"),
                          ({"tables": {"t_a": [10]}}, "table 't_a' has shape"), ({"tables": [1]}, "tables is a list"),
                          ({"step": "7"}, "step is '7', not an integer"), ({"files": [1]}, "files is"),
                          ({"files": {"a": {"bytes": -1, "crc32c": "0"}}}, "files\\['a'\\] is not"),
                          ({"files": {"../x": {"bytes": 1, "crc32c": "00000000"}}}, "not data files"),
                          ({"config": {"features": {"dense": 3}}}, "stored feature schema is malformed")):
        (tmp_path / MANIFEST).write_text(json.dumps({**good, **change}))
        with pytest.raises(CheckpointError, match=words):
            Manifest.read(tmp_path)
    (tmp_path / MANIFEST).write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="not a JSON object"):
        Manifest.read(tmp_path)


def test_run_info_differences() -> None:
    assert INFO.differences(INFO) == []
    other = RunInfo("sgd", "sgd")
    assert INFO.differences(other) == ["embedding_optimizer: checkpoint 'sgd', this run 'adagrad'"]
