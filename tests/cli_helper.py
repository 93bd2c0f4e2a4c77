"""Command lines run in the test process through their ``main(argv)``, as a user would type them.

A fresh Python costs a torch start (seconds on 2 cores, more under load); main(argv) is the
same parser, the same run_cli error handling and exit code. Only a test about the process
itself (its imports, its exit) needs a process of its own.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Callable, Sequence


def run_here(main: Callable[[Sequence[str]], int], *args: str) -> tuple[int, str, str]:
    """``main(args)`` with stdout and stderr captured: its exit code, stdout, stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


def ok_here(main: Callable[[Sequence[str]], int], *args: str) -> str:
    """``main(args)``, which must exit 0: its stdout (stderr in the failure message)."""
    code, out, err = run_here(main, *args)
    assert code == 0, f"{main.__module__} {' '.join(args)} exited {code}\n{out[-2000:]}\n{err[-3000:]}"
    return out


def export_and_predict_here(ckpt: Path, out: Path, data_dir: Path, split: str) -> dict:
    """``dlrm-export CKPT --out OUT`` then ``dlrm-predict OUT --data DATA --split SPLIT --json``: its report."""
    from dlrm_dist.cli.export_main import main as export_main
    from dlrm_dist.cli.predict_main import main as predict_main

    ok_here(export_main, str(ckpt), "--out", str(out), "--no-progress")
    return json.loads(ok_here(predict_main, str(out), "--data", str(data_dir), "--split", split,
                              "--out", str(out / "scores.npy"), "--no-progress", "--json"))


def readme_block_commands(readme: str, mark: str) -> list[list[str]]:
    """The bash block after ``mark`` in the README as argv lists (continuations joined, comments dropped):
    the walk-through tests run the README's commands as written."""
    import shlex

    block = readme.split(mark, 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    return [argv for argv in (shlex.split(line, comments=True) for line in block.replace("\\\n", " ").splitlines())
            if argv]

