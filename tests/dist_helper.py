"""The one way tests run code on several CPU ranks over gloo.

``run_ranks(fn, world_size, *args)`` spawns one process per rank with torchrun's
environment variables, waits at most ``timeout`` seconds, kills every rank on a timeout,
and raises with the failing rank's traceback if any rank exits non-zero. ``fn`` must be
importable (a module-level function) and is called as ``fn(*args)`` in each rank.
``one_rank_here()`` lets this process itself be a world of one for a while (no process start:
torch and TorchRec are already loaded here), its rendezvous variables restored after.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import socket
import time
import traceback
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any, Callable, Iterator

_RANK_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK",
                   "TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def one_rank_here() -> Iterator[None]:
    """This process as rank 0 of a world of one: no rank variables, a free rendezvous port
    (init_distributed would otherwise leave its own MASTER_ADDR/PORT behind for later tests)."""
    names = (*_RANK_VARIABLES, "MASTER_ADDR", "MASTER_PORT")
    saved = {name: os.environ.pop(name) for name in names if name in os.environ}
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())})
    try:
        yield
    finally:
        for name in names:
            os.environ.pop(name, None)
        os.environ.update(saved)


def _rank_main(fn: Callable[..., Any], rank: int, world_size: int, port: int, err_dir: str, args: tuple) -> None:
    os.environ.update({
        "RANK": str(rank),
        "WORLD_SIZE": str(world_size),
        "LOCAL_RANK": str(rank),
        "LOCAL_WORLD_SIZE": str(world_size),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
        "OMP_NUM_THREADS": "1",
    })
    try:
        from dlrm_dist.logs import quiet_libraries

        quiet_libraries()
        fn(*args)
    except BaseException:  # noqa: BLE001 - report everything, DCP errors included
        Path(err_dir, f"rank{rank}.txt").write_text(traceback.format_exc())
        os._exit(1)
    os._exit(0)


def run_ranks(fn: Callable[..., Any], world_size: int, *args: Any, timeout: float = 300.0) -> None:
    """Runs ``fn(*args)`` on ``world_size`` spawned ranks; raises unless all exit 0 in time."""
    ctx = mp.get_context("spawn")
    port = free_port()
    with TemporaryDirectory() as err_dir:
        procs = [
            ctx.Process(target=_rank_main, args=(fn, r, world_size, port, err_dir, args), daemon=True)
            for r in range(world_size)
        ]
        for p in procs:
            p.start()
        deadline = time.monotonic() + timeout
        for p in procs:
            p.join(max(0.0, deadline - time.monotonic()))
        hung = [r for r, p in enumerate(procs) if p.is_alive()]
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
        errors = {r: Path(err_dir, f"rank{r}.txt") for r in range(world_size)}
        report = "\n".join(f"--- rank {r} ---\n{f.read_text()}" for r, f in errors.items() if f.exists())
        if hung:
            raise TimeoutError(f"ranks {hung} still running after {timeout:.0f}s (killed)\n{report}")
        codes = [p.exitcode for p in procs]
        if any(codes):
            raise AssertionError(f"rank exit codes {codes}\n{report}")
