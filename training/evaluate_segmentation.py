"""Dice of a segmentation checkpoint on KiTS-layout cases or on held-out phantoms, on the original grids.

python training/evaluate_segmentation.py --model medcam/assets/demo_unet3d.pt --phantoms 20 --seed 1000
python training/evaluate_segmentation.py --model runs/kits23_unet3d/best.pt --root data/kits23/dataset --split val
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Iterator

import numpy as np

from medcam.errors import UserError


def main() -> int:
    parser = argparse.ArgumentParser(description="evaluate a medcam segmentation checkpoint (mean Dice per case)")
    parser.add_argument("--model", required=True, help="medcam checkpoint (.pt)")
    parser.add_argument("--root", help="KiTS23-layout folder to evaluate on")
    parser.add_argument("--split", default=None, choices=["train", "val", "test"], help="split of --root")
    parser.add_argument("--phantoms", type=int, help="evaluate on this many phantom cases made in memory instead")
    parser.add_argument("--seed", type=int, default=1000, help="dataset seed of the phantoms (training used 0)")
    parser.add_argument("--roi", type=int, nargs="+", help="sliding-window size (default: the checkpoint's patch)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import torch

    from medcam.data.kits import KiTS23
    from medcam.data.synthetic import case_seed, kits_phantom
    from medcam.models.checkpoint import load_checkpoint
    from medcam.train.validation import evaluate_cases

    if args.threads:
        torch.set_num_threads(args.threads)

    def cases() -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        if args.phantoms:
            for i in range(args.phantoms):
                p = kits_phantom(case_seed(args.seed, i))
                yield p.image[None], p.label, p.affine
            return
        data = KiTS23(args.root)
        for entry in data.entries(args.split):
            record = data.load(entry)
            yield record["image"], record["label"][0], record["affine"]

    try:
        if not args.phantoms and not args.root:
            raise UserError("give --phantoms N or --root FOLDER")
        bundle = load_checkpoint(args.model)
        start = time.perf_counter()
        result = evaluate_cases(bundle, cases(), roi_size=args.roi)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(result.table())
    print(f"\n{len(result.per_case)} cases, {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
