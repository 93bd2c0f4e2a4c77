"""Configuration: typed sections, TOML/CLI loading and pre-launch validation.

The names below load on first use (PEP 562): a module that needs only ``dlrm_dist.config.errors``
(the data commands, through the feature schema) does not build every section's pydantic model.
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # (what type checkers and editors see; at run time __getattr__ loads them)
    from dlrm_dist.config.errors import ConfigError
    from dlrm_dist.config.loader import load_config
    from dlrm_dist.config.sections import (Config, DataConfig, ModelConfig, MultiHotConfig, OptimConfig,
                                           ShardingConfig, SyntheticConfig, TrainConfig)
    from dlrm_dist.config.validate import validate_for_launch

_HOMES = {
    **dict.fromkeys(("Config", "DataConfig", "ModelConfig", "MultiHotConfig", "OptimConfig", "ShardingConfig",
                     "SyntheticConfig", "TrainConfig"), "sections"),
    "ConfigError": "errors",
    "load_config": "loader",
    "validate_for_launch": "validate",
}
__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{_HOMES[name]}"), name)
