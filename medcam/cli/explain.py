"""``medcam explain``: explain a class on an image file; write NIfTI overlays and a Slicer package.

One case: ``--volume PATH`` (3D: NIfTI, NRRD, MHA, DICOM folder) or ``--image PATH``
(2D: PNG/JPEG, or any of the above). Many cases: ``--datalist cases.json`` or
``--folder DIR``, one sub-folder of ``--out`` per case; finished cases are skipped, and
under ``torchrun`` every rank takes its share of the cases.
"""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "explain",
        help="explain a class on a volume or image; write heatmap.nii.gz, a Slicer package and a summary",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--volume", metavar="PATH", help="a 3D image: .nii/.nii.gz, .nrrd, .mha, or a DICOM folder")
    source.add_argument("--image", metavar="PATH", help="a 2D image: .png/.jpg (or a 2D NIfTI/NRRD)")
    source.add_argument("--datalist", metavar="JSON", help="a JSON list of cases (or a Decathlon datalist)")
    source.add_argument("--folder", metavar="DIR", help="explain every image (or case folder) in DIR")
    parser.add_argument("--class", dest="class_name", required=True, metavar="NAME", help="label or region name")
    parser.add_argument("--model", metavar="CKPT", help="medcam checkpoint (default: the shipped demo model)")
    parser.add_argument("--method", default=None, metavar="NAME", help="CAM method (default: hirescam)")
    parser.add_argument(
        "--method-option",
        dest="method_options",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an option of --method, repeatable; VALUE is read as JSON when it parses, else as text, e.g. "
        '--method-option fusion=median --method-option views=\'["identity","flip:0"]\' '
        "(an unknown KEY lists the method's options)",
    )
    parser.add_argument(
        "--pixels",
        default="predicted",
        metavar="SET",
        help="pixel set M: predicted | prob>T | mask:FILE[:LABEL] | box:i0,j0,k0:i1,j1,k1 | voxel:i,j,k | "
        "component[:N] | image (coordinates in input voxel indices; default: predicted)",
    )
    parser.add_argument(
        "--layer",
        default="auto",
        metavar="NAME",
        help="auto | levels | levels:enc1,bottleneck | module path(s), comma-separated (default: auto)",
    )
    add_level_arguments(parser)
    parser.add_argument("--out", metavar="DIR", help="output folder (default: medcam_<input name>)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default: cpu)")
    parser.add_argument(
        "--precision",
        choices=("fp32", "bf16", "auto"),
        default="fp32",
        help="network precision for prediction and CAM: bf16 autocast where the CPU/GPU has it natively, auto = "
        "bf16 exactly there (default: fp32)",
    )
    parser.add_argument("--overlap", type=float, default=0.25, help="sliding-window overlap (default: 0.25)")
    parser.add_argument(
        "--blend", choices=("gaussian", "constant"), default="gaussian", help="window blending (default: gaussian)"
    )
    parser.add_argument("--window-batch", type=int, default=1, help="windows per forward/backward pass (default: 1)")
    parser.add_argument(
        "--normalize", choices=("minmax", "max", "none"), default="minmax", help="map normalisation (default: minmax)"
    )
    parser.add_argument("--no-relu", action="store_true", help="keep negative evidence (signed maps)")
    parser.add_argument("--seed", type=int, default=0, help="random seed, recorded in summary.json (default: 0)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")


def add_level_arguments(parser: argparse.ArgumentParser, *, reference_required: bool = False) -> None:
    """``--levels``, ``--reference`` and the montage options (shared with ``medcam levels``)."""
    parser.add_argument(
        "--levels",
        nargs="?",
        const="all",
        default=None,
        metavar="NAMES",
        help="explain U-Net levels in one pass: all of them, or e.g. --levels enc2,bottleneck "
        "(writes levels/<name>.nii.gz and montage.png; see medcam info --model)",
    )
    parser.add_argument(
        "--reference",
        required=reference_required,
        metavar="MASK[:LABEL]",
        help="a reference mask on the input's voxel grid; adds pointing game, Dice and a level ranking to summary.json",
    )
    parser.add_argument(
        "--montage-scale",
        choices=("shared", "per-level"),
        default="shared",
        help="montage colour scale: one for all levels, or one per level (default: shared)",
    )
    parser.add_argument("--montage-slices", type=int, default=5, help="slices (columns) in the montage (default: 5)")
    parser.add_argument("--montage-crop", action="store_true", help="zoom the montage panels onto M (or the reference)")


def level_layer(args: argparse.Namespace) -> str:
    """The layer spec of ``--layer`` and ``--levels`` (which must not both be given)."""
    from medcam.api import layer_names
    from medcam.errors import UserError

    if args.levels is None:
        return str(args.layer)
    if args.layer != "auto":
        raise UserError(f"give --levels or --layer, not both (got --levels {args.levels} and --layer {args.layer})")
    names = layer_names(args.levels)
    if not names:
        raise UserError("--levels needs level names, e.g. --levels enc2,bottleneck (or no value for all levels)")
    return "levels" if names == ["all"] else "levels:" + ",".join(names)


def run(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    from medcam import pipeline
    from medcam.cli.method_options import parse_method_options
    from medcam.errors import UserError
    from medcam.review.montage import Montage

    # one options object per run; building it builds the method, so a bad method or option stops here
    options = pipeline.ExplainOptions(
        method=args.method or pipeline.DEFAULT_METHOD,
        method_options=parse_method_options(args.method_options),
        pixels=args.pixels,
        layer=level_layer(args),
        montage=Montage(args.montage_scale, args.montage_slices, args.montage_crop),
        device=args.device,
        precision=args.precision,
        overlap=args.overlap,
        blend=args.blend,
        window_batch=args.window_batch,
        normalize=None if args.normalize == "none" else args.normalize,
        relu=not args.no_relu,
        seed=args.seed,
        progress=not args.no_progress,
        reference=args.reference,
    )
    single = args.volume or args.image
    if single is not None:
        out = Path(args.out) if args.out else Path(f"medcam_{pipeline.strip_suffix(Path(single).name)}")
        written = pipeline.explain_case(
            single, out, class_name=args.class_name, overwrite=args.overwrite, model=args.model, options=options
        )
        print(f"medcam: wrote {written}")
        return 0
    if args.reference:
        raise UserError("--reference is one mask for one image; use it with --volume or --image, not with a batch")
    if not args.out:
        raise UserError("--datalist and --folder need --out DIR (one sub-folder per case is written there)")
    cases = pipeline.cases_from_datalist(args.datalist) if args.datalist else pipeline.cases_from_folder(args.folder)
    rank, world = pipeline.rank_and_world()
    report = pipeline.explain_batch(
        cases,
        args.out,
        class_name=args.class_name,
        overwrite=args.overwrite,
        rank=rank,
        world_size=world,
        model=args.model,
        options=options,
    )
    prefix = f"medcam[{rank}/{world}]" if world > 1 else "medcam"
    print(
        f"{prefix}: {len(report.done)} explained, {len(report.skipped)} already done, "
        f"{len(report.failed)} failed (of {len(cases)} cases, output in {Path(args.out)})"
    )
    for case_id, message in report.failed.items():
        print(f"{prefix}: error: case {case_id}: {message}", file=sys.stderr)
    return 2 if report.failed else 0
