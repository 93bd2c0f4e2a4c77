"""`make install` keeps one torch/fbgemm flavour per venv (issue 24 item 2), checked with
``make -n`` (what make would run) against fake venv directories: nothing is installed."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def _plan(venv: Path, *args: str) -> str:
    out = subprocess.run(["make", "-n", *args, f"VENV={venv}"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def _venv(tmp_path: Path, device: str | None = None, stamps: tuple[str, ...] = ()) -> Path:
    venv = tmp_path / "venv"
    venv.mkdir()
    if device:
        (venv / ".device").write_text(device + "\n")
    for s in stamps:
        (venv / f".installed-{s}").touch()
    return venv


def test_make_test_keeps_the_recorded_cuda_flavour(tmp_path: Path) -> None:
    venv = _venv(tmp_path, "cuda")
    plan = _plan(venv, "test")  # the stamp of the recorded flavour is missing: it reinstalls cuda, not cpu
    assert '-e ".[cuda,dev,cluster]"' in plan and "pip uninstall --quiet -y fbgemm-gpu-cpu" in plan
    assert "--device cuda" in plan and "echo cuda >" in plan
    (venv / ".installed-cuda").touch()
    assert "pip install" not in _plan(venv, "test")  # installed and recorded: nothing to do


def test_a_venv_from_before_the_record_keeps_its_stamped_flavour(tmp_path: Path) -> None:
    plan = _plan(_venv(tmp_path, None, ("cuda",)), "test")
    assert "pip install" not in plan  # the old Makefile installed fbgemm-gpu-cpu over it here


def test_switching_removes_the_other_flavour_and_a_torch_of_the_other_build(tmp_path: Path) -> None:
    venv = _venv(tmp_path, "cpu", ("cpu",))
    plan = _plan(venv, "install", "DEVICE=cuda")
    assert "pip uninstall --quiet -y fbgemm-gpu-cpu" in plan and f"rm -f {venv}/.installed-cpu" in plan
    assert "sys.exit(torch.version.cuda is None)" in plan and "pip uninstall --quiet -y torch" in plan
    back = _plan(venv, "install", "DEVICE=cpu")
    assert "pip install" not in back  # cpu is installed and recorded


def test_cpu_asks_pips_own_indexes_unless_given_the_dockerfiles_cpu_index(tmp_path: Path) -> None:
    """make contacts no host beyond pip's configured indexes by default; the image passes PyTorch's CPU index."""
    plan = _plan(_venv(tmp_path), "install", "DEVICE=cpu")
    assert "--extra-index-url" not in plan and re.search(r'--no-deps +"torch==', plan)
    assert "sys.exit(torch.version.cuda is not None)" in plan and "pip uninstall --quiet -y fbgemm-gpu\n" in plan
    dockerfile = (ROOT / "Dockerfile").read_text()
    index = re.search(r"^ARG TORCH_CPU_INDEX=(\S+)$", dockerfile, re.M).group(1)
    assert "TORCH_CPU_INDEX=${TORCH_CPU_INDEX}" in dockerfile  # the image build passes it to make
    given = _plan(tmp_path / "fresh", "install", "DEVICE=cpu", f"TORCH_CPU_INDEX={index}")
    assert f'--no-deps --extra-index-url {index} "torch==' in given


def test_an_unknown_device_is_refused(tmp_path: Path) -> None:
    out = subprocess.run(["make", "-n", "install", "DEVICE=gpu", f"VENV={tmp_path}"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "DEVICE=gpu: choose cpu" in out.stderr
