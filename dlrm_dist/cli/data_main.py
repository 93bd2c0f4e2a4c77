"""``dlrm-data``: fetch example data, preprocess raw files by a schema (Criteo's built in; or day by day, a partition per day appended to a dataset that grows), describe the result.

Imports are deferred to each subcommand, so that the CLI starts without loading torch; a
subcommand's modules are imported with the garbage collector off (a second of imports builds
hundreds of thousands of objects, and the collections they set off cost 0.1-0.2 s), then frozen.
"""

from __future__ import annotations

import argparse
import atexit
import gc
import importlib
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

from dlrm_dist.errors import end_as_stopped, interrupt_on_sigterm, run_cli

if TYPE_CHECKING:
    from dlrm_dist.data.columnar.job import Options
    from dlrm_dist.features.schema import FeatureSchema


def _partition_number(text: str) -> int:
    from dlrm_dist.data.partition_list import MAX_PARTITION

    value = int(text) if text.strip().isascii() and text.strip().isdigit() else -1
    if not 0 <= value <= MAX_PARTITION:
        raise argparse.ArgumentTypeError(f"{text!r} is not a partition number (an integer in [0, {MAX_PARTITION}])")
    return value


def _preprocess_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--schema",
                   help="a feature schema: a TOML/JSON file, a built-in name with parameters, e.g. "
                        "criteo:days=7 (Kaggle's train.txt in 7 pseudo-days) or criteo (one day per input file), "
                        "or a preprocessed directory (its schema as written, fitted statistics dropped); "
                        "required, except with --append (the directory's fitted schema)")
    p.add_argument("--partition", type=_partition_number, metavar="N",
                   help="a dataset that grows by day: every row of --input becomes day partition N (folder "
                        "partition_N) instead of train/val/test splits (the schema's [split] is not used). "
                        "Without --append: a new dataset, its schema fitted on these rows. With --append: "
                        "default the largest partition + 1")
    p.add_argument("--append", action="store_true",
                   help="add a partition to --out (a directory started with --partition) with its fitted schema: "
                        "nothing is refitted (values no vocabulary holds go to the OOV rows, dense statistics stay "
                        "the first fit's, hash and managed ids as always). Rerun with the same input: a no-op; "
                        "another input for a partition that exists: refused")
    p.add_argument("--refit", action="store_true",
                   help="make a new dataset instead of appending: the schema as written (--schema, e.g. the old "
                        "directory) fitted anew on --input, which becomes partition N of --out (default: the "
                        "old directory's next number, else 1); --out must not hold a complete dataset")
    p.add_argument("--input", nargs="+", required=True, type=Path,
                   help="CSV/TSV (plain or .gz) or Parquet files; criteo: train.txt, or day_0 .. day_N in day order "
                        "(plain or gzip)")
    p.add_argument("--overwrite", action="store_true",
                   help="start over in a directory written by another job (other inputs or options)")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument("--workers", type=int, default=max(1, os.cpu_count() or 1),
                   help="processes parsing and encoding criteo_tsv inputs")
    p.add_argument("--strict", action="store_true", help="stop at the first malformed line")
    p.add_argument("--no-progress", action="store_true")


STATS_HELP = ("rows, label rate, cardinality, pooling factor; a directory of day partitions: per partition rows, "
              "positive rate and new-id rate (the share of the partition's ids equal to no id of the same feature "
              "in any lower-numbered partition, compared as stored: managed raw ids, hash buckets, vocabulary "
              "rows; per feature and pooled), and for vocabulary features the OOV share (ids in the OOV rows)")


def _stats_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("directory")
    p.add_argument("--json", action="store_true", help="print every figure as JSON (per partition: rows, label_rate, "
                                                       "new_id_rate, and per feature ids, new_ids, new_distinct, "
                                                       "new_id_rate, oov_rate)")
    p.add_argument("--tables-out", help="also write a planner tables file (dlrm-plan make --tables)")
    p.add_argument("--dim", type=int, default=128, help="--tables-out: embedding dim of tables whose schema gives none")


