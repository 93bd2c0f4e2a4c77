"""The data kernels compiled ahead of time (build_kernels.py) against numba's JIT of the same
source, and the rule that only a build of exactly this source for this CPU is ever loaded."""

from __future__ import annotations

import dataclasses
import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from dlrm_dist.data.columnar import build_kernels, compiled, criteo_fused, criteo_tsv, csv_kernel, kernels, tsv_kernel
from dlrm_dist.data.columnar.tsv_kernel import padded
from dlrm_dist.features.builtin import criteo_schema


@pytest.fixture(scope="module")
def build(tmp_path_factory) -> object:
    """The build `make` installed; one made here where there is none (a JIT-only checkout)."""
    if compiled.BUILD is not None:
        return compiled.BUILD
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


def _with(build, monkeypatch, fn, *args):
    """``fn(*args)`` on ``build`` (None: numba's JIT)."""
    monkeypatch.setattr(compiled, "BUILD", build)
    return fn(*args)


def test_the_build_parses_as_the_jit_does(build, criteo_sample, monkeypatch) -> None:
    data = _bad_lines(criteo_sample.read_bytes())
    jit = _with(None, monkeypatch, tsv_kernel.parse_chunk, data)
    built = _with(build, monkeypatch, tsv_kernel.parse_chunk, data)
    assert jit.num_bad == len(jit.bad) >= 6 and jit.num_lines == 209
    for f in dataclasses.fields(jit):
        a, b = getattr(jit, f.name), getattr(built, f.name)
        if isinstance(a, np.ndarray):
            assert a.dtype == b.dtype and a.tobytes() == b.tobytes(), f.name
        else:
            assert a == b, f.name
    assert build.count_newlines(padded(data)) == compiled.jit("count_newlines")(padded(data)) == data.count(b"\n")
    readonly = np.frombuffer(data, np.uint8)  # (the line count's mapped windows are read-only)
    assert build.count_newlines(readonly) == data.count(b"\n")


def test_the_build_encodes_as_the_jit_does(build, criteo_sample, monkeypatch) -> None:
    data = _bad_lines(criteo_sample.read_bytes())
    wide = criteo_schema([2**31 + k if k % 3 == 0 else 1000 + k for k in range(26)], days=2)  # int64 ids too
    for schema in (criteo_schema(days=2), wide):
        schema = schema.with_fitted({}, {})
        fused = criteo_fused.fused_plan(schema, criteo_tsv._positions(schema))
        jit_found, jit = _with(None, monkeypatch, criteo_fused.encode_fused, data, fused)
        found, built = _with(build, monkeypatch, criteo_fused.encode_fused, data, fused)
        assert found.rows == jit_found.rows > 190 and found.bad == jit_found.bad and len(found.bad) >= 6
        (jit_lines, jit_flat), (lines, flat) = (criteo_fused.fused_encoded(fused, found.rows, arrays)
                                                for arrays in (jit, built))  # (the valid rows: the rest is unwritten)
        assert lines.tobytes() == jit_lines.tobytes()
        for a, b in zip(jit_flat, flat):
            assert (a is None and b is None) or (a.dtype == b.dtype and a.tobytes() == b.tobytes())


def test_the_build_runs_the_generic_path_as_the_jit_does(build, monkeypatch) -> None:
    """The tokenizer, the interner (growth, long texts, nulls), the orders, the hashes, the bags,
    the counts and model ids: the same outputs from the build and the JIT."""
    rng = np.random.default_rng(0)
    words = [("w" * int(n)) + str(i) for i, n in enumerate(rng.integers(0, 30, 3000))]
    texts = pa.array([None if i % 97 == 0 else words[int(j)] for i, j in enumerate(rng.integers(0, 3000, 20000))])
    plan = csv_kernel.Plan(ord(","), np.array([1, 2, 0, 2], np.int8), np.array([0, 0, 0, 1], np.int64), ["n"], ["a", "b"])
    csv = b"".join(b"%d.25,%s,x,%s\n" % (i, words[i].encode(), b"|".join(w.encode() for w in words[i: i + 3]))
                   for i in range(500))

    def run() -> list:
        interner = kernels.Interner()
        ids = [interner.ids(texts.slice(k, 5000)) for k in range(0, len(texts), 5000)]  # (the table grows)
        counts = np.zeros(interner.n, np.int64)
        kernels.count_ids(ids[0], np.arange(5000) % 3 > 0, np.zeros(0, np.int64), counts)
        out = np.empty(5000, np.int64)
        kernels.model_ids(ids[0], np.arange(interner.n) % 5 - 1, interner.hashes(), np.uint64(7), np.uint64(5), out)
        values, bags = kernels.split_bags(pa.array(csv.decode().split(",")), "|")
        batch = csv_kernel.parse(plan, csv)
        return [np.concatenate(ids).tobytes(), interner.texts().to_pylist(), counts.tobytes(), out.tobytes(),
                kernels.fnv1a(texts).tobytes(), kernels.text_order(interner.texts(), -counts).tobytes(),
                values.to_pylist(), bags.tobytes(), batch.to_pylist()]

    jit = _with(None, monkeypatch, run)
    built = _with(build, monkeypatch, run)
    assert jit == built and len(jit[1]) > 2900 and len(jit[-1]) == 500


