"""Compiles the criteo_tsv reader's kernels (tsv_rows.py) ahead of time into an extension module.

Loading a numba-cached function costs every process about 0.6 s of numba's own set-up (its
typing and lowering registries) before the first call: a third of a Criteo command's start-up.
The same functions compiled here by ``numba.pycc`` load in milliseconds and run at the JIT's
speed (their outputs are compared in tests/data/test_build_kernels.py).

``make install`` (and so ``make test``, ``make demo`` and the Dockerfile) runs
``python -m dlrm_dist.data.columnar.build_kernels --if-missing``. The module is written next to
tsv_kernel.py under the name ``tsv_kernel.compiled_name()`` gives: a digest of the three sources
(tsv_rows.py, tsv_kernel.py, this file), the constants compiled in, numba's and numpy's versions and the CPU it was compiled for. tsv_kernel.py
imports only the build of its own source on this kind of CPU; any other (an edited kernel, another
numba, an image built on another machine) is never loaded, and the JIT compiles the same functions
instead: slower to start, never stale. A build is installed only after a new process has run it
on Criteo lines and got the JIT's results (an instruction the CPU lacks fails there, not in a job).
Without C and C++ compilers (or pycc) the build says so and exits 0: the JIT serves, and the next
``make`` tries again.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import sysconfig
import tempfile
import time
import warnings
from pathlib import Path
from typing import Optional

from dlrm_dist.data.columnar import tsv_kernel as k

try:  # what a compiler or linker that fails to run raises (distutils' errors); anything else is a bug
    from setuptools._distutils.errors import CCompilerError, DistutilsError
    _LINK_ERRORS: tuple[type[BaseException], ...] = (OSError, CCompilerError, DistutilsError)
except ImportError:  # (no setuptools: _compiler says so first)
    _LINK_ERRORS = (OSError,)


def signature(kernel: str) -> str:
    """The exported signature of ``kernel``, from tsv_kernel.ARGS (C-contiguous arrays)."""
    arrays = [f"{code}[{', '.join([':'] * (ndim - 1) + ['::1'])}]" for code, ndim in k.ARGS[kernel]]
    return f"{k.RESULTS[kernel]}({', '.join(arrays)})"


# A new process runs the candidate build's three kernels on Criteo lines (good, bad, CRLF; the fused
# encode by the built-in schema) and compares them with the JIT's.
_SMOKE = r"""
import importlib.util, sys
import numpy as np
from dlrm_dist.data.columnar import criteo_fused, criteo_tsv, tsv_kernel as k
from dlrm_dist.features.builtin import criteo_schema
spec = importlib.util.spec_from_file_location(sys.argv[1], sys.argv[2])
built = importlib.util.module_from_spec(spec); spec.loader.exec_module(built)
line = "1\t" + "\t".join(str(i * 7) for i in range(13)) + "\t" + "\t".join(f"{i * 2654435761 % 2**32:08x}" for i in range(26))
data = "\n".join([line, line.replace("\t7\t", "\t\t", 1), "2" + line[1:], line[:50], line + "\r", line]).encode()
buf = k.padded(data)
schema = criteo_schema(days=2).with_fitted({}, {})
fused = criteo_fused.fused_plan(schema, criteo_tsv._positions(schema))
def run(kernels):
    k._KERNELS = kernels
    found, arrays = criteo_fused.encode_fused(buf, fused)
    lines, flat = criteo_fused.fused_encoded(fused, found.rows, arrays)
    return (k.count_newlines(buf), repr(k.parse_chunk(buf)), found.rows, found.bad, lines.tobytes(),
            [None if a is None else a.tobytes() for a in flat])
sys.exit(0 if run(built) == run(k._Jit) else 3)
"""


def _smoke(name: str, path: Path) -> None:
    done = subprocess.run([sys.executable, "-c", _SMOKE, name, str(path)], capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"the new build failed its check (exit {done.returncode}: "
                           f"{done.stderr.strip()[-300:] or 'results differ from the JIT'}); not installed")


class NoToolchain(Exception):
    """This machine cannot compile the kernels: no pycc (or setuptools), no C compiler or linker."""


def _compiler(name: str):
    """numba.pycc's CC for module ``name``; NoToolchain where there is none."""
    try:
        with warnings.catch_warnings():  # pycc is "pending deprecation", its replacement not yet released
            warnings.simplefilter("ignore")
            from numba.pycc import CC  # noqa: PLC0415 - here, so that a numba without pycc is a said failure
        return CC(name)
    except (ImportError, RuntimeError) as e:  # (CC() raises RuntimeError when it finds no compiler)
        raise NoToolchain(f"{type(e).__name__}: {str(e).splitlines()[0].removesuffix(' If using conda try:')}; "
                          "it needs a C and a C++ compiler ($CC, $CXX; gcc and g++ by default)") from e


def build(directory: Optional[Path] = None) -> Path:
    """Compiles, checks and installs the kernels in ``directory`` (tsv_kernel.py's own by default),
    removing that directory's builds of other sources for this Python; returns the module's path."""
    out = Path(directory or Path(k.__file__).parent)
    name = k.compiled_name()
    cc = _compiler(name)
    cc.target_cpu = "host"  # (the name says which CPU: another one never loads it)
    cc.use_nrt = False  # nothing allocates in the kernels: no reference counts to keep (tsv_rows._ROW_CODE)
    cc.verbose = False
    for kernel in k.ARGS:  # (the JIT's dispatchers: their Python functions are what pycc compiles)
        cc.export(kernel, signature(kernel))(getattr(k._Jit, kernel).py_func)
    with tempfile.TemporaryDirectory(dir=out, prefix=".build-") as scratch:
        cc.output_dir = scratch  # linked and checked there, then renamed: no process imports half a file
        try:
            cc.compile()
        except _LINK_ERRORS as e:
            raise NoToolchain(f"{type(e).__name__}: {e}") from e
        _smoke(name, Path(scratch) / cc.output_file)
        built = out / cc.output_file
        os.replace(Path(scratch) / cc.output_file, built)
    suffix = sysconfig.get_config_var("EXT_SUFFIX")  # (another Python's or venv's builds are theirs)
    for old in out.glob(k.COMPILED_PREFIX + "*" + suffix):
        if old.name != built.name:
            old.unlink()
    return built


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dlrm_dist.data.columnar.build_kernels", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="directory to write the module to (default: the package's)")
    parser.add_argument("--if-missing", action="store_true",
                        help="build only where no build of these sources for this CPU is loaded (make's step)")
    args = parser.parse_args(argv)
    if args.if_missing and k.COMPILED and args.out is None:
        return 0
    started = time.perf_counter()
    try:
        path = build(args.out)
    except NoToolchain as e:
        print(f"criteo_tsv kernels not compiled ahead of time ({e}); numba's JIT "
              "compiles them on first use instead (about 0.6 s more start-up per command)", file=sys.stderr)
        return 0
    print(f"compiled the criteo_tsv kernels ahead of time in {time.perf_counter() - started:.1f} s: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
