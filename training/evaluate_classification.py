"""Accuracy, per-class recall and the confusion matrix of a classifier checkpoint on a split.

python training/evaluate_classification.py --model runs/iqothnccd_resnet18_small/best.pt \
    --config configs/iqothnccd_resnet18_small.yaml --split test

The split is the training config's (same reader, fractions and split seed); each image
is prepared by the checkpoint's preprocessing, as ``medcam evaluate`` prepares it.
"""

from __future__ import annotations

import argparse
import sys

import torch

from medcam.errors import UserError


def main() -> int:
    parser = argparse.ArgumentParser(description="evaluate a medcam classification checkpoint on a split")
    parser.add_argument("--model", required=True, help="medcam checkpoint (.pt)")
    parser.add_argument("--config", required=True, help="the training YAML (its dataset section names the split)")
    parser.add_argument("--split", default="test", choices=["train", "val", "test"])
    args = parser.parse_args()
    from medcam.evaluate.samples import DatasetSamples
    from medcam.models.checkpoint import load_checkpoint
    from medcam.train.config import load_config
    from medcam.train.datasets import open_dataset

    try:
        bundle = load_checkpoint(args.model)
        dataset = open_dataset(load_config(args.config).dataset)
        entries = dataset.entries(args.split)
        if not entries:
            raise UserError(f"split {args.split!r} of {dataset.root} is empty")
        samples = DatasetSamples(dataset, entries, bundle.meta, lambda label, truth: None)
        names = sorted(bundle.meta.labels, key=bundle.meta.labels.__getitem__)
        n = len(names)
        confusion = torch.zeros(n, n, dtype=torch.long)
        with torch.no_grad():
            for entry in entries:
                record = samples.transform(dict(entry))
                logits = bundle.model(torch.as_tensor(record["image"]).float()[None])
                confusion[int(record["label"]), int(logits.argmax(1))] += 1
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    total = int(confusion.sum())
    print(f"{args.split}: {total} images, accuracy {float(confusion.diag().sum()) / total:.3f}")
    for i, name in enumerate(names):
        row = confusion[i]
        print(f"  {name}: recall {float(row[i]) / max(int(row.sum()), 1):.3f} ({int(row[i])}/{int(row.sum())})")
    print("confusion (rows: truth, columns: prediction):", confusion.tolist())
    return 0


if __name__ == "__main__":
    sys.exit(main())
