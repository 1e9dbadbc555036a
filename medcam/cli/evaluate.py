"""``medcam evaluate``: score CAM methods on a dataset split; write results.csv, summary.md and plots.

The YAML config names the model (a medcam checkpoint; default the demo model), the
dataset reader, root and split, the target class (and for segmentation the pixel set
M and the ground-truth label), the methods, the metrics and the sample count; see
configs/eval_*.yaml and docs/metrics.md. A rerun into the same folder resumes; under
torchrun every rank takes its share of the samples and rank 0 merges them.
"""

from __future__ import annotations

import argparse
from typing import Any

EXAMPLE = """\
example (at the root of a clone: configs/ and training/; first one small held-out phantom):
  python training/make_synthetic.py kits23 data/eval_kits_phantom --cases 1 --seed 1000 \\
      --shape 32 64 64 --spacing 5 3.2 3.2
  medcam evaluate --config configs/eval_kits_phantom.yaml --samples 1 --out runs/eval_example
"""


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "evaluate",
        help="score CAM methods (faithfulness, localisation, sanity) over a dataset split",
        description=__doc__,
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", required=True, metavar="YAML", help="evaluation config, e.g. configs/eval_x.yaml")
    parser.add_argument("--out", metavar="DIR", help="output folder (default: the config's output)")
    again = parser.add_mutually_exclusive_group()
    again.add_argument(
        "--resume", action="store_true", help="continue an interrupted run in --out (the default when it exists)"
    )
    again.add_argument("--overwrite", action="store_true", help="delete the evaluation in --out and start again")
    parser.add_argument("--samples", type=int, metavar="N", help="evaluate at most N samples (overrides data.samples)")
    parser.add_argument(
        "--shard", metavar="R/W", help="run only shard R of W (without torchrun, e.g. a job array); then --merge"
    )
    parser.add_argument("--merge", action="store_true", help="merge the finished shards in --out and write the report")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args: argparse.Namespace) -> int:
    import dataclasses
    import os
    import sys
    from pathlib import Path

    from medcam.errors import UserError
    from medcam.evaluate.command import merge_config, parse_shard, run_config, under_torchrun
    from medcam.evaluate.config import load_config

    config = load_config(args.config)
    _check_data_root(args.config, config.data.root)
    if args.samples is not None:
        if args.samples < 1:
            raise UserError(f"--samples must be at least 1, got {args.samples}")
        config = dataclasses.replace(config, data=dataclasses.replace(config.data, samples=args.samples))
    folder = Path(args.out or config.output)
    if args.merge:
        if args.shard or args.overwrite:
            raise UserError("--merge only joins finished shards; drop --shard / --overwrite")
        merged = merge_config(config, folder)
        print(merged.read_text(encoding="utf-8"))
        print(f"merged into {folder}")
        return 0
    shard = parse_shard(args.shard) if args.shard else None
    rank = int(os.environ.get("RANK", "0")) if under_torchrun() and shard is None else 0
    bar = None if args.no_progress or rank != 0 else _Bar()
    try:
        summary = run_config(config, folder, overwrite=args.overwrite, shard=shard, progress=bar)
    finally:
        if bar is not None:
            bar.close()
    if summary is not None:
        print(summary.read_text(encoding="utf-8"))
        print(f"results, summary.md and plots in {folder}")
    elif shard is not None:
        print(
            f"shard {shard.rank}/{shard.world} finished in {folder}; when all have: medcam evaluate --merge",
            file=sys.stderr,
        )
    return 0


class _Bar:
    """A tqdm bar over samples x methods, created at the first report (the total is known then)."""

    def __init__(self) -> None:
        self.bar: Any = None

    def __call__(self, done: int, total: int, what: str) -> None:
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="expl", desc="evaluate", dynamic_ncols=True)
        self.bar.update(done - self.bar.n)
        self.bar.set_postfix_str(what, refresh=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _check_data_root(config_path: str, root: str) -> None:
    """A missing data root: name the command the config's own comments give to write it, if any.

    The shipped configs evaluate synthetic data written by ``training/make_synthetic.py``
    and say so in their first lines; a newcomer who skipped that step gets that line.
    """
    import re
    from pathlib import Path

    from medcam.errors import UserError

    if Path(root).exists():
        return
    text = Path(config_path).read_text(errors="replace", encoding="utf-8")
    writes = [m.group(1).strip() for m in re.finditer(r"^#\s*(python\s+training/make_synthetic\.py\s.*)$", text, re.M)]
    writes = [w for w in writes if root in w.split()]
    if writes:
        raise UserError(
            f"data.root {root} does not exist; write this config's data first: {writes[0]} "
            "(from the root of a clone), or point data.root at your copy of the dataset"
        )