def test_only_a_build_of_this_source_is_loaded(tmp_path, monkeypatch) -> None:
    package = Path(compiled.__file__).parent
    for name in compiled.SOURCES:
        shutil.copy(package / name, tmp_path / name)
    assert compiled.compiled_name(tmp_path) == compiled.compiled_name()
    for edited in ("tsv_rows.py", "text_rows.py", "csv_kernel.py"):  # an edited kernel or front: another name
        shutil.copy(package / edited, tmp_path / edited)
        (tmp_path / edited).write_text((package / edited).read_text() + "\n# an edit\n")
        assert compiled.compiled_name(tmp_path) != compiled.compiled_name()
        shutil.copy(package / edited, tmp_path / edited)
    here = compiled.compiled_name(tmp_path)
    monkeypatch.setenv("NUMBA_CPU_NAME", "generic")  # another CPU: another name
    assert compiled.compiled_name(tmp_path) != here
    monkeypatch.delenv("NUMBA_CPU_NAME")
    monkeypatch.setattr(compiled, "compiled_name", lambda: compiled.PREFIX + "0" * 20)
    assert compiled._load() is None  # no build of that source: the JIT's kernels


def test_a_generic_command_with_the_build_imports_no_numba(build) -> None:
    """What the build is for: a preprocessing command's modules, and the kernels run, without numba."""
    if compiled.BUILD is None:
        pytest.skip("no build installed in the package (make kernels): the JIT serves")
    code = ("import sys; import pyarrow as pa; from dlrm_dist.data.columnar import preprocess, kernels, compiled; "
            "assert compiled.BUILD is not None; kernels.Interner().ids(pa.array(['a', 'b'])); "
            "kernels.text_order(pa.array(['b', 'a'])); print('numba' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_without_a_compiler_the_build_says_so_and_the_jit_serves(monkeypatch, capsys) -> None:
    def no_compiler(directory=None):
        raise build_kernels.NoToolchain("RuntimeError: no compiler")
    monkeypatch.setattr(build_kernels, "build", no_compiler)
    monkeypatch.setattr(compiled, "BUILD", None)
    assert build_kernels.main(["--if-missing"]) == 0  # (the install goes on; the next make tries again)
    assert "not compiled ahead of time (RuntimeError: no compiler)" in capsys.readouterr().err

    def bug(directory=None):
        raise TypeError("a bug in the build")
    monkeypatch.setattr(build_kernels, "build", bug)
    with pytest.raises(TypeError, match="a bug"):  # (not taken for a missing compiler)
        build_kernels.main([])
    monkeypatch.setattr(compiled, "BUILD", object())
    assert build_kernels.main(["--if-missing"]) == 0  # a build of these sources loads: nothing to do


def test_the_build_is_never_given_what_it_cannot_read(build, monkeypatch) -> None:
    """The build does not check its arguments (it would read them as raw memory): every call is checked first."""
    monkeypatch.setattr(compiled, "BUILD", build)
    buf = padded(b"1" + b"\t" * 39 + b"\n")
    assert tsv_kernel.count_newlines(buf) == 1
    for wrong in (b"\n\n", np.zeros(4, np.float64), np.zeros((2, 2), np.uint8), np.zeros(8, np.uint8)[::2],
                  np.zeros(4, np.int8)):
        with pytest.raises(TypeError, match="count_newlines: argument 0 must be a C-contiguous 1-d uint8 array"):
            tsv_kernel.count_newlines(wrong)
    with pytest.raises(ValueError, match="padded"):  # a strided view of padded bytes
        tsv_kernel.parse_chunk(np.concatenate([buf, buf])[::2])
    args = [np.zeros((1,) * a.ndim, a.dtype) for a in compiled.KERNELS["scan_fused"].args]
    with pytest.raises(TypeError, match="scan_fused: argument 9 must be a C-contiguous writeable 2-d int32 array"):
        compiled.run("scan_fused", *args[:9], np.zeros((2, 4), np.int64), *args[10:])
    readonly = np.zeros(1, np.float32)
    readonly.flags.writeable = False  # (an output the build would write through: a segfault on a mapped file)
    with pytest.raises(TypeError, match="argument 11 must be a C-contiguous writeable 1-d float32 array"):
        compiled.run("scan_fused", *args[:11], readonly, *args[12:])
    with pytest.raises(ValueError):  # (a wrong number of arguments)
        compiled.run("scan_fused", *args[:-1])
    interner = kernels.Interner()  # scalars: an integer that fits, nothing else
    offsets, data = kernels.buffers(pa.array(["a"]))
    for scalar, ok in ((np.uint64(3), True), (-1, False), (2**64, False), (1.0, False), (True, False)):
        call = [offsets, data, np.zeros(1, bool), scalar, interner.slots, interner.keys, interner.starts, interner.buf,
                0, 0, np.zeros(1, np.int64), np.zeros((1, 3), np.uint64)]
        if ok:
            assert compiled.run("intern", *call)[0] == 1
        else:
            with pytest.raises(TypeError, match="intern: argument 3 must be an integer that fits uint64"):
                compiled.run("intern", *call)


def test_fused_outputs_too_small_for_the_chunk_are_refused(criteo_sample) -> None:
    schema = criteo_schema(days=2).with_fitted({}, {})
    fused = criteo_fused.fused_plan(schema, criteo_tsv._positions(schema))
    data = criteo_sample.read_bytes()
    small = [np.zeros(shape, dtype) for dtype, shape in criteo_fused.fused_specs(fused, 10)]
    with pytest.raises(ValueError, match="fused_chunk: outputs of"):  # (the kernel would write past their end)
        criteo_fused.encode_fused(data, fused, small)
