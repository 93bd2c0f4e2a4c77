"""``dlrm-plan``: make, inspect, diff, validate, compare and calibrate sharding plans.

Each subcommand lives in its own module; this file only wires argparse. Only the chosen
subcommand's module is imported (the others are listed by name and help), so ``inspect`` and
``validate``, which read a plan without TorchRec, start without loading it, and ``make`` plans
without it (except with ``--calibration``). Nothing here
creates a process group or imports the trainer.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from types import ModuleType
from typing import Optional, Sequence

from dlrm_dist.errors import run_cli

# name -> (module, help): the help is repeated here so that listing commands imports none of them
COMMANDS = {
    "make": ("plan_make", "plan tables onto a topology and write a plan file"),
    "inspect": ("plan_inspect", "show a plan per rank and in summary (--json, --html, --measured)"),
    "diff": ("plan_diff", "show tables that moved or changed sharding between two plans"),
    "validate": ("plan_validate", "check a plan against tables and a world size (exit 1 listing every mismatch)"),
    "compare": ("plan_compare", "compare a plan with round-robin and greedy-by-size baselines (and TorchRec's planner)"),
    "calibrate": ("plan_calibrate", "measure this machine's kernels, collectives and GEMMs into a calibration file"),
}


def command_module(name: str) -> ModuleType:
    return importlib.import_module(f"dlrm_dist.cli.{COMMANDS[name][0]}")


def build_parser(argv: Optional[Sequence[str]] = None) -> argparse.ArgumentParser:
    """The parser; the subcommand named in ``argv`` (every one when None) gets its full arguments."""
    args = list(sys.argv[1:] if argv is None else argv)
    chosen = next((a for a in args if not a.startswith("-")), None)
    parser = argparse.ArgumentParser(prog="dlrm-plan", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (_, help_text) in COMMANDS.items():
        if argv is not None and chosen in COMMANDS and name != chosen:
            sub.add_parser(name, help=help_text)
            continue
        module = command_module(name)
        p = sub.add_parser(name, help=module.HELP, description=module.__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(p)
        p.set_defaults(run=module.run)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser(sys.argv[1:] if argv is None else argv).parse_args(argv)
    if args.command not in ("inspect", "validate", "diff"):
        from dlrm_dist.logs import quiet_libraries  # silences TorchRec/fbgemm loggers: only where they load

        quiet_libraries()
    return run_cli(f"dlrm-plan {args.command}", lambda: args.run(args))


if __name__ == "__main__":
    sys.exit(main())
