"""The DLRM model: TorchRec embedding bags, MLPs and feature interactions. No distributed code."""

from dlrm_dist.model.dlrm import DLRM, DLRMTrain, build_model
from dlrm_dist.model.spec import ModelSpec, resolve_model
from dlrm_dist.model.tables import make_tables

__all__ = ["DLRM", "DLRMTrain", "ModelSpec", "build_model", "make_tables", "resolve_model"]
