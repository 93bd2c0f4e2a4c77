"""The README's own-data walk-through, run exactly as written: raw CSV -> preprocess -> train with
early stopping on 2 ranks -> export (best) -> score raw rows -> serve.

The commands are read from the README block marked ``<!-- walkthrough: ... -->`` (so the README
cannot drift from what is tested) and run one by one in a scratch directory, through a shell-free
argv (shlex), with the virtualenv's bin first on PATH. The only change: the server's port 8080
becomes a free port. A command ending in ``&`` (the server) runs in the background until the end.
After the run, each step's output is checked, not only its exit code.
"""

from __future__ import annotations

import csv
import json
import os
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dlrm_dist.cli.predict_main import main as predict_main
from tests.cli_helper import ok_here, readme_block_commands

pytestmark = pytest.mark.multiprocess
ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
MARK = "<!-- walkthrough: tests/multiprocess/test_walkthrough.py"


def walkthrough_commands(readme: str) -> list[list[str]]:
    return readme_block_commands(readme, MARK)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(port: int, server: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert server.poll() is None, f"dlrm-serve exited with {server.returncode}"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"dlrm-serve did not listen on port {port} within {timeout} s")


def test_the_readme_walkthrough_runs_as_written(tmp_path: Path) -> None:
    commands = walkthrough_commands((ROOT / "README.md").read_text())
    assert [c[0] for c in commands] == ["python", "dlrm-data", "dlrm-data", "torchrun", "dlrm-export",
                                        "dlrm-predict", "dlrm-serve", "curl"]
    (tmp_path / "examples").symlink_to(ROOT / "examples")  # the README runs from the repository root
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": str(tmp_path)}
    outputs: dict[str, str] = {}
    server = None
    try:
        for argv in commands:
            argv = [a.replace("8080", str(port)) for a in argv]
            if argv[-1] == "&":
                server = subprocess.Popen(argv[:-1], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.PIPE, text=True)
                _wait_healthy(port, server)
                continue
            proc = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
            assert proc.returncode == 0, f"{shlex.join(argv)}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
            outputs[argv[0] if argv[0] != "dlrm-data" else f"dlrm-data {argv[1]}"] = proc.stdout
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)

    assert "rows read 30,000" in outputs["dlrm-data preprocess"] and "skipped 0" in outputs["dlrm-data preprocess"]
    # train: early stopping was on by default, the best step is named and its checkpoint kept
    summary = json.loads((tmp_path / "runs/clicks/summary.json").read_text())
    best = summary["best"]
    assert best is not None and best["checkpoint_kept"] and best["auc"] > 0.7, summary
    assert summary["test"]["auc"] > 0.7, summary
    # export: that best checkpoint
    manifest = json.loads((tmp_path / "clicks_export/export.json").read_text())
    assert manifest["step"] == best["step"], (manifest["step"], best)
    config = json.loads((tmp_path / "runs/clicks/config.json").read_text())
    assert config["features"]["name"] == "clicks" and dict(config["features"]["vocab_rows"])["t_tags"] == 13
    # the export scores the preprocessed test split as training's end-of-run test evaluation did
    report = json.loads(ok_here(predict_main, str(tmp_path / "clicks_export"), "--data", str(tmp_path / "clicks_data"),
                                "--split", "test", "--out", str(tmp_path / "test.npy"), "--no-progress", "--json"))
    assert report["metrics"]["auc"] == pytest.approx(summary["test"]["auc"], abs=1e-6), (report, summary["test"])
    # predict: one score per raw row, in order, the kept column passed through
    with open(tmp_path / "clicks.csv") as f:
        raw = list(csv.DictReader(f))
    with open(tmp_path / "scores.csv") as f:
        scored = list(csv.DictReader(f))
    assert len(scored) == len(raw) == 30_000
    assert [r["user_id"] for r in scored] == [r["user_id"] for r in raw]
    assert all(0.0 < float(r["score"]) < 1.0 for r in scored)
    # serve: the curl request got one score
    answer = json.loads(outputs["curl"])
    assert len(answer["scores"]) == 1 and 0.0 < answer["scores"][0] < 1.0, answer
