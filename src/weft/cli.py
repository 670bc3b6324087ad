"""The `weft` command.

Each subsystem adds its own sub-commands through a `register(subparsers)`
function in its package's `cli.py`; this file only wires them together, so
the command grows without one file owning every feature.
"""

from __future__ import annotations

import importlib
import sys

from weft import __version__
from weft.args import ArgumentParser
from weft.errors import WeftError

# Modules that provide `register(subparsers)`. A missing one is skipped so a
# partial install still gives a working command.
_COMMAND_MODULES = [
    "weft.demo.cli",
    "weft.topology.cli",
    "weft.collectives.cli",
    "weft.planner.cli",
    "weft.planner.profile_cli",
    "weft.train_cli",
    "weft.cluster.cli",
    "weft.serve.cli",
]


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="weft",
        description="Adaptive, topology-aware distributed training of ordinary PyTorch models.",
    )
    parser.add_argument("--version", action="version", version=f"weft {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    v = sub.add_parser("version", help="print weft's version")
    v.set_defaults(func=lambda args: print(f"weft {__version__}") or 0)
    for name in _COMMAND_MODULES:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue
            raise
        mod.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # a bad argument (2), --help or --version (0)
        return int(exc.code or 0)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        rc = args.func(args)
    except WeftError as exc:
        print(f"weft: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("weft: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
