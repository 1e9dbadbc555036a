"""Write a synthetic dataset in the real on-disk layout (seeded, deterministic).

python training/make_synthetic.py kits23 data/kits23_phantom --cases 40 --seed 0
python training/make_synthetic.py kits23 data/small --cases 2 --shape 32 64 64 --spacing 5 3.2 3.2   # a small crop
python training/make_synthetic.py opg data/opg --cases 8 2 2          # train/validation/test
python training/make_synthetic.py opg-binary data/opg_binary --cases 8 2 2
python training/make_synthetic.py cityscapes data/cityscapes --cases 8 2 1
python training/make_synthetic.py iqothnccd data/iqothnccd --cases 20 10 20   # normal/benign/malignant
python training/make_synthetic.py nnunet data/nnUNet_raw --cases 6
python training/make_synthetic.py decathlon data/decathlon --cases 6
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from medcam.data import synthetic
from medcam.errors import UserError


def write(
    dataset: str,
    root: str,
    cases: list[int],
    seed: int,
    shape: tuple[int, ...] | None,
    spacing: tuple[float, ...] | None = None,
) -> None:
    size: dict[str, Any] = {"shape": shape} if shape and dataset in ("kits23", "nnunet", "decathlon") else {}
    if spacing is not None:
        if dataset != "kits23":
            raise UserError("--spacing is a kits23 option (the phantom's voxel size in mm, slice/row/column)")
        size["spacing"] = spacing
    if shape and dataset not in ("kits23", "nnunet", "decathlon"):
        size = {"size": shape}
    if dataset in ("kits23", "nnunet", "decathlon"):
        if len(cases) != 1:
            raise UserError(f"{dataset} takes one --cases number")
        writer = {
            "kits23": synthetic.write_kits_dataset,
            "nnunet": synthetic.write_nnunet_dataset,
            "decathlon": synthetic.write_decathlon_dataset,
        }[dataset]
        writer(root, cases[0], seed=seed, **size)
        return
    if len(cases) != 3:
        raise UserError(f"{dataset} takes three --cases numbers (per split, or per class for iqothnccd)")
    if dataset in ("opg", "opg-binary"):
        synthetic.write_opg_dataset(root, tuple(cases), seed=seed, binary=dataset == "opg-binary", **size)
    elif dataset == "cityscapes":
        synthetic.write_cityscapes_dataset(root, tuple(cases), seed=seed, **size)
    else:
        synthetic.write_iqothnccd_dataset(root, tuple(cases), seed=seed, **size)


def main() -> int:
    parser = argparse.ArgumentParser(description="write a synthetic dataset in its real on-disk layout")
    parser.add_argument(
        "dataset", choices=["kits23", "opg", "opg-binary", "cityscapes", "iqothnccd", "nnunet", "decathlon"]
    )
    parser.add_argument("root", help="folder to write (plays the role of the real dataset root)")
    parser.add_argument("--cases", type=int, nargs="+", default=[6], help="cases, or counts per split / class")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shape", type=int, nargs="+", help="image shape (default: the generator's small default)")
    parser.add_argument(
        "--spacing",
        type=float,
        nargs=3,
        metavar="MM",
        help="kits23: voxel size in mm (default: the shape spans the whole abdomen); with a small --shape, "
        "e.g. --shape 32 64 64 --spacing 5 3.2 3.2, a crop around the kidneys at the demo model's spacing",
    )
    args = parser.parse_args()
    try:
        shape = tuple(args.shape) if args.shape else None
        write(args.dataset, args.root, args.cases, args.seed, shape, tuple(args.spacing) if args.spacing else None)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote synthetic {args.dataset} ({' '.join(map(str, args.cases))}) to {args.root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
