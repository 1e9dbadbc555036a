"""``medcam levels``: which U-Net level to explain? Rank every level against a reference mask.

Every level is explained in one forward and one backward pass; each map is scored
against the reference (Dice of the map thresholded at 0.1 x its maximum, pointing
game, energy inside the reference, box IoU) and inside the explained pixel set M.
The table is printed best first with the recommended level; with ``--out`` the
review folder is written too (levels/<name>.nii.gz, montage.png, summary.json).
"""

from __future__ import annotations

import argparse
from typing import Any

from medcam.cli.explain import add_level_arguments, add_model_source_arguments, level_layer, model_source

EXAMPLE = """\
example (after `medcam demo --out demo_output`, which writes a phantom CT and its truth):
  medcam levels --volume demo_output/phantom/case_00000/imaging.nii.gz --class tumor \\
      --reference demo_output/phantom/case_00000/segmentation.nii.gz:2
"""


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "levels",
        help="rank a U-Net's levels by how well their maps localise a reference mask; say which to use",
        description=__doc__,
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--volume", metavar="PATH", help="a 3D image: .nii/.nii.gz, .nrrd, .mha, or a DICOM folder")
    source.add_argument("--image", metavar="PATH", help="a 2D image: .png/.jpg (or a 2D NIfTI/NRRD)")
    parser.add_argument("--class", dest="class_name", required=True, metavar="NAME", help="label or region name")
    add_model_source_arguments(parser)
    parser.add_argument("--method", default="hirescam", metavar="NAME", help="gradient CAM method (default: hirescam)")
    parser.add_argument(
        "--pixels",
        default="predicted",
        metavar="SET",
        help="pixel set M explained (as in medcam explain; default: predicted)",
    )
    parser.add_argument(
        "--layer",
        default="auto",
        metavar="PATHS",
        help="module paths to rank instead of the U-Net levels, comma-separated (any network)",
    )
    parser.add_argument(
        "--rank-by",
        choices=("dice", "pointing_game", "energy_in_reference", "box_iou"),
        default="dice",
        help="first ranking criterion (default: dice; ties by the others in this order)",
    )
    parser.add_argument(
        "--threshold", type=float, default=0.1, help="map threshold for Dice and box IoU, x max (default: 0.1)"
    )
    parser.add_argument("--out", metavar="DIR", help="also write the review folder (montage, level maps, summary)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    parser.add_argument(
        "--device", default="auto", help="auto (CUDA when present, else CPU), cpu or cuda[:N] (default: auto)"
    )
    parser.add_argument("--overlap", type=float, default=0.25, help="sliding-window overlap (default: 0.25)")
    parser.add_argument("--window-batch", type=int, default=1, help="windows per forward/backward pass (default: 1)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    add_level_arguments(parser, reference_required=True)


def run(args: argparse.Namespace) -> int:
    from medcam.pipeline.recommend import recommend_case

    # module paths (comma-separated) are split by the pipeline, as for medcam explain --layer
    layer = "levels" if args.levels is None and args.layer == "auto" else level_layer(args)
    result = recommend_case(
        args.volume or args.image,
        args.reference,
        class_name=args.class_name,
        out=args.out,
        overwrite=args.overwrite,
        layer=layer,
        method=args.method,
        by=args.rank_by,
        threshold=args.threshold,
        model=model_source(args),
        pixels=args.pixels,
        device=args.device,
        overlap=args.overlap,
        window_batch=args.window_batch,
        progress=not args.no_progress,
        montage_scale=args.montage_scale,
        montage_slices=args.montage_slices,
        montage_crop=args.montage_crop,
    )
    ranking = result.ranking
    summary = result.explanation.summary
    print(
        f"medcam levels: {summary['method']['name']}, class {summary['class']['name']}, "
        f"M = {summary['pixel_set']['definition']}, reference {args.reference}"
    )
    headers = ("rank", "level", "Dice", "pointing", "E(ref)", "box IoU", "E(M)", "module path")
    rows = []
    for rank, score in enumerate(ranking.scores, start=1):
        rows.append(
            (
                str(rank),
                score.name,
                _number(score.dice),
                _number(score.pointing_game, 0),
                _number(score.energy_in_reference),
                _number(score.box_iou),
                _number(score.energy_in_region),
                score.path,
            )
        )
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    for row in (headers, *rows):
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
    print(f"ranking: {ranking.rule}")
    best = ranking.best
    hint = f"--levels {best.name}" if summary["layers"]["choice"].startswith("levels") else f"--layer {best.path}"
    where = f" ({best.path})" if best.path != best.name else ""
    print(f"recommended: {best.name}{where}; explain with {hint}")
    if result.out is not None:
        print(f"medcam: wrote {result.out}")
    return 0


def _number(value: float | None, decimals: int = 3) -> str:
    return "-" if value is None else f"{value:.{decimals}f}"
