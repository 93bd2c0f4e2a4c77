"""The fused criteo_tsv path (parse and encode in one compiled pass) against the generic encoder.

The fused kernel runs only the steps a schema names (criteo_fused.fused_plan); its output must be
encode.encode_batch's on the parsed chunk, byte for byte: counts around the plan's table bounds,
negative, 19-digit and missing counts, upper-case and missing categories, int32 and int64 ids,
fitted chains; and whole preprocessing runs through worker processes write the same files.
"""

from __future__ import annotations

import dataclasses
import gzip
import mmap
from pathlib import Path

import numpy as np
import pytest

from dlrm_dist.data.columnar import criteo_fused, criteo_tsv, shared_blocks
from dlrm_dist.data.columnar.columns import BadLines
from dlrm_dist.data.columnar.encode import Encoded, encode_batch
from dlrm_dist.data.columnar.preprocess import Options, preprocess
from dlrm_dist.data.columnar.tsv_kernel import TABLE_SIZE, parse_chunk
from dlrm_dist.data.errors import PreprocessError
from dlrm_dist.features.builtin import criteo_schema
from dlrm_dist.features.schema import DenseFeature, FeatureSchema, SparseFeature, SplitSpec

COUNTS = ["", "0", "1", "2", "-0", "-1", "-7", str(TABLE_SIZE - 1), str(TABLE_SIZE), str(TABLE_SIZE + 1), "123456789",
          "999999999999999999", "9223372036854775807", "00017"]


def _lines(sample: Path, extra: int = 400, seed: int = 0) -> bytes:
    """The real sample, then lines of edge-case counts and categories (and a bad line)."""
    rng = np.random.default_rng(seed)
    out = [sample.read_bytes()]
    for _ in range(extra):
        fields = [str(rng.integers(0, 2))] + [COUNTS[rng.integers(len(COUNTS))] for _ in range(13)]
        for _ in range(26):
            v = f"{int(rng.integers(0, 2**32)):08x}"
            fields.append(["", v, v.upper(), "ffffffff", "00000000"][rng.integers(5)])
        out.append(("\t".join(fields) + "\n").encode())
    out.append(b"1\t2\t3\n")  # malformed: skipped by both
    return b"".join(out)


def _with_dense(schema: FeatureSchema, **changes) -> FeatureSchema:
    return dataclasses.replace(schema, dense=tuple(dataclasses.replace(d, **changes) for d in schema.dense))


def _schemas() -> dict[str, FeatureSchema]:
    base = criteo_schema(buckets=97, days=2)
    managed = dataclasses.replace(base, sparse=tuple(dataclasses.replace(f, kind="managed") for f in base.sparse))
    fitted = dataclasses.replace(base, dense=tuple(
        DenseFeature(d.name, d.column, ("clip", "log1p", "standardize"), clip=(0.0, float("inf")), fill=3.0,
                     scale=(1.25 + j, 0.5 + j)) for j, d in enumerate(base.dense)))
    mixed = dataclasses.replace(fitted, dense=tuple(
        DenseFeature(d.name, d.column, chain, clip=clip) for d, (chain, clip) in zip(
            base.dense, [(("clip",), (1.0, 1000.0)), (("none",), None), (("clip", "log1p"), (0.0, 5.0))] * 5)))
    return {
        "builtin": base,
        "random_split": dataclasses.replace(base, split=SplitSpec("random", seed=3)),
        "int64_ids": criteo_schema(buckets=2**33, days=2),
        "int32_and_int64_ids": criteo_schema([2**31 + k if k % 3 == 0 else 1000 + k for k in range(26)], days=2),
        "managed": managed,
        "fitted_chain_and_fill": fitted,
        "mixed_chains_one_column_twice": dataclasses.replace(
            mixed, dense=mixed.dense + (DenseFeature("again", mixed.dense[1].column, ("clip", "log1p"), clip=(0.0, 9.0)),)),
    }


