"""errors.refusal_text: a restricted unpickler's refusal without torch's unsafe retry advice; run_cli's
exit codes for a broken pipe and an interrupt (Ctrl-C, or SIGTERM under interrupt_on_sigterm)."""

from __future__ import annotations

import io
import os
import pickle
import signal
import subprocess
import sys
import time

import pytest
import torch

from dlrm_dist.errors import interrupt_on_sigterm, refusal_text, run_cli


class _Payload:
    def __reduce__(self):
        return (os.system, ("true",))


@pytest.mark.parametrize("protocol", [2, 4])
def test_a_refused_pickle_is_named_without_the_advice_to_unpickle_it_anyway(protocol: int) -> None:
    with pytest.raises(pickle.UnpicklingError) as e:
        torch.load(io.BytesIO(pickle.dumps(_Payload(), protocol=protocol)), weights_only=True)
    assert "weights_only` set to `False`" in str(e.value)  # what torch says
    text = refusal_text(e.value)
    assert text.startswith("a pickle the restricted (weights_only) unpickler refuses")
    assert "False" not in text and "\n" not in text


def test_other_errors_keep_their_first_line() -> None:
    assert refusal_text(ValueError("bad\nmore")) == "ValueError: bad"


def test_a_reader_that_leaves_early_is_no_traceback() -> None:
    """`dlrm-data stats DIR | head`: the CLI exits 141 (SIGPIPE's) quietly, not with a BrokenPipeError."""
    import subprocess
    import sys

    script = ("import sys\nfrom dlrm_dist.errors import run_cli\n"
              "def body():\n    for i in range(200000):\n        print('row', i)\n    return 0\n"
              "sys.exit(run_cli('dlrm-x', body))\n")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout.readline() == b"row 0\n"
    proc.stdout.close()  # the reader goes away, like head after its lines
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 141
    assert b"Traceback" not in err and b"BrokenPipe" not in err, err.decode()


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_stop_signal_unwinds_the_body_and_is_one_line(signum: int, code: int, capsys) -> None:
    """SIGTERM (timeout, Kubernetes, Slurm) unwinds as Ctrl-C does, so the body's cleanup runs (a default
    SIGTERM ends the process at once: partial files and shared memory were left); the previous handler is back
    after; the CLI says it in one line and exits 128 + the signal, without a traceback."""
    cleaned = []

    def body() -> int:
        try:
            os.kill(os.getpid(), signum)
            time.sleep(10)  # (the handler raises here: without it the body would return 0)
            return 0
        finally:
            cleaned.append(True)

    before = signal.getsignal(signal.SIGTERM)
    with interrupt_on_sigterm():
        assert run_cli("dlrm-data preprocess", body) == code
    assert cleaned == [True] and signal.getsignal(signal.SIGTERM) is before
    err = capsys.readouterr().err
    assert err == f"dlrm-data preprocess: interrupted ({signal.Signals(signum).name})\n", err


def test_a_stopped_command_ends_by_its_signal_so_a_shell_loop_stops_too() -> None:
    """bash goes on with a script after a child that exited 130, and stops after one that died by SIGINT."""
    script = ("import signal, sys\nfrom dlrm_dist.errors import end_as_stopped, run_cli\n"
              "def body():\n    raise KeyboardInterrupt\n"
              "code = run_cli('dlrm-data preprocess', body)\nend_as_stopped()\nsys.exit(code)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert done.returncode == -signal.SIGINT, done
    assert done.stderr == b"dlrm-data preprocess: interrupted (SIGINT)\n", done.stderr
