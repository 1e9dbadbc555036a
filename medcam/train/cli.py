"""Argument parsing shared by the thin scripts in ``training/`` (they call :func:`run` and report its result)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import TYPE_CHECKING

from medcam.errors import UserError

if TYPE_CHECKING:
    from medcam.train.loop import RunResult


SMOKE = (
    "training.epochs=1",
    "training.steps_per_epoch=2",
    "training.val_max_cases=1",
    "dataset.max_cases=2",
    "training.num_workers=0",
    "training.threads=1",
    "training.sw_overlap=0.0",
)


def build_parser(task: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=f"train a medcam {task} model from a YAML config")
    parser.add_argument("--config", required=True, help="YAML experiment config (see configs/)")
    parser.add_argument("--root", help="dataset root (overrides dataset.root)")
    parser.add_argument("--output", help="run folder (overrides output)")
    parser.add_argument("--epochs", type=int, help="overrides training.epochs")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override any config value, e.g. --set training.lr=3e-4 (repeatable)",
    )  # fmt: skip
    parser.add_argument("--resume", action="store_true", help="continue from <output>/last.pt")
    parser.add_argument(
        "--smoke", action="store_true",
        help="a few steps end to end (1 epoch, 2 steps, 2 training and 1 validation case, 1 thread)",
    )  # fmt: skip
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def run(argv: Sequence[str], task: str) -> RunResult:
    """Parse ``argv``, load the config with its overrides and train; raises :class:`UserError`."""
    args = build_parser(task).parse_args(argv)
    from medcam.train.config import load_config
    from medcam.train.loop import train

    overrides = list(SMOKE) if args.smoke else []
    overrides += args.overrides
    if args.root:
        overrides.append(f"dataset.root={args.root}")
    if args.output:
        overrides.append(f"output={args.output}")
    if args.epochs is not None:
        overrides.append(f"training.epochs={args.epochs}")
    config = load_config(args.config, overrides)
    if config.task != task:
        raise UserError(f"{args.config} is a {config.task} config; use training/train_{config.task}.py")
    return train(config, resume=args.resume, progress=not args.no_progress)