@pytest.mark.parametrize("name", list(_schemas()))
def test_fused_plan_gives_the_generic_encoders_arrays(criteo_sample, name: str) -> None:
    schema = _schemas()[name].with_fitted({}, {})
    data = _lines(criteo_sample)
    positions = criteo_tsv._positions(schema)
    parsed = parse_chunk(data)
    generic = encode_batch(criteo_tsv._batch(parsed, positions, "x.tsv", 0, 0), schema, {})
    fused = criteo_fused.fused_plan(schema, positions)
    assert fused is not None, criteo_fused.unfusable(schema, positions)
    found, arrays = criteo_fused.encode_fused(data, fused)
    lines, flat = criteo_fused.fused_encoded(fused, found.rows, arrays)
    got = Encoded.from_arrays(schema, flat)
    assert found.rows == len(parsed.labels) == 600 and found.bad == parsed.bad == [(600, "3 fields instead of 40")]
    assert len(found.over_row) > 0  # counts outside the table went through the chain itself
    np.testing.assert_array_equal(lines, parsed.rows)
    for a, b in [(got.labels, generic.labels), (got.dense, generic.dense)] + [
            (got.ids[f.name][0], generic.ids[f.name][0]) for f in schema.sparse]:
        assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def test_schemas_with_other_steps_keep_the_generic_encoder() -> None:
    base = criteo_schema(buckets=97, days=2)
    vocab = criteo_schema(vocab_min_count=2, days=2)
    identity = dataclasses.replace(base, sparse=(SparseFeature("i", base.sparse[0].column, "identity", "t_i",
                                                               buckets=2**33), *base.sparse[1:]))
    threshold = dataclasses.replace(base, label=dataclasses.replace(base.label, threshold=1.0))
    by_time = dataclasses.replace(base, split=SplitSpec("time", column="int_0"))
    for schema in (vocab, identity, threshold, by_time):  # (the schema refuses fnv1a, prefix, lists here)
        assert criteo_fused.fused_plan(schema, criteo_tsv._positions(schema)) is None
    unfitted = _schemas()["fitted_chain_and_fill"]  # standardize without its fitted scale yet
    assert criteo_fused.fused_plan(_with_dense(unfitted, scale=None), criteo_tsv._positions(unfitted)) is None


def _files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*.npy"))}


def test_preprocessing_writes_the_same_files_fused_and_generic(criteo_sample, tmp_path, monkeypatch) -> None:
    """Through worker processes and shared memory, many chunks, a day cut inside one."""
    src = tmp_path / "train.txt"
    src.write_bytes(_lines(criteo_sample, extra=300, seed=1))
    monkeypatch.setattr(criteo_tsv, "CHUNK_BYTES", 16 << 10)
    schema = criteo_schema([2**31 + k if k % 5 == 0 else 1000 + k for k in range(26)], days=3)
    fused = preprocess(Options(schema, [src], tmp_path / "fused", progress=False, workers=2))
    monkeypatch.setattr(criteo_tsv, "fused_plan", lambda *a: None)
    generic = preprocess(Options(schema, [src], tmp_path / "generic", progress=False, workers=2))
    assert fused.rows == generic.rows and fused.skipped == generic.skipped == 1
    a, b = _files(tmp_path / "fused"), _files(tmp_path / "generic")
    assert len(a) == 3 * 28 and a == b


def _rows(enc: Encoded, schema: FeatureSchema) -> np.ndarray:
    """One chunk's encoded rows as one float64 table (labels, dense, every id)."""
    return np.column_stack([enc.labels, enc.dense, *(enc.ids[f.name][0] for f in schema.sparse)]).astype(np.float64)


def test_recycled_blocks_never_change_arrays_a_caller_keeps(criteo_sample, tmp_path, monkeypatch) -> None:
    """The fused read writes chunk after chunk into recycled shared-memory blocks, each handed back
    to the workers only once no array of it is left: batches a caller keeps stay as they were read."""
    src = tmp_path / "train.txt"
    src.write_bytes(_lines(criteo_sample, extra=300, seed=2))
    monkeypatch.setattr(criteo_tsv, "CHUNK_BYTES", 4 << 10)
    schema = criteo_schema(buckets=97, days=2)
    unpacked, unpack = [], shared_blocks.unpack
    monkeypatch.setattr(shared_blocks, "unpack", lambda name, specs, recycle=None: unpacked.append(
        (name, recycle is not None)) or unpack(name, specs, recycle))

    def read() -> list[Encoded]:
        return criteo_tsv.read_inputs([src], schema, BadLines(), encoder=lambda b: encode_batch(b, schema, {}),
                                      from_arrays=lambda a: Encoded.from_arrays(schema, a), workers=2)

    copied = [_rows(enc, schema) for *_, enc in read()]  # each copied as it comes: its block goes back
    chunks = len(copied)
    assert chunks > 20 and all(pooled for _, pooled in unpacked)
    # (How many blocks a read writes again depends on timing: a worker takes a new block when the queue's
    # feeder thread has not delivered a freed one yet; test_shared_blocks.py tests the reuse itself.)
    unpacked.clear()
    kept = [enc for *_, enc in read()]  # every batch kept: no block can go back while it is
    assert len({name for name, _ in unpacked}) == chunks
    assert all(np.array_equal(_rows(enc, schema), rows) for enc, rows in zip(kept, copied))
    expected = np.concatenate([_rows(encode_batch(batch, schema, {}), schema) for *_, batch, _ in
                               criteo_tsv.read_inputs([src], schema, BadLines(), workers=2)])
    assert np.array_equal(np.concatenate(copied), expected)  # and what was read is the encoder's


