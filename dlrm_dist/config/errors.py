"""Bad configuration of a job (see dlrm_dist/errors.py for the whole hierarchy)."""

from dlrm_dist.errors import DlrmError


class ConfigError(DlrmError, ValueError):
    """A configuration value is invalid; the message names it and what would be valid."""
