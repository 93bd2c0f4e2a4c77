"""dlrm-report: draw one or more runs (loss, eval metrics, throughput, per-rank step time).

    dlrm-report runs/a runs/b --out report.html     # self-contained page (figure + table)
    dlrm-report runs/a --out report.png             # the figure alone
    dlrm-report runs/a --json                       # the summary table as JSON on stdout

A run over day partitions with progressive validation also gets its next-day AUC per partition
(each partition scored by the model before training on it): a table after the summary, a
row of panels in the figure, ``progressive`` in --json, and ``next_day_auc`` (their mean after
the first partition) in the summary.

A run still writing (or killed) may leave its last line cut short: it is skipped, with a
note on stderr, as are the lines a restart from a checkpoint logged again. Damage elsewhere
is named (file, line, field) with exit 2. Non-finite numbers are null in --json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

from dlrm_dist.errors import run_cli
from dlrm_dist.fileio import atomic_write_bytes, atomic_write_text
from dlrm_dist.metrics.progressive import partition_table
from dlrm_dist.metrics.runs import RunDirError, read_run

PROG = "dlrm-report"
FORMATS = (".html", ".png")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("runs", nargs="+", help="run directories (train.run_dir of dlrm-train)")
    p.add_argument("--out", help="report.html or report.png")
    p.add_argument("--name", action="append", help="a label per run (default: the directory name)")
    p.add_argument("--json", action="store_true", help="print the summary table as JSON")
    return p


def _table(rows: list[dict]) -> str:
    keys = ["run", "step", "auc", "ne", "logloss", "calibration", "samples_per_s", "max_rank_step_ms"]
    if any(row.get("next_day_auc") is not None for row in rows):
        keys.append("next_day_auc")
    lines = ["  ".join(f"{k:>16}" for k in keys)]
    for row in rows:
        cells = []
        for k in keys:
            v = row.get(k)
            cells.append(f"{v:>16.4f}" if isinstance(v, float) else f"{'' if v is None else v!s:>16}")
        lines.append("  ".join(cells))
    lines += [f"{row['run']}: diverged: {row['diverged']}" for row in rows if row.get("diverged")]
    return "\n".join(lines + _partition_lines(rows))


def _partition_lines(rows: list[dict]) -> list[str]:
    """Next-day AUC by partition, one column per run with progressive records (none: no lines)."""
    names, body = partition_table(rows)
    if not names:
        return []
    width = max(16, *(len(n) for n in names[1:]))
    out = ["", "next-day AUC by partition (each scored before training on it):",
           f"{names[0]:>9}  " + "  ".join(f"{n:>{width}}" for n in names[1:])]
    for partition, *aucs in body:
        out.append(f"{partition:>9}  " + "  ".join(f"{a:>{width}.4f}" if isinstance(a, float) else f"{'-':>{width}}"
                                                   for a in aucs))
    return out


def run(args: argparse.Namespace) -> int:
    names = args.name or []
    if names and len(names) != len(args.runs):
        raise RunDirError(f"--name given {len(names)} time(s) for {len(args.runs)} run(s): give one per run or none")
    if args.out and Path(args.out).suffix not in FORMATS:
        raise RunDirError(f"--out {args.out!r}: the report is written as {' or '.join(FORMATS)}")
    runs = [read_run(d, names[i] if names else None) for i, d in enumerate(args.runs)]
    from dlrm_dist.metrics import plots  # matplotlib: only when drawing

    rows = plots.summary_rows(runs)
    for run in runs:
        for note in run.notes:
            print(f"{PROG}: note: {note}", file=sys.stderr)
    print(json.dumps(rows, indent=2, allow_nan=False) if args.json else _table(rows))
    if args.out:
        png = plots.png_bytes(plots.draw(runs))
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        # One file, published whole: a reader (a browser reloading it) never sees half of it.
        if out.suffix == ".png":
            atomic_write_bytes(out, png)
        else:
            atomic_write_text(out, plots.html_page(runs, png))
        print(f"wrote {out}", file=sys.stderr)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli(PROG, lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
