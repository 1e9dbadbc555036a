"""Train a CT-slice classifier from a YAML config (also under torchrun).

python training/train_classification.py --config configs/iqothnccd_resnet50.yaml
"""

from __future__ import annotations

import logging
import os
import sys

from medcam.errors import UserError
from medcam.train.cli import run

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main_rank = os.environ.get("RANK", "0") == "0"  # one report under torchrun
    try:
        result = run(sys.argv[1:], task="classification")
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    if main_rank:
        print(f"best validation score {result.best_score:.4f} at epoch {result.best_epoch} "
              f"({result.seconds:.0f} s); checkpoint: {result.output / 'best.pt'}")  # fmt: skip
