"""The error of every data source: a directory or file that is missing, incomplete or inconsistent."""

from dlrm_dist.config.errors import ConfigError


class DataError(ConfigError):
    """Data that cannot be trained on as it is; the message names the file and what is wrong."""
