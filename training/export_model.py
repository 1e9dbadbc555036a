"""Copy a run's best checkpoint to a release path, adding notes to its ``training`` metadata.

    python training/export_model.py runs/demo_unet3d/best.pt medcam/assets/demo_unet3d.pt \
        --note command="..." --note heldout="kidney 0.93, tumor 0.80"
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from medcam.errors import UserError


def main() -> int:
    parser = argparse.ArgumentParser(description="re-save a medcam checkpoint with extra training notes")
    parser.add_argument("source")
    parser.add_argument("target")
    parser.add_argument("--note", action="append", default=[], metavar="KEY=VALUE", help="add to metadata.training")
    args = parser.parse_args()
    from medcam.models.checkpoint import load_checkpoint, save_checkpoint

    try:
        bundle = load_checkpoint(args.source)
        notes = dict(bundle.meta.training)
        summary = Path(args.source).with_name("summary.json")
        if summary.is_file():
            notes["training_seconds"] = json.loads(summary.read_text()).get("seconds")
        for item in args.note:
            if "=" not in item:
                raise UserError(f"--note {item!r} is not KEY=VALUE")
            key, value = item.split("=", 1)
            notes[key] = value
        meta = dataclasses.replace(bundle.meta, training=notes, medcam_version="")
        path = save_checkpoint(args.target, bundle.model, meta)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
