"""``dlrm-data``: fetch example data, preprocess raw files (any schema, or Criteo logs), describe the result.

Imports are deferred to each subcommand, so that the CLI starts without loading torch.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

from dlrm_dist.config.errors import ConfigError
from dlrm_dist.errors import run_cli
from dlrm_dist.fileio import atomic_write_json


def _preprocess_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--schema", help="a feature schema (TOML/JSON): preprocess CSV/TSV/Parquet inputs by it")
    p.add_argument("--dataset", choices=("kaggle", "terabyte"), help="Criteo logs (without --schema)")
    p.add_argument("--input", nargs="+", required=True, type=Path,
                   help="--schema: CSV/TSV (plain or .gz) or Parquet files; kaggle: train.txt; "
                        "terabyte: day_0 .. day_N files in day order (plain or .gz)")
    p.add_argument("--overwrite", action="store_true",
                   help="start over in a directory written by another job (other inputs or options)")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument("--max-ind-range", type=int, default=0, help="hash ids modulo this (e.g. 40000000); 0 = raw")
    p.add_argument("--vocab", action="store_true", help="contiguous ids from a vocabulary of the training days")
    p.add_argument("--frequency-threshold", type=int, default=1, help="--vocab: values seen fewer times share id 0")
    p.add_argument("--kaggle-days", type=int, default=7, help="pseudo-days to cut train.txt into")
    p.add_argument("--workers", type=int, default=max(1, os.cpu_count() or 1))
    p.add_argument("--strict", action="store_true", help="stop at the first malformed line")
    p.add_argument("--no-progress", action="store_true")


def _stats_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("directory")
    p.add_argument("--json", action="store_true")
    p.add_argument("--max-ind-range", type=int, default=0, help="for raw-id directories (TorchRec's preprocessing)")
    p.add_argument("--multi-hot", type=int, nargs="+", help="multi-hot sizes (one, or one per feature)")
    p.add_argument("--tables-out", help="also write a planner tables file (dlrm-plan make --tables)")
    p.add_argument("--dim", type=int, default=128, help="--tables-out: embedding dim of tables whose schema gives none")


def run_schema_preprocess(args: argparse.Namespace) -> int:
    from dlrm_dist.data.columnar.preprocess import Options, preprocess
    from dlrm_dist.features.io import load_schema

    opts = Options(schema=load_schema(args.schema), inputs=list(args.input), out_dir=args.out,
                   strict=args.strict, overwrite=args.overwrite, progress=not args.no_progress)
    r = preprocess(opts)
    if r.up_to_date:
        print(f"{args.out} is complete for this job: nothing to do (--overwrite starts over)")
    else:
        rate = r.rows_read / r.seconds if r.seconds else 0
        print(f"rows read {r.rows_read:,}  skipped {r.skipped:,}  in {r.seconds:.1f} s ({rate:,.0f} rows/s) -> {args.out}")
    print("  " + "  ".join(f"{s} {n:,}" for s, n in r.rows.items()))
    if r.skipped:
        print(f"malformed lines (first {len(r.examples)} of {r.skipped}):")
        for e in r.examples:
            print(f"  {e}")
    return 0


def run_preprocess(args: argparse.Namespace) -> int:
    if args.schema:
        return run_schema_preprocess(args)
    if not args.dataset:
        raise ConfigError("give --schema FILE (any CSV/TSV/Parquet data) or --dataset kaggle|terabyte (Criteo logs)")
    from dlrm_dist.data.criteo.preprocess import Options, preprocess

    opts = Options(dataset=args.dataset, inputs=list(args.input), out_dir=args.out,
                   id_mode="vocab" if args.vocab else "hash", max_ind_range=args.max_ind_range,
                   frequency_threshold=args.frequency_threshold, kaggle_days=args.kaggle_days,
                   workers=args.workers, strict=args.strict, progress=not args.no_progress,
                   overwrite=args.overwrite)
    r = preprocess(opts)
    rate = r.lines / r.seconds if r.seconds else 0
    print(f"rows read {r.lines:,}  written {r.written:,}  skipped {r.skipped:,}  "
          f"in {r.seconds:.1f} s ({rate:,.0f} rows/s) -> {args.out}")
    for d in r.days:
        print(f"  day {d['day']}: {d['rows']:,} rows ({d['skipped']} skipped)")
    if r.skipped:
        print(f"malformed lines (first {len(r.examples)} of {r.skipped}):")
        for e in r.examples:
            print(f"  {e}")
    return 0


def _write_outputs(args: argparse.Namespace, stats: dict, tables_file) -> bool:
    """Writes --tables-out; prints --json. True when the JSON was the whole answer."""
    if args.tables_out:
        atomic_write_json(args.tables_out, tables_file(stats, args.dim), indent=1)
    if args.json:
        print(json.dumps(stats, indent=1))
    return args.json


def _said_tables(args: argparse.Namespace) -> int:
    if args.tables_out:
        print(f"wrote planner tables file {args.tables_out}")
    return 0


def run_columnar_stats(args: argparse.Namespace) -> int:
    from dlrm_dist.data.columnar.stats import compute_stats, tables_file

    s = compute_stats(args.directory)
    if _write_outputs(args, s, tables_file):
        return 0
    rows = "  ".join(f"{k} {v['rows']:,} (positive rate {v['label_rate']:.4f})" for k, v in s["splits"].items())
    print(f"{s['directory']} (schema {s['schema']}): {rows}")
    print(f"{'feature':<16} {'table':<16} {'rows':>10} {'seen':>10} {'pooling':>8}")
    for f in s["features"]:
        print(f"{f['feature']:<16} {f['table']:<16} {f['table_size']:>10,} {f['cardinality']:>10,} {f['pooling_factor']:>8.2f}")
    return _said_tables(args)


def run_fetch(args: argparse.Namespace) -> int:
    from dlrm_dist.data.movielens import DATASETS, TERMS

    path = DATASETS[args.dataset](args.directory)
    print(f"{args.dataset}: {path}\n{TERMS}")
    return 0


def run_stats(args: argparse.Namespace) -> int:
    from dlrm_dist.data.columnar.layout import is_columnar

    if is_columnar(args.directory):
        return run_columnar_stats(args)
    from dlrm_dist.data.criteo.stats import compute_stats, tables_file

    s = compute_stats(args.directory, args.max_ind_range, args.multi_hot)
    if _write_outputs(args, s, tables_file):
        return 0
    print(f"{s['directory']}: train {s['train_rows']:,} rows, val {s['val_rows']:,}, test {s['test_rows']:,} "
          "(val = first half of the last day, test = second half)")
    for d in s["days"]:
        print(f"  day {d['day']:>2}: {d['rows']:>12,} rows  label rate {d['label_rate']:.4f}")
    print(f"{'feature':<8} {'table size':>12} {'cardinality':>12} {'pooling':>8}")
    for f in s["features"]:
        print(f"{f['feature']:<8} {f['table_size']:>12,} {f['cardinality']:>12,} {f['pooling_factor']:>8.2f}")
    return _said_tables(args)


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


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="dlrm-data", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _preprocess_args(sub.add_parser("preprocess", help="raw files -> memory-mapped arrays (by a schema, or Criteo's)"))
    _stats_args(sub.add_parser("stats", help="rows, label rate, cardinality, pooling factor"))
    _import_args(sub.add_parser("import-torchrec", help="TorchRec-layout Criteo days (day_<i>_*.npy) -> a "
                                                        "columnar directory, once"))
    fetch = sub.add_parser("fetch", help="download an example dataset from PyPI (movielens-100k)")
    fetch.add_argument("dataset", choices=("movielens-100k",))
    fetch.add_argument("directory")
    args = parser.parse_args(argv)
    commands = {"preprocess": run_preprocess, "stats": run_stats, "fetch": run_fetch,
                "import-torchrec": run_import_torchrec}
    return run_cli(f"dlrm-data {args.command}", lambda: commands[args.command](args))


if __name__ == "__main__":
    sys.exit(main())