def _schema_of(text: str) -> "FeatureSchema":
    """--schema: a schema file or built-in name, or a preprocessed directory's schema as written."""
    from dlrm_dist.data.columnar import layout
    from dlrm_dist.features.io import load_schema

    if Path(text).is_dir() and (Path(text) / layout.META).is_file():
        return layout.stored_schema(text).without_fitted()
    return load_schema(text)


def run_partition(args: argparse.Namespace, opts: "Options") -> int:
    """--partition / --append / --refit: one day partition of a dataset that grows by day."""
    from dlrm_dist.data.columnar.partitions import append, new_dataset
    from dlrm_dist.data.partition_list import format_partitions

    r = append(opts) if args.append else new_dataset(opts)
    held = format_partitions(r.partitions)
    if r.up_to_date:
        print(f"{args.out}: partition {r.partition} is complete from this input: nothing to do "
              f"({r.rows:,} rows; the directory holds partitions {held})")
        return 0
    rate = r.rows_read / r.seconds if r.seconds else 0
    how = "the schema fitted on it" if r.fitted else "encoded with the directory's fitted schema"
    print(f"partition {r.partition}: {r.rows:,} rows (read {r.rows_read:,}, skipped {r.skipped:,}) in "
          f"{r.seconds:.1f} s ({rate:,.0f} rows/s), {how} -> {args.out} (partitions {held})")
    _print_warnings(r.warnings)
    return _print_malformed(r)


def _print_warnings(warnings: list[str]) -> None:
    for w in warnings:
        print(f"dlrm-data: warning: {w}", file=sys.stderr)


def _print_malformed(r: Any) -> int:
    """The first malformed lines a preprocessing run skipped (a partition's or the splits')."""
    if r.skipped:
        print(f"malformed lines (first {len(r.examples)} of {r.skipped}):")
        for e in r.examples:
            print(f"  {e}")
    return 0


def _options(args: argparse.Namespace) -> "Options":
    """The one job options of ``dlrm-data preprocess`` (splits, or a day partition)."""
    from dlrm_dist.config.errors import ConfigError
    from dlrm_dist.data.columnar.job import Options

    if args.workers < 1:
        raise ConfigError(f"--workers {args.workers}: must be >= 1 (processes parsing criteo_tsv inputs)")
    partitioned = args.partition is not None or args.append or args.refit
    if args.refit and not args.append and not args.schema:  # (--append --refit: append() refuses the pair)
        raise ConfigError("--refit needs --schema: the schema to fit anew (a schema file, or the directory whose "
                          "schema as written to refit)")
    if not partitioned and not args.schema:
        raise ConfigError("--schema is required (a schema file, a built-in name such as criteo, or a preprocessed "
                          "directory), except with --append")
    source = Path(args.schema) if args.refit and args.schema and Path(args.schema).is_dir() else None
    return Options(_schema_of(args.schema) if args.schema else None, list(args.input), args.out, strict=args.strict,
                   overwrite=args.overwrite, progress=not args.no_progress, workers=args.workers,
                   partition=args.partition, append=args.append, refit=args.refit, schema_source=source)


def run_preprocess(args: argparse.Namespace) -> int:
    from dlrm_dist.data.columnar.preprocess import preprocess

    opts = _options(args)
    if args.partition is not None or args.append or args.refit:
        return run_partition(args, opts)
    r = preprocess(opts)
    if r.up_to_date:
        print(f"{args.out} is complete for this job: nothing to do (--overwrite starts over)")
    else:
        rate = r.rows_read / r.seconds if r.seconds else 0
        print(f"rows read {r.rows_read:,}  skipped {r.skipped:,}  in {r.seconds:.1f} s ({rate:,.0f} rows/s) -> {args.out}")
    print("  " + "  ".join(f"{s} {n:,}" for s, n in r.rows.items()))
    if r.split_fractions:  # a time split: ties move rows between splits, so say what it came to
        print("  time split fractions: " + "  ".join(f"{s} {x:.3f}" for s, x in r.split_fractions.items()))
    _print_warnings(r.warnings)
    return _print_malformed(r)


