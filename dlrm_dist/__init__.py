"""dlrm_dist: hybrid-parallel DLRM training on TorchRec.

Embedding tables are model-parallel (sharded by TorchRec, exchanged by all-to-all);
the MLPs are data-parallel under DDP. See README.md for the architecture.
"""

__version__ = "0.1.0"
