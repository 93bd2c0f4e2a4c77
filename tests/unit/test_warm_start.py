"""train.warm_start: a new run from an earlier run's weights and optimizer state, at step 0.

One 1-rank process group in this process (tests/dist_helper.py's ``one_rank_here``): a source
run trains and checkpoints; a warm-started run is built, restored and compared tensor by
tensor with the source's final state, then trained (step counter and LR warm-up start again,
the metrics and the summary name the source). The refusals are config- and path-level
(no process group).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.distributed._shard.sharded_tensor import ShardedTensor

from dlrm_dist.checkpoint import CheckpointError
from dlrm_dist.checkpoint.manager import warm_start_source
from dlrm_dist.config import ConfigError, load_config
from dlrm_dist.config.loader import help_text
from dlrm_dist.distributed.env import DistEnv, init_distributed, teardown
from dlrm_dist.training.build import build_trainer, prepare
from dlrm_dist.training.summary import final_report, summary_record
from tests.checkpoint_helper import JOB, train_here
from tests.dist_helper import one_rank_here


def _flat(tree: Any, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every tensor of a nested state dict, by path (a 1-rank ShardedTensor: its local shards)."""
    out: dict[str, torch.Tensor] = {}
    if isinstance(tree, dict):
        for k, v in tree.items():
            out.update(_flat(v, f"{prefix}{k}/"))
    elif isinstance(tree, (list, tuple)):
        for i, v in enumerate(tree):
            out.update(_flat(v, f"{prefix}{i}/"))
    elif isinstance(tree, ShardedTensor):
        out[prefix] = torch.cat([s.tensor.detach().flatten() for s in tree.local_shards()]).clone()
    elif torch.is_tensor(tree):
        out[prefix] = tree.detach().clone()
    return out


def _state(trainer: Any) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    return _flat(trainer.model.state_dict()), _flat(trainer.optimizer.state_dict()["state"])


def test_a_warm_started_run_starts_at_step_0_from_the_sources_weights_and_optimizer(tmp_path: Path) -> None:
    src_ckpt, src_run = tmp_path / "src_ckpt", tmp_path / "src_run"
    source_args = ["--train.steps=4", f"--train.checkpoint_dir={src_ckpt}", f"--train.run_dir={src_run}"]
    (src_run).mkdir()
    (src_run / "config.json").write_text(json.dumps({"train": {"checkpoint_dir": str(src_ckpt)}}))
    warm_args = ["--train.steps=3", "--train.log_interval=1", "--optim.warmup_steps=4", "--train.seed=7",
                 f"--train.warm_start={src_run}", f"--train.checkpoint_dir={tmp_path / 'ckpt'}",
                 f"--train.run_dir={tmp_path / 'run'}"]
    env = DistEnv.from_environ({}, device="cpu")
    with one_rank_here():
        init_distributed(env, timeout_s=120)
        try:
            source = build_trainer(env, prepare(load_config(JOB + source_args), env))
            source.train()
            src_model, src_optim = _state(source)
            prepared = prepare(load_config(JOB + warm_args), env)
            # the run directory means its checkpoint_dir's newest checkpoint (no best kept): one step directory
            assert prepared.cfg.train.warm_start == str(src_ckpt / "step_00000004")
            warm = build_trainer(env, prepared)
            fresh_model, _ = _state(warm)
            assert warm.checkpoints.restore() is None  # loaded, but the run's own step stays 0
            model, optim = _state(warm)
            result = warm.train()
        finally:
            teardown()
    assert any(not torch.equal(fresh_model[k], src_model[k]) for k in src_model)  # seed 7 starts elsewhere
    assert model.keys() == src_model.keys() and optim.keys() == src_optim.keys() and optim
    for k in src_model:
        assert torch.equal(model[k], src_model[k]), k
    for k in src_optim:
        assert torch.equal(optim[k], src_optim[k]), k
    assert any(v.abs().sum() > 0 for v in optim.values())  # adagrad's sums: real state, not a fresh optimizer
    assert result.step == 3 and len(result.losses) == 3
    assert result.warm_start is not None and result.warm_start.step == 4
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r.get("kind") == "train"]
    assert [r["step"] for r in train] == [1, 2, 3]
    assert [r["lr_factor"] for r in train] == [0.25, 0.5, 0.75]  # warm-up again from step 0
    ws = [r for r in records if r.get("kind") == "warm_start"]
    assert len(ws) == 1 and ws[0]["checkpoint"] == str(src_ckpt / "step_00000004") and ws[0]["source_step"] == 4 and ws[0]["step"] == 0
    record = summary_record(prepared.cfg, env, result)
    assert record["warm_start"] == {"checkpoint": str(src_ckpt / "step_00000004"), "step": 4}
    assert f"warm start  from {src_ckpt / 'step_00000004'} (its step 4" in final_report(record)
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["step_00000003"]

    # Restarted with the same arguments, the run resumes its own checkpoint: warm_start is not applied again.
    assert warm_start_source(load_config(JOB + warm_args).train) is None
    again = train_here(["--train.steps=5", *warm_args[1:]])
    assert again.warm_start is None and again.step == 5 and len(again.losses) == 2


def test_warm_start_refusals_name_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"train.warm_start=.*train.checkpoint=.*both say where the run starts"):
        load_config(JOB + ["--train.warm_start=a", "--train.checkpoint=b"])
    with pytest.raises(CheckpointError, match=r"train.warm_start='.*empty'.*no complete checkpoint"):
        warm_start_source(load_config(JOB + [f"--train.warm_start={tmp_path / 'empty'}"]).train)
    run = tmp_path / "run"
    with pytest.raises(CheckpointError, match=r"is this run's own train.run_dir.*set train.run_dir"):
        warm_start_source(load_config(JOB + [f"--train.warm_start={run}", f"--train.run_dir={run}"]).train)
    text = " ".join(help_text().split())  # --help says how it differs from train.checkpoint and resume
    assert "--train.warm_start" in text and "continues the old run's step" in text
    assert "start again at 0" in text and "resume is on, the run resumes them" in text


def test_a_warm_start_loads_under_another_plan_and_refuses_another_schema_by_name(tmp_path: Path) -> None:
    src = tmp_path / "src"
    env = DistEnv.from_environ({}, device="cpu")
    other_plan = [a for a in JOB if not a.startswith("--sharding-type")] + ["--sharding-type=data_parallel"]
    bigger = [a.replace("table_sizes=100/", "table_sizes=120/") for a in JOB]
    warm = ["--train.steps=1", f"--train.warm_start={src}", f"--train.run_dir={tmp_path / 'r1'}"]
    with one_rank_here():
        init_distributed(env, timeout_s=120)
        try:
            source = build_trainer(env, prepare(load_config(
                JOB + ["--train.steps=2", f"--train.checkpoint_dir={src}", f"--train.run_dir={tmp_path / 'r0'}"]), env))
            source.train()
            src_model, _ = _state(source)
            replicated = build_trainer(env, prepare(load_config(other_plan + warm), env))
            assert replicated.checkpoints.restore() is None
            model, _ = _state(replicated)
            with pytest.raises(CheckpointError, match=r"train.warm_start: .* is from a different model or data"):
                build_trainer(env, prepare(load_config(bigger + warm), env)).checkpoints.restore()
        finally:
            teardown()
    assert model.keys() == src_model.keys()
    for k in src_model:  # table-wise shards read into replicated tables: the same weights
        assert torch.equal(model[k].flatten(), src_model[k].flatten()), k
