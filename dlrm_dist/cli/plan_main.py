"""``dlrm-plan``: make, inspect, diff, validate and compare sharding plans.

Each subcommand lives in its own module; this file only wires argparse. Nothing here
creates a process group or imports the trainer.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from dlrm_dist.cli import plan_compare, plan_diff, plan_inspect, plan_make, plan_validate
from dlrm_dist.errors import run_cli
from dlrm_dist.logs import quiet_libraries

COMMANDS = {
    "make": plan_make,
    "inspect": plan_inspect,
    "diff": plan_diff,
    "validate": plan_validate,
    "compare": plan_compare,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dlrm-plan", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, module in COMMANDS.items():
        p = sub.add_parser(name, help=module.HELP, description=module.__doc__)
        module.add_arguments(p)
        p.set_defaults(run=module.run)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_libraries()
    return run_cli(f"dlrm-plan {args.command}", lambda: args.run(args))


if __name__ == "__main__":
    sys.exit(main())
