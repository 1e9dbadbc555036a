"""``medcam demo``: explain the tumour of a KiTS-like phantom with the shipped demo model.

Writes ``<out>/phantom/case_00000/`` (imaging and ground truth, KiTS23's layout) and
``<out>/explanation/`` (what ``medcam explain`` writes), then prints where the files are,
the predicted structures, the Dice against the phantom's truth, how well the map
localises the tumour, and how to open the result in 3D Slicer.
"""

from __future__ import annotations

import argparse
from typing import Any

from medcam.cli import seed_value

EXAMPLE = """\
example:
  medcam demo --out demo_output --overwrite
"""


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "demo",
        help="explain a phantom CT's tumour with the shipped demo U-Net and check it against the truth",
        description=__doc__,
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", default="demo_output", help="output folder (default: demo_output)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    parser.add_argument("--seed", type=seed_value, default=0, help="seed of the phantom case (default: 0)")
    parser.add_argument("--method", default="hirescam", help="CAM method (default: hirescam)")
    parser.add_argument(
        "--device", default="auto", help="auto (CUDA when present, else CPU), cpu or cuda[:N] (default: auto)"
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")


def run(args: argparse.Namespace) -> int:
    from medcam.pipeline.demo import run_demo

    report = run_demo(
        args.out,
        overwrite=args.overwrite,
        seed=args.seed,
        method=args.method,
        device=args.device,
        progress=not args.no_progress,
    )
    print(
        f"medcam demo: {report.method} of class '{report.class_name}' on a KiTS-like phantom ({report.seconds:.1f} s)"
    )
    print(f"  phantom      {report.case}  (imaging.nii.gz, segmentation.nii.gz = ground truth)")
    print(f"  explanation  {report.explanation}  (heatmap.nii.gz, prediction.seg.nrrd, review.mrb, summary.json)")
    print(f"  {'structure':<10} {'predicted ml':>12} {'truth ml':>9} {'Dice':>6}")
    for name, dice in report.dice.items():
        print(f"  {name:<10} {report.predicted_ml[name]:>12.2f} {report.truth_ml[name]:>9.2f} {dice:>6.3f}")
    print(
        f"  map mean inside the true tumour {report.cam_inside:.3f}, outside {report.cam_outside:.4f} "
        f"({report.cam_ratio:.0f}x)"
    )
    print(f"  preview: {report.explanation / 'preview.png'}")
    print(f"  3D Slicer: drag {report.explanation / 'review.mrb'} onto the window, or in its Python console run")
    print(f'    exec(open(r"{report.explanation / "load_in_slicer.py"}").read())')
    return 0
