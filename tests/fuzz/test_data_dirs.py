"""Fuzzing one preprocessing --out with interleaved runs: complete, killed, failed, rerun, concurrent.

Each example is a short sequence of actions on one directory, with two jobs A and B (the same
tiny CSV, schemas that differ in one feature's buckets):

    run J        preprocess job J
    stop J p c   job J, stopped at its p-th write event (a .npy write or close, an atomic record
                 write, a split's publishing rename) by an injected exception; ``c`` false is a
                 kill (nothing more happens on disk after the stop point), true a failure (the
                 run's own clean-up runs)
    overwrite J  job J with --overwrite
    busy J       job J while another writer holds the directory's lock

The property, after every action: the run succeeded and the directory equals a clean run's
arrays, or it was refused with a named DlrmError and the directory is unchanged (a completed
directory is never changed by a refused run); nothing outside --out is ever written; and a
final run of either job completes from whatever state the sequence left, or is refused by name.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Optional

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dlrm_dist import fileio
from dlrm_dist.data.columnar import layout
from dlrm_dist.data.columnar import preprocess as columnar
from dlrm_dist.data.jobrecord import is_complete, read_job
from dlrm_dist.data.npy import NpyWriter
from dlrm_dist.errors import DlrmError
from dlrm_dist.features.schema import from_dict
from dlrm_dist.fileio import DirectoryBusyError, DirLock
from tests.data import jobs

JOB = st.sampled_from("AB")
ACTION = st.one_of(
    st.tuples(st.just("run"), JOB),
    st.tuples(st.just("stop"), JOB, st.integers(0, 80), st.booleans()),
    st.tuples(st.just("overwrite"), JOB),
    st.tuples(st.just("busy"), JOB),
)


class _Stopped(BaseException):
    """The injected stop: a BaseException, as a signal's KeyboardInterrupt is, so no handler eats it."""


class _Stopper:
    """Counts write events; raises at event ``at``; after it, a kill does nothing more on disk."""

    def __init__(self, at: int, cleans_up: bool) -> None:
        self.at, self.cleans_up, self.events, self.stopped = at, cleans_up, 0, False

    def event(self) -> None:
        if self.events == self.at:
            self.stopped = True
            raise _Stopped
        self.events += 1

    def install(self, m: pytest.MonkeyPatch) -> None:
        def counted(fn):
            def wrapper(*args, **kwargs):
                self.event()
                return fn(*args, **kwargs)
            return wrapper

        def unless_killed(fn):
            def wrapper(*args, **kwargs):
                if self.stopped and not self.cleans_up:
                    return None
                return fn(*args, **kwargs)
            return wrapper

        def record_write(fn):
            def wrapper(path, data):
                try:
                    self.event()
                except _Stopped:
                    if not self.cleans_up:  # killed mid-write: the temporary stays, half written
                        (Path(path).parent / f".{Path(path).name}.killed.tmp").write_bytes(data[: len(data) // 2])
                    raise
                return fn(path, data)
            return wrapper

        m.setattr(NpyWriter, "_write", counted(NpyWriter._write))
        m.setattr(NpyWriter, "close", counted(NpyWriter.close))
        m.setattr(fileio, "atomic_write_bytes", record_write(fileio.atomic_write_bytes))
        m.setattr(Path, "rename", counted(Path.rename))
        m.setattr(NpyWriter, "abort", unless_killed(NpyWriter.abort))
        m.setattr(layout, "remove_partials", unless_killed(layout.remove_partials))


@pytest.fixture(scope="module")
def refs(tmp_path_factory) -> dict[str, dict[str, Any]]:
    """Each job's arrays from a clean run into an empty directory."""
    tmp = tmp_path_factory.mktemp("refs")
    data = jobs.write_csv(tmp)
    for job in jobs.JOBS:
        jobs.run([data], tmp / job, jobs.JOBS[job])
    return {job: jobs.arrays(tmp / job) for job in jobs.JOBS}


def _complete_job(out: Path) -> Optional[str]:
    """Which job's completed output the directory holds (by its record), or None."""
    job = read_job(out) if out.is_dir() else None
    if job is None or not is_complete(job, (out / "meta.json").is_file()):
        return None
    return next(name for name, schema in jobs.JOBS.items()
                if job["schema"] == from_dict(schema).without_fitted().to_dict())


def _act(action: tuple, data: Path, out: Path, expected: Optional[str], m: pytest.MonkeyPatch) -> Optional[str]:
    """Performs ``action``; checks its outcome against the directory's state; returns the new state."""
    kind, job = action[0], action[1]
    before = jobs.snapshot(out)
    refused_by = expected if kind in ("run", "stop") and expected not in (None, job) else None
    try:
        if kind == "busy":
            with DirLock(out, "the other writer"):
                with pytest.raises(DirectoryBusyError, match=r"in use by pid \d+ on host .* \(the other writer\)"):
                    jobs.run([data], out, jobs.JOBS[job])
            assert jobs.snapshot(out) == before
            return expected
        stopper = _Stopper(*action[2:]) if kind == "stop" else None
        with m.context() as patched:
            if stopper:
                stopper.install(patched)
            try:
                report = jobs.run([data], out, jobs.JOBS[job], overwrite=kind == "overwrite")
            except _Stopped:
                assert refused_by is None, "a run that must be refused got as far as writing"
                return _complete_job(out)  # complete only if it stopped after publishing meta.json
    except DlrmError as e:
        assert refused_by is not None, f"{kind} {job} over {expected}: unexpected {type(e).__name__}: {e}"
        assert "another job" in str(e) and "--overwrite" in str(e) and "\n" not in str(e)
        assert jobs.snapshot(out) == before  # a completed directory is never changed by a refused run
        return expected
    assert refused_by is None, f"{kind} {job} over {expected}'s completed output was not refused"
    assert report.up_to_date == (expected == job and kind != "overwrite")
    return job


@given(st.lists(ACTION, min_size=1, max_size=3), JOB)
def test_one_out_under_interleaved_runs(tmp_path: Path, refs, actions: list[tuple], final: str) -> None:
    root = Path(tempfile.mkdtemp(dir=tmp_path))
    data = jobs.write_csv(root)
    out = root / "out"
    outside = {k: v for k, v in jobs.snapshot(root).items() if not k.startswith("out")}
    state: Optional[str] = None
    with pytest.MonkeyPatch.context() as m:
        m.setattr(os, "fsync", lambda fd: None)  # durability is not under test here; ordering is
        for action in [*actions, ("run", final)]:
            state = _act(action, data, out, state, m)
            if state is not None:
                jobs.assert_same(jobs.arrays(out), refs[state])
            assert {k: v for k, v in jobs.snapshot(root).items() if not k.startswith("out")} == outside
            assert not [p for p in root.iterdir() if p.name not in ("out", "data.csv")]
    shutil.rmtree(root)
