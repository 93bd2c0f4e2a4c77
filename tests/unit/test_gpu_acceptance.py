"""benchmarks/gpu_acceptance.py in its CPU mode: every GPU check skipped with the reason,
a JSON summary, exit 0 (exit 1 with --require-gpu), so CI keeps the script from rotting."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import gpu_acceptance as acceptance


def test_cpu_mode_skips_every_gpu_check_with_the_reason(tmp_path: Path, capsys) -> None:
    assert acceptance.main(["--out", str(tmp_path / "a.json")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("gpu_acceptance: 0 usable GPU(s); skipping every GPU check: ")
    checks = lines[1:-1]
    assert [c.split()[1].rstrip(":") for c in checks] == acceptance.CHECKS
    assert all(c.startswith("SKIP ") and "no usable GPU here (" in c and "CPU build" in c for c in checks), checks
    summary = json.loads(lines[-1])
    assert summary == json.loads((tmp_path / "a.json").read_text())
    assert summary["gpus"] == 0 and summary["passed"] and [c["status"] for c in summary["checks"]] == ["SKIP"] * 8


def test_require_gpu_turns_the_skip_into_a_failure(capsys) -> None:
    assert acceptance.main(["--require-gpu", "--only", "stack"]) == 1
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["failed"] == ["no_gpu"]
    with pytest.raises(SystemExit):
        acceptance.main(["--only", "stack,warp_drive"])


def test_loss_comparison_names_the_difference() -> None:
    a, b = {1: 0.7, 2: 0.69}, {1: 0.70001, 2: 0.69}
    assert acceptance.close_losses(a, b, [1, 2], 1e-4) < 1e-4
    with pytest.raises(acceptance.CheckFailed, match="differ by 1.4.e-03 relative"):
        acceptance.close_losses({1: 0.701, 2: 0.69}, b, [1, 2], 1e-4)
    with pytest.raises(acceptance.CheckFailed, match=r"steps \[3\] missing"):
        acceptance.close_losses(a, b, [1, 2, 3], 1e-4)