def _write_outputs(args: argparse.Namespace, stats: dict, tables_file) -> bool:
    """Writes --tables-out; prints --json. True when the JSON was the whole answer."""
    from dlrm_dist.fileio import atomic_write_json

    if args.tables_out:
        atomic_write_json(args.tables_out, tables_file(stats, args.dim), indent=1)
    if args.json:
        print(json.dumps(stats, indent=1))
    return args.json


def _said_tables(args: argparse.Namespace) -> int:
    if args.tables_out:
        print(f"wrote planner tables file {args.tables_out}")
    return 0


def run_stats(args: argparse.Namespace) -> int:
    from dlrm_dist.data.columnar.stats import compute_stats, tables_file

    s = compute_stats(args.directory)
    if _write_outputs(args, s, tables_file):
        return 0
    if "partitions" in s:
        _print_partitions(s)
        _print_features(s)
        return _said_tables(args)
    rows = "  ".join(f"{k} {v['rows']:,} (positive rate {v['label_rate']:.4f})" for k, v in s["splits"].items())
    print(f"{s['directory']} (schema {s['schema']}): {rows}")
    _print_features(s)
    return _said_tables(args)


def _print_features(s: dict) -> None:
    print(f"{'feature':<16} {'table':<16} {'rows':>10} {'seen':>10} {'pooling':>8}")
    for f in s["features"]:
        print(f"{f['feature']:<16} {f['table']:<16} {f['table_size']:>10,} {f['cardinality']:>10,} {f['pooling_factor']:>8.2f}")


def _share(x: Optional[float]) -> str:
    return "-" if x is None else f"{x:.4f}"


def _print_partitions(s: dict) -> None:
    """Per partition: rows, positive rate, new-id rate; then the new-id rate (OOV share) by feature."""
    from dlrm_dist.data.partition_list import format_partitions

    parts = s["partitions"]
    print(f"{s['directory']} (schema {s['schema']}): {len(parts)} partition(s) "
          f"({format_partitions([p['partition'] for p in parts])}), schema fitted on partition {s['fitted_on']}")
    print(f"{'partition':>10} {'rows':>12} {'positive':>9} {'new ids':>8}")
    for p in parts:
        print(f"{p['partition']:>10} {p['rows']:>12,} {p['label_rate']:>9.4f} {_share(p['new_id_rate']):>8}")
    names = [f["feature"] for f in s["features"]]
    cells = {p["partition"]: [_share(p["features"][n]["new_id_rate"]) + (
        f" oov {p['features'][n]['oov_rate']:.3f}" if p["features"][n].get("oov_rate") is not None else "")
        for n in names] for p in parts}
    width = [max(len(n), *(len(c[i]) for c in cells.values())) for i, n in enumerate(names)]
    print("new-id rate by feature (vocabulary features: and the OOV share):")
    print(f"{'partition':>10} " + " ".join(f"{n:>{w}}" for n, w in zip(names, width)))
    for number, row in cells.items():
        print(f"{number:>10} " + " ".join(f"{c:>{w}}" for c, w in zip(row, width)))
    print("new-id rate: " + s["new_id_rate"])


def run_fetch(args: argparse.Namespace) -> int:
    from dlrm_dist.data.movielens import DATASETS, TERMS

    path = DATASETS[args.dataset](args.directory)
    print(f"{args.dataset}: {path}\n{TERMS}")
    return 0


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return value


def _import_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("directory", type=Path, help="TorchRec's layout: day_<i>_{dense,sparse,labels}.npy, i = 0 .. N-1")
    p.add_argument("--out", required=True, type=Path, help="output directory (the columnar layout)")
    p.add_argument("--max-ind-range", type=_positive,
                   help="tables of this many rows, ids modulo it (raw ids, e.g. 40000000); unset: ids are in range "
                        "already and each table has its largest id + 1 rows")
    p.add_argument("--overwrite", action="store_true", help="start over in a directory written by another job")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--no-progress", action="store_true")


