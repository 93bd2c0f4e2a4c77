"""Configuration: typed sections, TOML/CLI loading and pre-launch validation."""

from dlrm_dist.config.sections import (
    Config,
    DataConfig,
    ModelConfig,
    MultiHotConfig,
    OptimConfig,
    ShardingConfig,
    SyntheticConfig,
    TrainConfig,
)
from dlrm_dist.config.loader import ConfigError, load_config
from dlrm_dist.config.validate import validate_for_launch

__all__ = [
    "Config",
    "ConfigError",
    "DataConfig",
    "ModelConfig",
    "MultiHotConfig",
    "OptimConfig",
    "ShardingConfig",
    "SyntheticConfig",
    "TrainConfig",
    "load_config",
    "validate_for_launch",
]
