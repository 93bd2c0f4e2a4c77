"""dlrm-export: a checkpoint as an unsharded inference program (torch.export) with its manifest.

    dlrm-export runs/ckpt --out exported/                  # float32 tables, the best checkpoint
    dlrm-export runs/latest --step 400 --out exported/     # a run directory, checkpoint 400
    dlrm-export runs/ckpt --out exported-int8/ --quantize int8 [--data DIR]
    dlrm-export runs/latest --since exported/ --out delta-1/               # only what changed since exported/
    dlrm-export runs/latest --since exported/ --delta delta-1/ --out delta-2/   # the next link of the chain

int8 scores the float and int8 models on the training config's eval split (from --data on
this machine, or where the config says) and fails, writing nothing, when int8 loses more
than --max-auc-loss of AUC or adds more than --max-logloss-increase of log-loss. Data given
with --data must have been preprocessed with the checkpoint's schema.

--since writes a delta instead (serving/delta_write.py): the table rows that differ from the
export (after the --delta chain given so far is applied), compared bit for bit (float) or in
their int8 form (an int8 base), plus the dense weights in full, in the base's precision. Apply
a chain with dlrm-predict / dlrm-serve EXPORT --delta D1 --delta D2 ...
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Optional, Sequence

from dlrm_dist.errors import run_cli
from dlrm_dist.logs import init_logging

PROG = "dlrm-export"
DEFAULT_LIMITS = (0.005, 0.01)  # serving.export.CostLimits' defaults (not imported: torch loads after parsing)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("checkpoint", metavar="RUN_OR_CKPT",
                   help="a checkpoint (step_NNNNNNNN), a checkpoint_dir or a run directory (its checkpoint_dir): "
                        "the best evaluation's checkpoint (early stopping), else the newest, unless --step names one")
    p.add_argument("--step", type=int, metavar="N", help="export checkpoint N of the checkpoint_dir or run")
    p.add_argument("--out", required=True, help="the export directory to write")
    p.add_argument("--quantize", choices=("none", "int8"), help="table storage (default float32; with --since: the "
                   "base's, and no other)")
    p.add_argument("--since", metavar="EXPORT", help="write a delta: only what changed since this export (the chain's "
                   "base)")
    p.add_argument("--delta", action="append", default=[], metavar="DELTA",
                   help="with --since: a delta already applied to EXPORT, in chain order (repeat); the new delta "
                        "follows the last")
    p.add_argument("--data", help="the preprocessed data directory on this machine (default: the training config's): its "
                   "vocabularies are copied into the export (to score raw rows), int8 is compared on its eval split")
    p.add_argument("--max-auc-loss", type=float, default=DEFAULT_LIMITS[0], metavar="X",
                   help=f"int8: fail if its AUC is more than X below float's (default {DEFAULT_LIMITS[0]})")
    p.add_argument("--max-logloss-increase", type=float, default=DEFAULT_LIMITS[1], metavar="X",
                   help=f"int8: fail if its log-loss is more than X above float's (default {DEFAULT_LIMITS[1]})")
    p.add_argument("--json", action="store_true", help="print the manifest (without the config) as JSON")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    init_logging()
    return run_cli(PROG, lambda: run(args))


def run(args: argparse.Namespace) -> int:
    if args.since is not None or args.delta:
        return run_delta(args)
    from dlrm_dist.checkpoint.manager import export_source
    from dlrm_dist.fileio import DirLock
    from dlrm_dist.serving.export import CostLimits, export_checkpoint  # torch: after argument parsing

    limits = CostLimits(args.max_auc_loss, args.max_logloss_increase)
    with DirLock(args.out, f"{PROG} --out"):  # one writer per export directory (a busy one refused first)
        source = export_source(args.checkpoint, args.step)  # which checkpoint RUN_OR_CKPT means, and why
        print(f"exporting step {source.step} ({source.why}): {source.path}",
              file=sys.stderr if args.json else sys.stdout, flush=True)
        manifest = export_checkpoint(str(source.path), args.out, args.quantize or "none", args.data,
                                     not args.no_progress, limits)
    shown = manifest.model_dump(mode="json", exclude={"config"})
    if args.json:
        print(json.dumps(shown, indent=2, sort_keys=True))
        return 0
    print(f"wrote {args.out}: step {manifest.step} of {manifest.checkpoint}, {len(manifest.tables)} table(s) "
          f"({manifest.quantize}), {manifest.dense_features} dense + {len(manifest.sparse_features)} sparse features")
    q = shown.get("quantization")
    if q and q["measured"]:
        print(f"int8 vs float on {q['samples']:,} {q['split']} samples: AUC {q['int8_auc']:.5f} vs "
              f"{q['float_auc']:.5f} (difference {q['auc_difference']:+.5f}), log-loss {q['int8_logloss']:.5f} vs "
              f"{q['float_logloss']:.5f}: within the limits")
    elif q:
        print(f"int8: cost {q['note']}")
    return 0


def run_delta(args: argparse.Namespace) -> int:
    """--since: a delta of the checkpoint against the export (and the chain given), and what it carries."""
    from dlrm_dist.serving.delta_format import DeltaArgumentError

    if args.since is None:
        raise DeltaArgumentError("--delta names the chain a new delta follows: give its base export with --since")
    if args.data is not None or (args.max_auc_loss, args.max_logloss_increase) != DEFAULT_LIMITS:
        raise DeltaArgumentError("--data, --max-auc-loss and --max-logloss-increase apply to a full export: a delta "
                                 "carries no vocabularies and is not scored (its int8 rows are what a full int8 "
                                 "export of the checkpoint would hold)")
    from dlrm_dist.checkpoint.manager import export_source
    from dlrm_dist.fileio import DirLock
    from dlrm_dist.serving.delta_write import check_out, export_delta

    check_out(args.out, args.since, args.delta)  # before the lock creates --out
    with DirLock(args.out, f"{PROG} --since --out"):
        source = export_source(args.checkpoint, args.step)
        print(f"delta of step {source.step} ({source.why}): {source.path}",
              file=sys.stderr if args.json else sys.stdout, flush=True)
        report = export_delta(str(source.path), args.since, args.out, args.delta, args.quantize)
    m = report.manifest
    if args.json:
        print(json.dumps({"delta": args.out, "identity": _identity(args.out), "link": m.link, "step": m.step,
                          "applies_to": m.applies_to.model_dump(mode="json"), "quantize": m.quantize,
                          "compared": m.compared,
                          "tables": {t.table: {"changed": t.changed, "rows": t.rows} for t in report.tables},
                          "dense_tensors": len(m.state), "bytes": report.delta_bytes,
                          "full_export_bytes": report.full_export_bytes}, indent=2, sort_keys=True))
        return 0
    after = f"delta {args.delta[-1]}" if args.delta else f"the export {args.since}"
    print(f"wrote {args.out}: step {m.step} of {m.checkpoint}, link {m.link} of the chain on {args.since} "
          f"(applies to {after}, step {m.applies_to.step}); rows compared {m.compared}")
    for t in report.tables:
        print(f"  {t.table}: {t.changed:,} of {t.rows:,} rows ({100 * t.changed / t.rows:.1f}%)")
    print(f"  dense and other state: {len(m.state)} tensor(s) in full")
    share = 100 * report.delta_bytes / report.full_export_bytes if report.full_export_bytes else float("nan")
    print(f"size {_mb(report.delta_bytes)}, {share:.1f}% of a full export ({_mb(report.full_export_bytes)}, "
          f"the base's {args.since}/model.pt2)")
    return 0


def _identity(delta_dir: str) -> str:
    from dlrm_dist.serving.delta_format import DELTA_FILE, sha256_bytes

    with open(f"{delta_dir}/{DELTA_FILE}", "rb") as f:
        return sha256_bytes(f.read())


def _mb(n: int) -> str:
    return f"{n / 2**20:.2f} MB" if n >= 2**20 else f"{n / 2**10:.1f} KB"


if __name__ == "__main__":
    sys.exit(main())
