"""The ``medcam`` command line: parses arguments and calls the public API.

Each subcommand lives in its own module with ``add_parser(subparsers)`` and
``run(args) -> int``; those modules import torch and friends only inside ``run``
so ``medcam --help`` stays fast. A :class:`~medcam.errors.UserError` becomes one
line on stderr and exit status 2; any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from medcam.errors import UserError

# subcommand -> module under medcam.cli
COMMANDS = {
    "demo": "demo",
    "evaluate": "evaluate",
    "explain": "explain",
    "info": "info",
    "levels": "levels",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medcam",
        description="Class activation maps for medical segmentation and classification networks.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS.values():
        importlib.import_module(f"medcam.cli.{module}").add_parser(sub)
    for command in sub.choices.values():
        # subcommands reuse their module docstring as --help text: drop its reST literal quotes
        if command.description:
            command.description = command.description.replace("``", "`")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    module = importlib.import_module(f"medcam.cli.{COMMANDS[args.command]}")
    try:
        return int(module.run(args))
    except UserError as err:
        print(f"medcam: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("medcam: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
