"""What a user watches: the console (rank 0 only), metrics.jsonl, TensorBoard events, dlrm-report;
and one writer per run directory and checkpoint directory."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dlrm_dist.metrics.eval import METRIC_NAMES
from dlrm_dist.metrics.log import read_metrics
from dlrm_dist.planning import planfile
from tests.dist_helper import run_ranks
from tests.small_job import SMALL_JOB

pytestmark = pytest.mark.multiprocess
ROOT = Path(__file__).resolve().parents[2]
JOB = SMALL_JOB + ["--train.steps=40", "--train.eval_interval=20", "--train.log_interval=10", "--synthetic.eval_batches=4"]


ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _run(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout)


def _start(*args: str, log: Path | None = None) -> subprocess.Popen:
    """A process in its own session (so its ranks can be stopped together); output to ``log`` or pipes."""
    out = log.open("w") if log else subprocess.PIPE
    return subprocess.Popen([sys.executable, *args], cwd=ROOT, env=ENV, stdout=out, stderr=subprocess.STDOUT if log
                            else subprocess.PIPE, text=True, start_new_session=True)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("observe")
    two = _run("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "dlrm_dist.train", *JOB,
               f"--run-dir={tmp / 'two'}")
    assert two.returncode == 0, two.stderr[-3000:]
    one = _run("-m", "dlrm_dist.train", *JOB, "--optim.dense_lr=0.02", "--train.tensorboard=false",
               f"--run-dir={tmp / 'one'}")
    assert one.returncode == 0, one.stderr[-3000:]
    return {"tmp": tmp, "two": tmp / "two", "one": tmp / "one", "stdout": two.stdout}


def test_console_is_rank_zero_only_and_shows_every_metric(runs) -> None:
    out = runs["stdout"]
    assert out.count("eval @ step 20:") == 1 and out.count("eval @ step 40:") == 1, out
    assert out.count("dlrm_dist: 2 rank(s)") == 1
    line = out.split("eval @ step 40:")[1].splitlines()[0]
    assert all(f" {name} " in line for name in METRIC_NAMES), line
    assert "calibration" in out and "NE" in out  # the final report


def test_metrics_file_has_every_metric_and_per_rank_step_times(runs) -> None:
    records = read_metrics(runs["two"] / "metrics.jsonl")
    evals = [r for r in records if r["kind"] == "eval"]
    train = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in evals] == [20, 40]
    assert all(set(METRIC_NAMES) <= set(r) and r["samples"] == 4 * 64 and r["auc_exact"] for r in evals)
    assert [r["step"] for r in train] == [10, 20, 30, 40]
    assert all(len(r["rank_step_ms"]) == 2 and min(r["rank_step_ms"]) > 0 for r in train)
    assert all(r["dense_lr"] == pytest.approx(0.005) and r["embedding_lr"] == pytest.approx(0.05) for r in train)


def test_tensorboard_events_hold_the_same_scalars(runs) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(runs["two"] / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    want = {"train/loss", "train/samples_per_s", "train/dense_lr", "train/embedding_lr", "train/rank_step_ms/rank0",
            "train/rank_step_ms/rank1"} | {f"eval/{m}" for m in METRIC_NAMES}
    assert want <= tags, want - tags
    records = read_metrics(runs["two"] / "metrics.jsonl")
    logged = {r["step"]: r["loss"] for r in records if r["kind"] == "train"}
    events = {e.step: e.value for e in acc.Scalars("train/loss")}
    assert events.keys() == logged.keys()
    assert all(events[s] == pytest.approx(logged[s], rel=1e-6) for s in logged)
    assert not (runs["one"] / "tensorboard").exists()  # --train.tensorboard=false


def test_the_run_directory_holds_its_plan(runs) -> None:
    pf = planfile.read(runs["two"] / "plan.json")
    assert pf.inputs.topology.world_size == 2 and len(pf.estimates.per_rank) == 2


def _report(capsys, *args: str) -> subprocess.CompletedProcess:
    """dlrm-report in this process (a CLI started in a new process costs a torch import)."""
    from dlrm_dist.cli.report_main import main as report

    code = report(list(args))
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(["dlrm-report", *args], code, out, err)


def test_report_overlays_runs_as_png_and_html(runs, capsys) -> None:
    from PIL import Image

    png, page = runs["tmp"] / "r.png", runs["tmp"] / "r.html"
    proc = _report(capsys, str(runs["two"]), str(runs["one"]), "--name", "2 ranks", "--name", "1 rank",
                   "--out", str(png), "--json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert [r["run"] for r in rows] == ["2 ranks", "1 rank"] and all(r["step"] == 40 for r in rows)
    summary = json.loads((runs["two"] / "summary.json").read_text())
    assert rows[0]["auc"] == pytest.approx(summary["eval_auc"])
    assert rows[0]["plan_estimate_ms"] > 0 and rows[0]["max_rank_step_ms"] > 0
    assert rows[0]["notes"] == [] and rows[0]["diverged"] is None  # a clean run: nothing skipped
    with Image.open(png) as im:
        assert im.size == (1600, 900)
        colours = len(set(im.convert("RGB").resize((200, 112)).get_flattened_data()))
        assert colours > 50  # curves, not a blank canvas
    proc = _report(capsys, str(runs["two"]), "--out", str(page))
    assert proc.returncode == 0, proc.stderr
    text = page.read_text()
    assert "data:image/png;base64," in text and "<table>" in text and f"{summary['eval_auc']:.4f}" in text


def test_report_refuses_what_is_not_a_run(tmp_path, capsys) -> None:
    proc = _report(capsys, str(tmp_path), "--out", str(tmp_path / "r.png"))
    assert proc.returncode == 2 and "has no metrics.jsonl" in proc.stderr
    (tmp_path / "metrics.jsonl").write_text("{}\n")
    proc = _report(capsys, str(tmp_path), "--out", str(tmp_path / "r.svg"))
    assert proc.returncode == 2 and ".html or .png" in proc.stderr


def _wait_for(done, holder: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not done() and holder.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert done(), log.read_text()[-3000:]


def _locked_by(directory: Path) -> bool:
    try:
        return bool(json.loads((directory / ".dlrm_dist.lock").read_text() or "{}"))
    except (OSError, ValueError):
        return False


def refused_on_every_rank(args: list[str], expected: str) -> None:
    """One rank of a refused training: dlrm-train exits 2 with ``expected`` as its one error line."""
    import contextlib
    import io

    from dlrm_dist.train import main as train

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = train(args)
    lines = [line for line in err.getvalue().splitlines() if line.startswith("dlrm-train: error:")]
    assert code == 2 and len(lines) == 1 and expected in lines[0], (code, err.getvalue()[-3000:])


def test_a_second_writer_of_a_run_or_checkpoint_dir_is_refused_and_the_first_is_intact(tmp_path, capsys) -> None:
    """While a run trains, a run on its run dir (1 rank, in this process) and a 2-rank run on its
    checkpoint dir (another run dir; spawned ranks, no torchrun agent to stop rank 1 for it) both
    stop with exit 2 naming the holder (pid, host), each rank of the 2-rank one by itself, in
    seconds rather than a rendezvous timeout; the first run's files stay its own."""
    from dlrm_dist.train import main as train

    first, ckpt, other, log = tmp_path / "first", tmp_path / "ckpt", tmp_path / "other", tmp_path / "first.log"
    holder = _start("-m", "dlrm_dist.train", *SMALL_JOB, "--train.steps=100000", "--train.eval_interval=0",
                    "--train.log_interval=10", f"--run-dir={first}", f"--checkpoint-dir={ckpt}",
                    "--train.checkpoint_interval=100000", log=log)
    try:
        _wait_for(lambda: _locked_by(first) and _locked_by(ckpt), holder, log)
        busy = f"is in use by pid {holder.pid} on host {socket.gethostname()}"
        # a hang (rank 1 waiting for a rank 0 that left) fails run_ranks' timeout, not 600 s later
        run_ranks(refused_on_every_rank, 2, [*SMALL_JOB, "--train.steps=5", f"--run-dir={other}",
                                             f"--checkpoint-dir={ckpt}"],
                  f"dlrm-train: error: {ckpt} {busy} (dlrm-train train.checkpoint_dir)", timeout=120)
        same_run = train([*SMALL_JOB, "--train.steps=5", f"--run-dir={first}"])
        err_run = capsys.readouterr().err
        _wait_for(lambda: any(r["kind"] == "train" for r in read_metrics(first / "metrics.jsonl"))
                  if (first / "metrics.jsonl").exists() else False, holder, log)
        assert holder.poll() is None, "the first run must still be training"
        records = read_metrics(first / "metrics.jsonl")
        config = json.loads((first / "config.json").read_text())
    finally:
        os.killpg(holder.pid, signal.SIGTERM)
        holder.communicate(timeout=60)
    assert same_run == 2, err_run[-3000:]
    assert f"dlrm-train: error: {first} {busy} (dlrm-train train.run_dir)" in err_run, err_run[-3000:]
    steps = [r["step"] for r in records if r["kind"] == "train"]
    assert steps and steps == sorted(set(steps)), steps  # one writer: no interleaved duplicate steps
    assert config["train"]["run_dir"] == str(first) and config["train"]["steps"] == 100000
    assert not any((other / name).exists() for name in ("metrics.jsonl", "config.json", "plan.json"))
    assert not [p for p in ckpt.iterdir() if p.name.startswith("step_")]  # nothing published by the second
