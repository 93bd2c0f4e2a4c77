"""The one exception type for bad configuration or bad input to a job."""


class ConfigError(ValueError):
    """A configuration value is invalid; the message names it and what would be valid."""
