"""The preprocessing CLI's allocator settings (dlrm_dist/data/allocator.py): glibc takes them (in a
process of their own: they change the whole process's allocator), a setting the environment gives
is left alone, and only the ``dlrm-data preprocess`` process sets them, not ``main`` called in
someone else's process."""

from __future__ import annotations

import subprocess
import sys

import pytest

from dlrm_dist.cli import data_main
from dlrm_dist.data import allocator

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")


@linux
def test_glibc_takes_every_setting_and_the_process_still_allocates() -> None:
    code = ("from dlrm_dist.data.allocator import keep_freed_memory; import numpy as np; ok = keep_freed_memory(); "
            "a = [np.ones(1 << 22) for _ in range(8)]; del a; b = np.ones(1 << 24); print(ok, int(b.sum()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.split() == ["True", str(1 << 24)]


@linux
def test_a_setting_the_environment_gives_is_left_as_given(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr(allocator.ctypes, "CDLL", lambda name: type("L", (), {"mallopt": _Fake(calls)})())
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    assert allocator.keep_freed_memory()
    assert sorted(calls) == sorted([allocator._M_MMAP_THRESHOLD, allocator._M_TRIM_THRESHOLD])


class _Fake:
    """A stand-in for ctypes' mallopt: records the parameters, takes every one."""

    def __init__(self, calls: list[int]) -> None:
        self.calls = calls

    def __call__(self, param: int, value: int) -> int:
        self.calls.append(param)
        return 1


def test_only_the_commands_process_sets_the_allocator(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    monkeypatch.setattr(allocator, "keep_freed_memory", lambda: calls.append(1) or True)
    with pytest.raises(SystemExit):
        data_main.main(["preprocess", "--help"])  # (in-process, as a notebook or a test calls it)
    assert calls == []
    monkeypatch.setattr(sys, "argv", ["dlrm-data", "preprocess", "--help"])
    with pytest.raises(SystemExit):
        data_main.entry()
    assert calls == [1]
