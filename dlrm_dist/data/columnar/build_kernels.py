"""Compiles the criteo_tsv reader's kernels (tsv_kernel.py) ahead of time into an extension module.

Loading a numba-cached function costs every process about 0.6 s of numba's own set-up (its
typing and lowering registries) before the first call: a third of a Criteo command's start-up.
The same functions compiled here by ``numba.pycc`` load in milliseconds and run at the JIT's
speed (the parser's outputs are compared in tests/data/test_build_kernels.py).

``make install`` (and so ``make test``, ``make demo`` and the Dockerfile) runs
``python -m dlrm_dist.data.columnar.build_kernels``. The module is written next to tsv_kernel.py
under the name ``tsv_kernel.compiled_name()`` gives: a digest of both sources, numba's version
and the CPU it was compiled for. tsv_kernel.py imports only the build of its own source on this
kind of CPU; any other (an edited kernel, another numba, an image built on another machine) is
never loaded, and the JIT compiles the same functions instead: slower to start, never stale.
Without a C compiler the build says so and exits 0 (the JIT serves).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Optional

from dlrm_dist.data.columnar import tsv_kernel as k

with warnings.catch_warnings():  # pycc is "pending deprecation", its replacement not yet released
    warnings.simplefilter("ignore")
    from numba.pycc import CC

# Exact signatures (the JIT specialises on what it is given; an exported function takes these
# only): C-contiguous arrays, as every caller passes.
_ROW_OUT = "i8[::1], i8[::1], i8[::1], i8[::1], b1[::1], i8[::1], b1[::1]"  # bad_line .. bad_arg, scratch
SIGNATURES = {
    "count_newlines": (k.count_newlines_jit, "i8(u1[::1])"),
    "scan": (k.scan_jit, "UniTuple(i8, 3)(u1[::1], f8[:, ::1], b1[:, ::1], i8[:, ::1], b1[:, ::1], i4[::1], "
                         f"i8[::1], {_ROW_OUT})"),
    "scan_fused": (k.scan_fused_jit, "UniTuple(i8, 4)(u1[::1], i8[::1], b1[::1], i8[::1], f4[:, ::1], f4[::1], "
                                     "i8[::1], i8[::1], f8[::1], i4[:, ::1], i8[:, ::1], f4[::1], f4[:, ::1], "
                                     f"i8[::1], i8[::1], i8[::1], i8[::1], {_ROW_OUT})"),
}


def build(directory: Optional[Path] = None) -> Path:
    """Compiles the kernels into ``directory`` (tsv_kernel.py's own by default), removing the
    builds of other sources there; returns the module's path."""
    out = Path(directory or Path(k.__file__).parent)
    name = k.compiled_name()
    cc = CC(name)
    cc.target_cpu = "host"  # (the name says which CPU: another one never loads it)
    cc.use_nrt = False  # nothing allocates in the kernels: no reference counts to keep (tsv_kernel._ROW_CODE)
    cc.verbose = False
    for export, (dispatcher, signature) in SIGNATURES.items():
        cc.export(export, signature)(dispatcher.py_func)
    with tempfile.TemporaryDirectory(dir=out, prefix=".build-") as scratch:
        cc.output_dir = scratch  # linked there, then renamed: a process importing it never sees half a file
        cc.compile()
        built = out / cc.output_file
        os.replace(Path(scratch) / cc.output_file, built)
    for old in out.glob(k.COMPILED_PREFIX + "*"):
        if old.name != built.name:
            old.unlink()
    return built


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dlrm_dist.data.columnar.build_kernels", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="directory to write the module to (default: the package's)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    try:
        path = build(args.out)
    except Exception as e:  # noqa: BLE001 - no compiler, no distutils: the JIT serves, and the user is told
        print(f"criteo_tsv kernels not compiled ahead of time ({type(e).__name__}: {e}); numba's JIT "
              "compiles them on first use instead (about 0.6 s more start-up per command)", file=sys.stderr)
        return 0
    print(f"compiled the criteo_tsv kernels ahead of time in {time.perf_counter() - started:.1f} s: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
