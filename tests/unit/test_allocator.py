"""The preprocessing CLI's allocator settings (dlrm_dist/data/allocator.py), in a process of their own:
they change the whole process's allocator."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_glibc_takes_every_setting_and_the_process_still_allocates() -> None:
    code = ("from dlrm_dist.data.allocator import keep_freed_memory; import numpy as np; ok = keep_freed_memory(); "
            "a = [np.ones(1 << 22) for _ in range(8)]; del a; b = np.ones(1 << 24); print(ok, int(b.sum()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.split() == ["True", str(1 << 24)]
