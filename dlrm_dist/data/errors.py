"""The errors of the data: a directory or file missing, incomplete or inconsistent; input that
cannot be preprocessed; data that cannot be fetched."""

from dlrm_dist.errors import DlrmError


class DataError(DlrmError):
    """Data that cannot be trained on as it is; the message names the file and what is wrong."""


class PreprocessError(DataError):
    """Input (or arguments) that cannot be preprocessed; the message names the file and line or row."""


class FetchError(DataError):
    """The data could not be obtained; the message says why (PyPI unreachable, wheel changed)."""
