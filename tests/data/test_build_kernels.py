"""The criteo_tsv kernels compiled ahead of time (build_kernels.py) against numba's JIT of the same
source, and the rule that only a build of exactly this source for this CPU is ever loaded."""

from __future__ import annotations

import dataclasses
import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest

from dlrm_dist.data.columnar import build_kernels, criteo_fused, criteo_tsv, tsv_kernel
from dlrm_dist.data.columnar.tsv_kernel import padded
from dlrm_dist.features.builtin import criteo_schema


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> object:
    """The build `make` installed; one made here where there is none (a JIT-only checkout)."""
    if tsv_kernel.COMPILED:
        return tsv_kernel._KERNELS
    path = build_kernels.build(tmp_path_factory.mktemp("kernels"))
    spec = importlib.util.spec_from_file_location(path.name.split(".")[0], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _bad_lines(raw: bytes) -> bytes:
    """The sample with one line of every kind the parser rejects or takes the slow way, and CRLF ends."""
    lines = raw.rstrip(b"\n").split(b"\n")
    fields = lines[3].split(b"\t")
    variants = [b"2" + lines[5][1:], lines[6].replace(b"\t", b"\t12x", 1), b"\t".join(fields[:7]),
                b"\t".join(fields[:20] + [b"05dbg164"] + fields[21:]), lines[8] + b"\r",
                b"\t".join(fields[:2] + [b"99999999999999999999"] + fields[3:]),
                b"\t".join(fields[:2] + [b"-12"] + fields[3:]), b"", lines[9].replace(b"\t", b"\t\0", 1)]
    return b"\n".join(lines[:40] + variants + lines[40:]) + b"\n"


def _with(kernels, monkeypatch, fn, *args):
    monkeypatch.setattr(tsv_kernel, "_KERNELS", kernels)
    return fn(*args)


def test_the_build_parses_as_the_jit_does(compiled, criteo_sample, monkeypatch) -> None:
    data = _bad_lines(criteo_sample.read_bytes())
    jit = _with(tsv_kernel._Jit, monkeypatch, tsv_kernel.parse_chunk, data)
    built = _with(compiled, monkeypatch, tsv_kernel.parse_chunk, data)
    assert jit.num_bad == len(jit.bad) >= 6 and jit.num_lines == 209
    for f in dataclasses.fields(jit):
        a, b = getattr(jit, f.name), getattr(built, f.name)
        if isinstance(a, np.ndarray):
            assert a.dtype == b.dtype and a.tobytes() == b.tobytes(), f.name
        else:
            assert a == b, f.name
    assert compiled.count_newlines(padded(data)) == tsv_kernel.count_newlines_jit(padded(data)) == data.count(b"\n")
    readonly = np.frombuffer(data, np.uint8)  # (the line count's mapped windows are read-only)
    assert compiled.count_newlines(readonly) == data.count(b"\n")


def test_the_build_encodes_as_the_jit_does(compiled, criteo_sample, monkeypatch) -> None:
    data = _bad_lines(criteo_sample.read_bytes())
    wide = criteo_schema([2**31 + k if k % 3 == 0 else 1000 + k for k in range(26)], days=2)  # int64 ids too
    for schema in (criteo_schema(days=2), wide):
        schema = schema.with_fitted({}, {})
        fused = criteo_fused.fused_plan(schema, criteo_tsv._positions(schema))
        jit_found, jit = _with(tsv_kernel._Jit, monkeypatch, criteo_fused.encode_fused, data, fused)
        found, built = _with(compiled, monkeypatch, criteo_fused.encode_fused, data, fused)
        assert found.rows == jit_found.rows > 190 and found.bad == jit_found.bad and len(found.bad) >= 6
        (jit_lines, jit_flat), (lines, flat) = (criteo_fused.fused_encoded(fused, found.rows, arrays)
                                                for arrays in (jit, built))  # (the valid rows: the rest is unwritten)
        assert lines.tobytes() == jit_lines.tobytes()
        for a, b in zip(jit_flat, flat):
            assert (a is None and b is None) or (a.dtype == b.dtype and a.tobytes() == b.tobytes())


def test_only_a_build_of_this_source_is_loaded(tmp_path, monkeypatch) -> None:
    package = Path(tsv_kernel.__file__).parent
    for name in tsv_kernel._SOURCES:
        shutil.copy(package / name, tmp_path / name)
    assert tsv_kernel.compiled_name(tmp_path) == tsv_kernel.compiled_name()
    (tmp_path / "tsv_kernel.py").write_text((package / "tsv_kernel.py").read_text() + "\n# an edit\n")
    assert tsv_kernel.compiled_name(tmp_path) != tsv_kernel.compiled_name()  # an edited kernel: another name
    monkeypatch.setattr(tsv_kernel, "compiled_name", lambda: tsv_kernel.COMPILED_PREFIX + "0" * 20)
    assert tsv_kernel._kernels() is tsv_kernel._Jit  # no build of that source: the JIT's kernels


def test_without_a_compiler_the_build_says_so_and_the_jit_serves(monkeypatch, capsys) -> None:
    def no_compiler(directory=None):
        raise build_kernels.NoToolchain("RuntimeError: no compiler")
    monkeypatch.setattr(build_kernels, "build", no_compiler)
    monkeypatch.setattr(tsv_kernel, "COMPILED", False)
    assert build_kernels.main(["--if-missing"]) == 0  # (the install goes on; the next make tries again)
    assert "not compiled ahead of time (RuntimeError: no compiler)" in capsys.readouterr().err

    def bug(directory=None):
        raise TypeError("a bug in the build")
    monkeypatch.setattr(build_kernels, "build", bug)
    with pytest.raises(TypeError, match="a bug"):  # (not taken for a missing compiler)
        build_kernels.main([])
    monkeypatch.setattr(tsv_kernel, "COMPILED", True)
    assert build_kernels.main(["--if-missing"]) == 0  # a build of these sources loads: nothing to do


def test_the_build_is_never_given_what_it_cannot_read(compiled, monkeypatch) -> None:
    """The build does not check its arguments (it would read them as raw memory): every call is checked first."""
    monkeypatch.setattr(tsv_kernel, "_KERNELS", compiled)
    monkeypatch.setattr(tsv_kernel, "COMPILED", True)
    buf = padded(b"1" + b"\t" * 39 + b"\n")
    assert tsv_kernel.count_newlines(buf) == 1
    for wrong in (b"\n\n", np.zeros(4, np.float64), np.zeros((2, 2), np.uint8), np.zeros(8, np.uint8)[::2],
                  np.zeros(4, np.int8)):
        with pytest.raises(TypeError, match="count_newlines: argument 0 must be a C-contiguous 1-d uint8 array"):
            tsv_kernel.count_newlines(wrong)
    with pytest.raises(ValueError, match="padded"):  # a strided view of padded bytes
        tsv_kernel.parse_chunk(np.concatenate([buf, buf])[::2])
    args = [np.zeros((1,) * nd, code) for code, nd in tsv_kernel.ARGS["scan_fused"]]
    with pytest.raises(TypeError, match="scan_fused: argument 9 must be a C-contiguous writeable 2-d int32 array"):
        tsv_kernel._run("scan_fused", *args[:9], np.zeros((2, 4), np.int64), *args[10:])
    readonly = np.zeros(1, np.float32)
    readonly.flags.writeable = False  # (an output the build would write through: a segfault on a mapped file)
    with pytest.raises(TypeError, match="argument 11 must be a C-contiguous writeable 1-d float32 array"):
        tsv_kernel._run("scan_fused", *args[:11], readonly, *args[12:])
    with pytest.raises(ValueError):  # (a wrong number of arguments)
        tsv_kernel._run("scan_fused", *args[:-1])


def test_fused_outputs_too_small_for_the_chunk_are_refused(criteo_sample) -> None:
    schema = criteo_schema(days=2).with_fitted({}, {})
    fused = criteo_fused.fused_plan(schema, criteo_tsv._positions(schema))
    data = criteo_sample.read_bytes()
    small = [np.zeros(shape, dtype) for dtype, shape in criteo_fused.fused_specs(fused, 10)]
    with pytest.raises(ValueError, match="fused_chunk: outputs of"):  # (the kernel would write past their end)
        criteo_fused.encode_fused(data, fused, small)