def run_import_torchrec(args: argparse.Namespace) -> int:
    from dlrm_dist.data.columnar.import_torchrec import ImportOptions, import_torchrec

    r = import_torchrec(ImportOptions(args.directory, args.out, max_ind_range=args.max_ind_range,
                                      overwrite=args.overwrite, progress=not args.no_progress))
    if args.json:
        print(json.dumps({"out": str(args.out), **r.to_dict()}, indent=1))
    elif r.up_to_date:
        print(f"{args.out} is complete for this job: nothing to do (--overwrite starts over)")
    else:
        rows = sum(r.rows.values())
        rate = rows / r.seconds if r.seconds else 0
        print(f"imported {r.days} days, {rows:,} rows in {r.seconds:.1f} s ({rate:,.0f} rows/s) -> {args.out}")
        print("  " + "  ".join(f"{s} {n:,}" for s, n in r.rows.items()))
    return 0


def _modules(args: argparse.Namespace) -> tuple[str, ...]:
    """What the subcommand imports (the modules that take the time: numpy, pyarrow, pydantic, numba);
    a day partition's job also needs partitions.py (and through it the training config's sections)."""
    if args.command == "preprocess":
        partitioned = args.partition is not None or args.append or args.refit
        return ("dlrm_dist.data.columnar.preprocess", "dlrm_dist.features.io",
                *(("dlrm_dist.data.columnar.partitions",) if partitioned else ()))
    return {"stats": ("dlrm_dist.data.columnar.stats",), "import-torchrec": ("dlrm_dist.data.columnar.import_torchrec",),
            "fetch": ("dlrm_dist.data.movielens",)}[args.command]


def _import_quietly(args: argparse.Namespace) -> None:
    """Imports the subcommand's modules with the collector off, then freezes what they built: no
    collection walks it again (nor copies its pages in a forked worker)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        for name in _modules(args):
            importlib.import_module(name)
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="dlrm-data", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _preprocess_args(sub.add_parser("preprocess", help="raw files -> memory-mapped arrays, by a schema"))
    _stats_args(sub.add_parser("stats", help=STATS_HELP, description=STATS_HELP))
    _import_args(sub.add_parser("import-torchrec", help="TorchRec-layout Criteo days (day_<i>_*.npy) -> a "
                                                        "columnar directory, once"))
    fetch = sub.add_parser("fetch", help="download an example dataset from PyPI (movielens-100k)")
    fetch.add_argument("dataset", choices=("movielens-100k",))
    fetch.add_argument("directory")
    args = parser.parse_args(argv)
    _import_quietly(args)
    commands = {"preprocess": run_preprocess, "stats": run_stats, "fetch": run_fetch,
                "import-torchrec": run_import_torchrec}
    # At exit the interpreter's last collection walks every object of numpy, pyarrow, pydantic and
    # numba (0.4-0.6 s measured here, a quarter of a 2M-line Criteo job): frozen first, it skips them.
    atexit.register(gc.freeze)
    with interrupt_on_sigterm():  # (a stopped job removes its partial files and shared memory, as on Ctrl-C)
        return run_cli(f"dlrm-data {args.command}", lambda: commands[args.command](args))


def entry() -> int:
    """The ``dlrm-data`` command: ``main`` in a process of its own, whose allocator preprocessing
    may set first (before any thread starts: arenas are chosen at a thread's first allocation)."""
    if sys.argv[1:2] == ["preprocess"]:
        from dlrm_dist.data.allocator import keep_freed_memory

        keep_freed_memory()
    code = main()
    end_as_stopped()  # (stopped by Ctrl-C or SIGTERM: the process ends by that signal, as a shell expects)
    return code


if __name__ == "__main__":
    sys.exit(entry())
