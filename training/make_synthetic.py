"""Write a synthetic dataset in the real on-disk layout (seeded, deterministic).

python training/make_synthetic.py kits23 data/kits23_phantom --cases 40 --seed 0
"""

from __future__ import annotations

import argparse
import sys

from medcam.data import synthetic
from medcam.errors import UserError

WRITERS = {"kits23": synthetic.write_kits_dataset}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", choices=sorted(WRITERS))
    parser.add_argument("root", help="folder to write (plays the role of the real dataset root)")
    parser.add_argument("--cases", type=int, default=20, help="number of cases / images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shape", type=int, nargs="+", help="image shape (default: the generator's small default)")
    args = parser.parse_args()
    kwargs = {"shape": tuple(args.shape)} if args.shape else {}
    try:
        WRITERS[args.dataset](args.root, args.cases, seed=args.seed, **kwargs)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {args.cases} synthetic {args.dataset} cases to {args.root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
