"""The DLRM model: TorchRec embedding bags, MLPs and feature interactions. No distributed code."""

from dlrm_dist.model.dlrm import DLRM, DLRMTrain, build_model
from dlrm_dist.model.tables import feature_names, make_tables

__all__ = ["DLRM", "DLRMTrain", "build_model", "feature_names", "make_tables"]
