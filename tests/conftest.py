"""Shared fixtures (the demo run, made once per session), the CUDA skip rule, the CPU pin, the Hypothesis profiles, and the library warnings the suite ignores.

Only the warnings dlrm_dist.logs.KNOWN_WARNINGS names (libraries about themselves) are
ignored, by message; any other warning, a deprecation in our own use of torch included,
shows in pytest's summary.
"""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, settings

from dlrm_dist.logs import KNOWN_WARNINGS
from tests.launch_helper import DemoRun, run_demo

# The fuzzing suite (tests/fuzz/) runs a fixed example budget inside `make test`, derandomized
# so a CI run is reproducible; DLRM_DIST_FUZZ=long runs a longer, random profile.
settings.register_profile("ci", max_examples=25, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.register_profile("long", max_examples=1000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.load_profile("long" if os.environ.get("DLRM_DIST_FUZZ") == "long" else "ci")


def pytest_configure(config: pytest.Config) -> None:
    for category, pattern in KNOWN_WARNINGS:
        # ":" separates the filter's fields, so in the regex it becomes "any character".
        config.addinivalue_line("filterwarnings", f"ignore:{pattern.replace(':', '.')}:{category.__name__}")
    # Under pytest's capture stderr has no file descriptor, so torchrun's @record cannot
    # install its fault handler when a test calls dlrm-train's main() in-process.
    config.addinivalue_line("filterwarnings", "ignore:Unable to enable fault handler:UserWarning")


@pytest.fixture(autouse=True)
def _cpu_unless_marked_cuda(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test not marked ``cuda`` runs on the CPU, also on a GPU machine (issue 24 item 3).

    Its subprocesses and spawned ranks see no GPU (CUDA_VISIBLE_DEVICES=""), and in this process
    torch reports none, so ``train.device=auto`` picks cpu/gloo wherever a test starts the trainer.
    """
    if "cuda" in request.keywords:
        return
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    """`make demo`'s 800-step job on 2 ranks, once per session (about half of its tests' time on
    2 cores): tests/multiprocess/test_cli.py checks its output, test_serving.py its int8 export."""
    return run_demo(tmp_path_factory.mktemp("demo"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
