"""Shared fixtures, the CUDA skip rule, and the library warnings the suite ignores.

Only the warnings dlrm_dist.logs.KNOWN_WARNINGS names (libraries about themselves) are
ignored, by message; any other warning, a deprecation in our own use of torch included,
shows in pytest's summary.
"""

from __future__ import annotations

import pytest
import torch

from dlrm_dist.logs import KNOWN_WARNINGS


def pytest_configure(config: pytest.Config) -> None:
    for category, pattern in KNOWN_WARNINGS:
        # ":" separates the filter's fields, so in the regex it becomes "any character".
        config.addinivalue_line("filterwarnings", f"ignore:{pattern.replace(':', '.')}:{category.__name__}")
    # Under pytest's capture stderr has no file descriptor, so torchrun's @record cannot
    # install its fault handler when a test calls dlrm-train's main() in-process.
    config.addinivalue_line("filterwarnings", "ignore:Unable to enable fault handler:UserWarning")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
