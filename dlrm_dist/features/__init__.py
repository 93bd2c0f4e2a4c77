"""Feature schemas: what the inputs of a job are, and the embedding tables they feed."""

from dlrm_dist.features.builtin import criteo_schema, demo_schema
from dlrm_dist.features.errors import SchemaError
from dlrm_dist.features.io import load_schema
from dlrm_dist.features.schema import DenseFeature, FeatureSchema, SparseFeature, TableDef

__all__ = ["DenseFeature", "FeatureSchema", "SchemaError", "SparseFeature", "TableDef",
           "criteo_schema", "demo_schema", "load_schema"]
