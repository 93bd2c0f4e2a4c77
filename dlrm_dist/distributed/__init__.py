"""Distributed setup: process group, device, DMP wrapping, sharded-weight helpers."""

from dlrm_dist.distributed.env import DistEnv, init_distributed, teardown

__all__ = ["DistEnv", "init_distributed", "teardown"]
