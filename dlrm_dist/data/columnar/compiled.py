"""The data stack's compiled kernels, run by name: from a build made ahead of time
(build_kernels.py) where one of exactly these sources for this CPU is installed, else by numba's
JIT, which compiles (or loads from its cache) the same functions on first use.

Why a build: numba's import and set-up (its typing and lowering registries, its target machine)
cost a process about 0.5 s before the first call of any kernel, cached or not: a large part of
a preprocessing command's start-up. A build loads in milliseconds, imports no numba and runs at
the JIT's speed. The kernels' code is in tsv_rows.py (the Criteo line parser) and text_rows.py
(strings and the CSV tokenizer); their Python fronts (tsv_kernel.py, kernels.py, csv_kernel.py)
allocate what they write and call ``run``.

``KERNELS`` is the one home of every kernel's signature: each argument's dtype and dimensions
(C-contiguous arrays, or scalars) and whether the kernel writes it, and the result. The build
exports each kernel with that signature, and ``run`` checks every call into the build against
it first: the build does not check what it is given (a wrong dtype, rank or strided view would
be read as raw memory, a read-only output written through). A wrong argument is a TypeError
naming it. The JIT checks nothing here: it compiles for whatever it is given.

Only a build of exactly these sources is loaded: its module name (``compiled_name``) is a digest
of the kernels' code, their fronts (the constants compiled in), this file and build_kernels.py,
numba's and numpy's versions and the CPU it targets. Anything else (an edited kernel, another
numba, an image built on another kind of CPU) is never loaded, and the JIT serves.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import os
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Optional

import llvmlite.binding as llvm
import numpy as np

from dlrm_dist.features.builtin import CRITEO_NUM_DENSE, CRITEO_NUM_SPARSE

PREFIX = "_compiled_kernels_"
SOURCES = ("compiled.py", "build_kernels.py", "tsv_rows.py", "tsv_kernel.py", "text_rows.py", "kernels.py",
           "csv_kernel.py")


@dataclass(frozen=True)
class Arg:
    """One argument as the build takes it."""

    dtype: str  # numpy's code (u1, i8, f4, b1, ...)
    ndim: int  # 0: a scalar
    written: bool = False  # the kernel writes it: it must be writeable


@dataclass(frozen=True)
class Kernel:
    module: str  # the module of its numba code; its JIT dispatcher there is ``<name>_jit``
    args: tuple[Arg, ...]
    result: str = "none"  # numba's name of the result type


def _a(dtype: str, ndim: int = 1) -> Arg:
    return Arg(dtype, ndim)


def _w(dtype: str, ndim: int = 1) -> Arg:
    return Arg(dtype, ndim, written=True)


_BAD = (_w("i8"),) * 3  # bad_line, bad_code, bad_arg (tsv_kernel._bad_buffers)
_LINE = (_w("i8"), _w("b1"), _w("i8"), _w("b1"))  # one line's scratch (tsv_kernel._scratch)
KERNELS = {
    # tsv_rows.py
    "count_newlines": Kernel("tsv_rows", (_a("u1"),), "i8"),
    "scan": Kernel("tsv_rows", (_a("u1"), _w("f8", 2), _w("b1", 2), _w("i8", 2), _w("b1", 2), _w("i4"), _w("i8"),
                                *_BAD, *_LINE), "UniTuple(i8, 3)"),
    "scan_fused": Kernel("tsv_rows", (_a("u1"), _a("i8"), _a("b1"), _a("i8"), _a("f4", 2), _a("f4"), _a("i8"), _a("i8"),
                                      _a("f8"), _w("i4", 2), _w("i8", 2), _w("f4"), _w("f4", 2), _w("i8"), _w("i8"),
                                      _w("i8"), _w("i8"), *_BAD, *_LINE), "UniTuple(i8, 4)"),
    # text_rows.py: strings (kernels.py)
    "fnv1a": Kernel("text_rows", (_a("i8"), _a("u1"), _w("u8"))),
    "byte_key": Kernel("text_rows", (_a("i8"), _a("u1"), _a("i8"), _a("i8", 0), _w("u8"))),
    "intern": Kernel("text_rows", (_a("i8"), _a("u1"), _a("b1"), _a("u8", 0), _w("u8", 2), _w("u8"), _w("i8"), _w("u1"),
                                   _a("i8", 0), _a("i8", 0), _w("i8"), _w("u8", 2)), "UniTuple(i8, 4)"),
    "reslot": Kernel("text_rows", (_a("u8", 2), _w("u8", 2))),
    "count_ids": Kernel("text_rows", (_a("i8"), _a("b1"), _a("i8"), _w("i8"))),
    "model_ids": Kernel("text_rows", (_a("i8"), _a("i8"), _a("u8"), _a("u8", 0), _a("u8", 0), _w("i8"))),
    "split": Kernel("text_rows", (_a("i8"), _a("u1"), _a("b1"), _a("i8", 0), _w("i8"), _w("u1"), _w("i8")), "i8"),
    # text_rows.py: the CSV tokenizer (csv_kernel.py)
    "ends": Kernel("text_rows", (_a("u1"), _a("i8"), _w("i4")), "i8"),
    "tokenize": Kernel("text_rows", (_a("u1"), _a("i8", 0), _a("i4"), _a("i8", 0), _a("i1"), _a("i8"), _w("f8", 2),
                                     _w("u1", 2), _w("i8", 2), _w("i4", 2), _a("f8")), "i8"),
    "gather": Kernel("text_rows", (_a("u1"), _a("i8", 2), _a("i4", 2), _w("i4", 2), _a("i8"), _w("u1"), _w("i8"))),
}


def signature(name: str) -> str:
    """``name``'s signature as the build exports it (numba's notation; arrays C-contiguous)."""
    args = [a.dtype if a.ndim == 0 else f"{a.dtype}[{', '.join([':'] * (a.ndim - 1) + ['::1'])}]"
            for a in KERNELS[name].args]
    return f"{KERNELS[name].result}({', '.join(args)})"


def compiled_name(sources: Optional[Path] = None) -> str:
    """The module name of a build of these kernels: a digest of what makes it (``SOURCES`` as in
    ``sources``, by default this package; the Criteo field counts; numba's and numpy's versions; the CPU it targets, as
    numba picks it: $NUMBA_CPU_NAME and $NUMBA_CPU_FEATURES, else the host's), so that no other
    build is ever loaded."""
    digest = hashlib.sha256()
    for source in SOURCES:
        digest.update(((sources or Path(__file__).parent) / source).read_bytes())
    cpu = (os.environ.get("NUMBA_CPU_NAME") or llvm.get_host_cpu_name(),
           os.environ.get("NUMBA_CPU_FEATURES") or llvm.get_host_cpu_features().flatten())
    constants = (CRITEO_NUM_DENSE, CRITEO_NUM_SPARSE)  # (compiled in, from a module not among the sources)
    digest.update(repr((constants, importlib.metadata.version("numba"), np.__version__, cpu)).encode())
    return PREFIX + digest.hexdigest()[:20]


def _load() -> Optional[ModuleType]:
    """The build of exactly these sources for this CPU, or None (never built, built from other
    sources, or no sources to hash: an install without them)."""
    try:
        return importlib.import_module(f"{__package__}.{compiled_name()}")
    except (ImportError, OSError):
        return None


_JIT: dict[str, Any] = {}


def jit(name: str) -> Any:
    """``name``'s numba dispatcher (its module imported, and so numba, on first use)."""
    if name not in _JIT:
        _JIT[name] = getattr(importlib.import_module(f"{__package__}.{KERNELS[name].module}"), f"{name}_jit")
    return _JIT[name]


def run(name: str, *args: Any) -> Any:
    """Kernel ``name`` on ``args``: the build's (each argument checked first) or the JIT's."""
    if BUILD is None:
        return jit(name)(*args)
    for i, (a, spec) in enumerate(zip(args, KERNELS[name].args, strict=True)):
        _check(name, i, a, spec)
    return getattr(BUILD, name)(*args)


def _check(name: str, i: int, a: object, spec: Arg) -> None:
    want = np.dtype(spec.dtype)
    if spec.ndim == 0:
        if isinstance(a, (int, np.integer)) and not isinstance(a, (bool, np.bool_)) and want.kind in "iu":
            info = np.iinfo(want)
            if info.min <= int(a) <= info.max:
                return
        raise TypeError(f"{name}: argument {i} must be an integer that fits {want}, got {a!r}")
    if (isinstance(a, np.ndarray) and a.dtype == want and a.ndim == spec.ndim and a.flags.c_contiguous
            and (a.flags.writeable or not spec.written)):
        return
    got = (f"{a.dtype} {a.ndim}-d, contiguous: {a.flags.c_contiguous}, writeable: {a.flags.writeable}"
           if isinstance(a, np.ndarray) else type(a).__name__)
    raise TypeError(f"{name}: argument {i} must be a C-contiguous{' writeable' if spec.written else ''} {spec.ndim}-d "
                    f"{want} array, got {got}")


BUILD = _load()  # (tests set it to None, or to another build, to run either)
