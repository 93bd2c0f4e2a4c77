"""Layers that know only their neighbours (issue 20 item 4), on one process, without a process group.

- the model wrapper says where its tables are and which parts are data-parallel, and
  the planner and the parallel wrapping take that from it instead of hard-coding DLRM's names;
- the teacher's AUC is a capability of the synthetic source, asked for only where it exists;
- the planner's contracts come from planning/types.py, whichever stage a caller uses.
"""

from __future__ import annotations

import torch
from torch import nn

from dlrm_dist.config import load_config
from dlrm_dist.data import Dataset, HasTeacher, teacher_auc
from dlrm_dist.data.synthetic import SyntheticData, SyntheticSpec
from dlrm_dist.distributed import parallel
from dlrm_dist.features import demo_schema
from dlrm_dist.model import build_model
from dlrm_dist.model.dlrm import DLRMTrain
from dlrm_dist.planning import types
from dlrm_dist.planning.plan import find_ebc
from dlrm_dist.training.build import resolve


def _model(*args: str) -> DLRMTrain:
    _, _, spec = resolve(load_config(["--model.embedding_dim=8", "--data.schema=demo:table_sizes=20/30/40", *args]))
    return build_model(spec, seed=0, device=torch.device("cpu"))


def test_the_wrapper_names_where_its_tables_are() -> None:
    for arch in ([], ["--model.arch=embedding_mlp", "--model.residual_units=1"]):
        model = _model(*arch)
        path, ebc = find_ebc(model)
        assert path == DLRMTrain.TABLES_PATH and ebc is model.tables
        assert model.get_submodule(DLRMTrain.TABLES_PATH) is ebc


def test_dense_modules_are_everything_but_the_tables() -> None:
    """Every parameter is in the tables or in exactly one data-parallel module (residual units included)."""
    for arch in ([], ["--model.arch=embedding_mlp", "--model.residual_units=2"]):
        model = _model(*arch)
        dense = [id(p) for m in model.dense_modules() for p in m.parameters()]
        tables = [id(p) for p in model.tables.parameters()]
        assert len(dense) == len(set(dense)) and not set(dense) & set(tables)
        assert set(dense) | set(tables) == {id(p) for p in model.parameters()}
    assert any(type(m).__name__ == "Sequential" and m is model.model.residual_arch for m in model.dense_modules())


def test_compile_dense_compiles_what_the_model_names(monkeypatch) -> None:
    compiled: list[nn.Module] = []
    monkeypatch.setattr(nn.Module, "compile", lambda self, *a, **k: compiled.append(self))
    model = _model()
    parallel.compile_dense(model)
    assert compiled == model.dense_modules() and len(compiled) == 3  # bottom MLP, interaction, top MLP


def test_mixed_precision_is_asked_of_the_wrapper() -> None:
    model = _model()
    model.use_mixed_precision(torch.bfloat16, "cpu")
    assert model.model.dense_dtype == torch.bfloat16 and model.model.autocast_device == "cpu"


class _RealData:
    """A source without a teacher (as every real dataset is): the Dataset protocol alone."""

    feature_names = ["a"]

    def batches(self, split, global_batch_size, rank, world_size, num_batches=None, start_batch=0):
        return iter(())

    def eval_batch_count(self, global_batch_size: int) -> int:
        return 0

    def bag_lengths(self) -> dict[str, float]:
        return {"a": 1.0}


def test_the_teacher_is_an_optional_capability() -> None:
    assert "teacher_auc" not in Dataset.__dict__  # not part of what every source must offer
    synthetic = SyntheticData(SyntheticSpec(), demo_schema([50, 1000, 7]), eval_batches=4)
    assert isinstance(synthetic, HasTeacher) and not isinstance(_RealData(), HasTeacher)
    assert teacher_auc(synthetic, 1000) == synthetic.teacher_auc(1000) > 0.6
    assert teacher_auc(_RealData(), 1000) is None


def test_one_home_for_the_planner_contracts() -> None:
    """Every stage hands on the very classes of types.py (no second definition anywhere)."""
    from dlrm_dist.planning import check, errors, estimates, options, partitioner, placement, plan, storage

    for name in ("TableSpec", "TopologySpec", "Budgets", "PlannerInputs", "Capacity", "Option", "TablePlacement",
                 "JobSpec", "ExpectedTable"):
        cls = getattr(types, name)
        assert cls.__module__ == "dlrm_dist.planning.types", name
        for module in (check, errors, estimates, options, partitioner, placement, plan, storage):
            assert getattr(module, name, cls) is cls, (module.__name__, name)
    assert not hasattr(types.TopologySpec(2, 2), "num_hosts")  # unused: gone
