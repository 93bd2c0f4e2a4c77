"""The package's error hierarchy and the one place where errors become exit codes.

Every error dlrm_dist raises on purpose derives from ``DlrmError``; its message is written
for the user (what was wrong, where, what to do). Each family says which exit code a CLI
returns for it, from the constants below; ``run_cli`` prints and maps, for every CLI.

    DlrmError
    ├── ConfigError          (config/)      bad configuration: exit 2
    │   └── SchemaError      (features/)    a feature schema
    ├── PlanError            (planning/)    a plan or its inputs: exit 2
    ├── DataError            (data/)        input data, preprocessing, fetching: exit 2
    ├── CheckpointError      (checkpoint/)  a checkpoint missing or damaged: exit 4
    ├── ExportError          (serving/)     an exported model missing, damaged or foreign: exit 4
    ├── RunDirError          (metrics/)     a run directory for dlrm-report: exit 2
    └── DivergedError        (training/)    the loss became NaN or infinite: exit 3
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import re
import signal
import sys
import threading
from typing import Callable, Iterator

EXIT_BAD_INPUT = 2  # the user's input (config, schema, plan, data, paths) is wrong
EXIT_DIVERGED = 3  # training stopped: the loss became NaN/inf
EXIT_BAD_STATE = 4  # stored state (checkpoint, export) is missing, damaged or foreign
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: the reader of our stdout went away (`dlrm-data stats DIR | head`)


class DlrmError(Exception):
    """Base of the package's errors; ``exit_code`` is what a CLI returns for it."""

    exit_code = EXIT_BAD_INPUT


def refusal_text(error: BaseException) -> str:
    """A restricted unpickler's refusal in one line, without torch's advice to retry with
    ``weights_only=False`` (on a crafted file that advice would run its code)."""
    text = str(error)
    if isinstance(error, pickle.UnpicklingError) or "Weights only load failed" in text:
        found = re.search(r"WeightsUnpickler error:\s*([^\n]+)", text)
        return f"a pickle the restricted (weights_only) unpickler refuses{': ' + found.group(1) if found else ''}"
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"


class Interrupted(KeyboardInterrupt):
    """A stop signal other than Ctrl-C's (``interrupt_on_sigterm``), unwinding as Ctrl-C does."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def interrupt_on_sigterm() -> Iterator[None]:
    """SIGTERM (``timeout``, ``kill``, Kubernetes, Slurm, torchx stopping a job) stops the body as
    Ctrl-C does, so that what it cleans up on an interrupt (partial files, shared-memory blocks) is
    cleaned up, where Python's default dies at once; the previous handler is restored after. Main
    thread only (as every handler)."""
    def stop(signum: int, _frame: object) -> None:
        raise Interrupted(signum)

    if threading.current_thread() is not threading.main_thread():  # (a handler is the main thread's to set)
        yield
        return
    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_cli(prog: str, body: Callable[[], int]) -> int:
    """Runs a CLI's ``body``; a DlrmError becomes ``prog: error: message`` on stderr and its exit code;
    an interrupt (Ctrl-C, or SIGTERM under ``interrupt_on_sigterm``), one line and 128 + the signal."""
    try:
        return int(body() or 0)
    except DlrmError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt as stop:  # (what the body cleans up on the way out has been cleaned up)
        signum = stop.signum if isinstance(stop, Interrupted) else signal.SIGINT
        print(f"{prog}: interrupted ({signal.Signals(signum).name})", file=sys.stderr)
        _STOPPED_BY[:] = [signum]
        return 128 + signum
    except BrokenPipeError:
        # `dlrm-data stats DIR | head`: the reader left. Python's own advice: point stdout at devnull so the
        # interpreter's final flush does not raise again, and exit like a process killed by SIGPIPE.
        _silence_stdout()
        return EXIT_BROKEN_PIPE


_STOPPED_BY: list[int] = []  # the signal that stopped run_cli's body, if one did


def end_as_stopped() -> None:
    """A command's process, once ``run_cli`` has returned, ends by the signal that stopped it, if one
    did (a shell then stops the script or loop it runs, as for a process Ctrl-C killed, where an exit
    code of 130 would let it go on). For a console script's entry point, never inside a library call."""
    if _STOPPED_BY:
        sys.stdout.flush()
        sys.stderr.flush()
        signal.signal(_STOPPED_BY[0], signal.SIG_DFL)
        os.kill(os.getpid(), _STOPPED_BY[0])


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, io.UnsupportedOperation):  # stdout replaced by an object without a descriptor
        pass
