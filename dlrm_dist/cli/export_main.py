"""dlrm-export: a checkpoint as an unsharded inference program (torch.export) with its manifest.

    dlrm-export runs/ckpt --out exported/                  # float32 tables, the best checkpoint
    dlrm-export runs/latest --step 400 --out exported/     # a run directory, checkpoint 400
    dlrm-export runs/ckpt --out exported-int8/ --quantize int8 [--data DIR]

int8 scores the float and int8 models on the training config's eval split (from --data on
this machine, or where the config says) and fails, writing nothing, when int8 loses more
than --max-auc-loss of AUC or adds more than --max-logloss-increase of log-loss. Data given
with --data must have been preprocessed with the checkpoint's schema.
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
    p.add_argument("--quantize", choices=("none", "int8"), default="none", help="table storage (default float32)")
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
    from dlrm_dist.checkpoint.manager import export_source
    from dlrm_dist.fileio import DirLock
    from dlrm_dist.serving.export import CostLimits, export_checkpoint  # torch: after argument parsing

    limits = CostLimits(args.max_auc_loss, args.max_logloss_increase)
    with DirLock(args.out, f"{PROG} --out"):  # one writer per export directory (a busy one refused first)
        source = export_source(args.checkpoint, args.step)  # which checkpoint RUN_OR_CKPT means, and why
        print(f"exporting step {source.step} ({source.why}): {source.path}",
              file=sys.stderr if args.json else sys.stdout, flush=True)
        manifest = export_checkpoint(str(source.path), args.out, args.quantize, args.data, not args.no_progress,
                                     limits)
    shown = manifest.model_dump(mode="json", exclude={"config"})
    if args.json:
        print(json.dumps(shown, indent=2, sort_keys=True))
        return 0
    print(f"wrote {args.out}: step {manifest.step} of {manifest.checkpoint}, {len(manifest.tables)} table(s) "
          f"({args.quantize}), {manifest.dense_features} dense + {len(manifest.sparse_features)} sparse features")
    q = shown.get("quantization")
    if q and q["measured"]:
        print(f"int8 vs float on {q['samples']:,} {q['split']} samples: AUC {q['int8_auc']:.5f} vs "
              f"{q['float_auc']:.5f} (difference {q['auc_difference']:+.5f}), log-loss {q['int8_logloss']:.5f} vs "
              f"{q['float_logloss']:.5f}: within the limits")
    elif q:
        print(f"int8: cost {q['note']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
