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
import warnings
from collections.abc import Sequence
from typing import NoReturn

from medcam.errors import UserError, one_line

logger = logging.getLogger(__name__)

# subcommand -> module under medcam.cli
COMMANDS = {
    "demo": "demo",
    "evaluate": "evaluate",
    "explain": "explain",
    "info": "info",
    "levels": "levels",
}


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``medcam: error: <problem>; see `medcam explain --help```."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"medcam: error: {one_line(message)}; see `{one_line(self.prog)} --help`\n")


def seed_value(text: str) -> int:
    """A ``--seed``: an integer from 0 to 2**64 - 1 (what torch's generators take)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seed {text!r} is not an integer") from None
    if not 0 <= value < 2**64:
        raise argparse.ArgumentTypeError(f"--seed {text} is outside 0 .. 2**64-1")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
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
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:  # --help, or a one-line argument error
        return done.code if isinstance(done.code, int) else 2
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    module = importlib.import_module(f"medcam.cli.{COMMANDS[args.command]}")
    # library warnings (nibabel, numpy, torch, ...) are not the user's to read: -v logs them
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")  # once per place, so a warning in a loop is not kept thousands of times
        try:
            return int(module.run(args))
        except UserError as err:
            print(f"medcam: error: {one_line(err)}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("medcam: interrupted", file=sys.stderr)
            return 130
        finally:
            for warning in caught:
                logger.info("warning: %s", one_line(warning.message))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