def test_a_chain_failing_on_a_count_outside_the_table_names_the_line(criteo_sample, tmp_path) -> None:
    """log1p without clip: -7 is refused by the encoder, found again where the line is known."""
    src = tmp_path / "train.txt"
    lines = criteo_sample.read_bytes().splitlines(keepends=True)
    fields = lines[120].split(b"\t")
    fields[4] = b"-7"
    lines[120] = b"\t".join(fields)
    src.write_bytes(b"".join(lines))
    base = criteo_schema(buckets=97, days=2)  # int_3 (I4) has no negative count in the sample
    schema = dataclasses.replace(base, dense=tuple(
        dataclasses.replace(d, transform=("log1p",), clip=None) if d.name == "int_3" else d for d in base.dense))
    assert criteo_fused.fused_plan(schema, criteo_tsv._positions(schema)) is not None
    with pytest.raises(PreprocessError, match=r"train.txt line 121: dense feature 'int_3' .*log1p of -7.0"):
        preprocess(Options(schema, [src], tmp_path / "o", progress=False, workers=2))


def test_line_counts_of_plain_and_gzip_files(criteo_sample, tmp_path, monkeypatch) -> None:
    text = criteo_sample.read_bytes()
    files = {"plain": text, "no_final_newline": text.rstrip(b"\n"), "empty": b"", "blank_lines": b"\n\n\n"}
    paths = []
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        (tmp_path / f"{name}.gz").write_bytes(gzip.compress(data))
        paths += [tmp_path / name, tmp_path / f"{name}.gz"]
    expected = [200, 200, 200, 200, 0, 0, 3, 3]
    assert criteo_tsv.count_lines(paths, workers=1) == expected
    assert criteo_tsv.count_lines(paths, workers=3) == expected
    monkeypatch.setattr(criteo_tsv, "COUNT_WINDOW", mmap.ALLOCATIONGRANULARITY)  # a plain file in many windows
    assert criteo_tsv.count_lines(paths, workers=3) == expected


def test_the_cli_freezes_the_heap_for_its_exit(criteo_sample, tmp_path, monkeypatch) -> None:
    """The interpreter's last collection is skipped for what the job imported (0.4-0.6 s of a
    2M-line job's wall time here): dlrm-data registers gc.freeze to run at exit."""
    import atexit
    import gc

    from dlrm_dist.cli import data_main

    registered = []
    monkeypatch.setattr(atexit, "register", lambda fn, *a, **k: registered.append(fn))
    assert data_main.main(["preprocess", "--schema", "criteo:days=7,buckets=100", "--input", str(criteo_sample),
                           "--out", str(tmp_path / "o"), "--no-progress"]) == 0
    assert gc.freeze in registered


def test_a_read_removes_the_blocks_of_killed_reads_only(criteo_sample, tmp_path) -> None:
    """Blocks a SIGKILLed read left in /dev/shm are unlinked by the next read; those of live
    processes (this one, pid 1) and names that are not a read's block stay."""
    import _posixshmem
    import os

    dead = int(Path("/proc/sys/kernel/pid_max").read_text()) + 1  # no process can have this pid
    names = {"dead": f"dlrm_dist_{dead}_0123abcd_0123456789abcdef", "ours": f"dlrm_dist_{os.getpid()}_0123abcd_00",
             "pid1": "dlrm_dist_1_0123abcd_00", "other": f"dlrm_dist_{dead}_not_a_block"}
    for name in names.values():
        os.close(_posixshmem.shm_open("/" + name, os.O_RDWR | os.O_CREAT, mode=0o600))
    try:
        list(criteo_tsv.read_inputs([criteo_sample], criteo_schema(days=7, buckets=100), BadLines(), workers=1))
        left = {n for n in names.values() if (shared_blocks.SHM_DIR / n).exists()}
        assert left == {names["ours"], names["pid1"], names["other"]}
        assert shared_blocks.remove_stale_blocks() == 0
    finally:
        for name in names.values():
            if (shared_blocks.SHM_DIR / name).exists():
                _posixshmem.shm_unlink("/" + name)


def test_the_cli_imports_its_modules_with_the_collector_off(criteo_sample, tmp_path, monkeypatch) -> None:
    """dlrm-data imports a subcommand's modules (numpy, pyarrow, pydantic, numba: 0.15-0.2 s of
    collections otherwise) with the collector off, freezes them, and turns it back on."""
    import gc
    import importlib

    from dlrm_dist.cli import data_main

    imported, frozen = [], []
    real_import, real_freeze = importlib.import_module, gc.freeze
    monkeypatch.setattr(importlib, "import_module", lambda name, *package: (
        imported.append((name, gc.isenabled())), real_import(name, *package))[1])
    monkeypatch.setattr(gc, "freeze", lambda: (frozen.append(gc.isenabled()), real_freeze())[1])
    assert gc.isenabled()
    assert data_main.main(["preprocess", "--schema", "criteo:days=7,buckets=100", "--input", str(criteo_sample),
                           "--out", str(tmp_path / "o"), "--no-progress"]) == 0
    assert ("dlrm_dist.data.columnar.preprocess", False) in imported
    # a split job does not load the day-partition module (nor, through it, the training config)
    assert "dlrm_dist.data.columnar.partitions" not in {name for name, _ in imported}
    assert frozen[0] is False and gc.isenabled()
