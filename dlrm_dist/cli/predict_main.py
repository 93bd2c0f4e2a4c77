"""dlrm-predict: score raw rows or a data split with an exported model; metrics when labels are present.

    dlrm-predict exported/ --input rows.csv --out scores.csv --keep user_id   # raw rows (.csv .tsv .parquet .jsonl)
    dlrm-predict exported/ --data data/criteo --split test --out preds.npy    # a preprocessed split
    dlrm-predict exported/ --split val --out preds.csv --json      # demo data: no --data needed
    dlrm-predict exported/ --delta delta-1/ --delta delta-2/ --input rows.csv   # a chain of deltas applied

--input reads rows in the schema's input format and encodes them as preprocessing did (the
export carries the fitted pipeline: vocabularies, hash settings, dense statistics): one
score per row, in input order; the label column is not needed (present, metrics are given).
A missing column or a bad cell is named by file, line and column.

The export is checked before it is loaded (its manifest, and model.pt2 inspected to hold
only tensors and PyTorch operators: nothing in it is unpickled or run as Python); --data
must have been preprocessed with the export's schema (each difference is named). --delta
applies deltas (dlrm-export --since) to the export in chain order, each link checked: a delta
of another export, out of order, after a missing link, or damaged is refused by name (exit 4).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

from dlrm_dist.errors import DlrmError, run_cli
from dlrm_dist.logs import init_logging

PROG = "dlrm-predict"
OUTPUTS = (".npy", ".csv")


class PredictError(DlrmError):
    """Bad arguments to dlrm-predict (the output format)."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("model", help="an export directory (dlrm-export)")
    p.add_argument("--delta", action="append", default=[], metavar="DELTA",
                   help="a delta (dlrm-export --since) applied to the export; repeat in chain order")
    p.add_argument("--input", help="raw rows to score: .csv/.tsv (the schema's input format), .parquet or .jsonl")
    p.add_argument("--keep", nargs="+", action="extend", default=[], metavar="COL",
                   help="--input: columns copied into the .csv output beside the score (e.g. an id); repeat or list several")
    p.add_argument("--data", help="preprocessed data directory (default: the training config's)")
    p.add_argument("--split", choices=("val", "test"), default="test")
    p.add_argument("--out", help="scores: .npy (probabilities) or .csv (score,label; with --input: score and "
                   "the --keep columns)")
    p.add_argument("--batch-size", type=int, help="samples per batch (default: the training's global batch; "
                   "the synthetic data's eval split is a number of such batches)")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.add_argument("--no-progress", action="store_true")
    return p


def write_scores(path: Path, scores, labels) -> None:
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".npy":
        np.save(path, scores)
    else:
        np.savetxt(path, np.stack([scores, labels], axis=1), delimiter=",", header="score,label", comments="",
                   fmt=["%.8f", "%d"])


def run(args: argparse.Namespace) -> int:
    if args.out and Path(args.out).suffix not in OUTPUTS:
        raise PredictError(f"--out {args.out!r}: write scores as {' or '.join(OUTPUTS)}")
    if args.batch_size is not None and args.batch_size < 1:
        raise PredictError(f"--batch-size {args.batch_size} must be >= 1")
    from dlrm_dist.serving.delta import check_base

    check_base(args.model)  # a delta given as the model is named as such
    if args.input:
        return run_input(args)
    if args.keep:
        raise PredictError("--keep applies to --input (raw rows); a preprocessed split holds no other columns")
    from dlrm_dist.serving.delta import load_chain
    from dlrm_dist.serving.predict import export_config, open_split, score

    loaded = load_chain(args.model, args.delta)
    _say_chain(args, loaded.manifest.step)
    cfg = export_config(loaded.manifest)
    data = open_split(cfg, args.data, args.split, f"the export {args.model}")
    batch_size = args.batch_size or cfg.train.global_batch_size
    result = score(loaded.module, data, loaded.feature_names, batch_size, not args.no_progress)
    if args.out:
        write_scores(Path(args.out), result.scores, result.labels)
    m = result.metrics.metrics() if result.metrics else None  # no step: scoring has none
    if args.json:
        print(json.dumps({"samples": len(result.scores), "split": args.split, "out": args.out, "metrics": m}, indent=2))
    else:
        print(f"scored {len(result.scores):,} samples ({args.split})" + (f" -> {args.out}" if args.out else ""))
        if m:
            print("  " + "  ".join(f"{k} {m[k]:.4f}" for k in ("auc", "ne", "logloss", "calibration", "accuracy", "ctr")))
    return 0


def run_input(args: argparse.Namespace) -> int:
    """--input: raw rows scored through the export's fitted pipeline."""
    if args.data:
        raise PredictError("give --input (raw rows) or --data (a preprocessed directory), not both")
    if args.keep and args.out and Path(args.out).suffix != ".csv":
        raise PredictError(f"--keep needs a .csv --out (a .npy file holds scores only), not {args.out!r}")
    from dlrm_dist.serving.predictor import Predictor
    from dlrm_dist.serving.score_rows import score_file

    predictor = Predictor.load(args.model, deltas=args.delta)
    _say_chain(args, predictor.export.manifest.step)
    out = Path(args.out) if args.out else None
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
    result = score_file(predictor, Path(args.input), args.keep, args.batch_size or 4096, out, not args.no_progress)
    if args.json:
        print(json.dumps({"samples": result.rows, "input": args.input, "out": args.out, "metrics": result.metrics},
                         indent=2))
    else:
        print(f"scored {result.rows:,} rows of {args.input}" + (f" -> {args.out}" if args.out else ""))
        if result.metrics:
            m = result.metrics
            print("  " + "  ".join(f"{k} {m[k]:.4f}" for k in ("auc", "ne", "logloss", "calibration", "accuracy", "ctr")))
    return 0


def _say_chain(args: argparse.Namespace, step: int) -> None:
    if args.delta:
        print(f"applied {len(args.delta)} delta(s) to {args.model}: the model of step {step}",
              file=sys.stderr if args.json else sys.stdout, flush=True)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    init_logging()
    return run_cli(PROG, lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
