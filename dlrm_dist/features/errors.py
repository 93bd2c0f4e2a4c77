"""Errors of the feature schema."""

from dlrm_dist.config.errors import ConfigError


class SchemaError(ConfigError):
    """A feature schema is invalid, or does not fit the data or the model; the message says which entry."""
