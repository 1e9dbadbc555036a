"""``medcam explain``: explain a class on an image file; write NIfTI overlays and a Slicer package.

One case: ``--volume PATH`` (3D: NIfTI, NRRD, MHA, DICOM folder) or ``--image PATH``
(2D: PNG/JPEG, or any of the above). Many cases: ``--datalist cases.json`` or
``--folder DIR``, one sub-folder of ``--out`` per case; finished cases are skipped, and
under ``torchrun`` every rank takes its share of the cases.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
from collections.abc import Iterator
from typing import Any

from medcam.cli import seed_value

EXAMPLE = """\
example (after `medcam demo --out demo_output`, which writes a phantom CT to explain):
  medcam explain --volume demo_output/phantom/case_00000/imaging.nii.gz --class kidney --out kidney_map
"""


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "explain",
        help="explain a class on a volume or image; write heatmap.nii.gz, a Slicer package and a summary",
        description=__doc__,
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--volume", metavar="PATH", help="a 3D image: .nii/.nii.gz, .nrrd, .mha, or a DICOM folder")
    source.add_argument("--image", metavar="PATH", help="a 2D image: .png/.jpg (or a 2D NIfTI/NRRD)")
    source.add_argument("--datalist", metavar="JSON", help="a JSON list of cases (or a Decathlon datalist)")
    source.add_argument("--folder", metavar="DIR", help="explain every image (or case folder) in DIR")
    parser.add_argument("--class", dest="class_name", required=True, metavar="NAME", help="label or region name")
    add_model_source_arguments(parser)
    parser.add_argument("--method", default=None, metavar="NAME", help="CAM method (default: hirescam)")
    parser.add_argument(
        "--method-option",
        dest="method_options",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an option of --method, repeatable; VALUE is read as JSON when it parses, else as text, e.g. "
        '--method-option fusion=median --method-option views=\'["identity","flip:2"]\' '
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
    parser.add_argument(
        "--out",
        metavar="DIR",
        help="output folder (default: medcam_<case>: the KiTS case folder of .../case_XXXXX/imaging.nii.gz, "
        "the DICOM series folder, else the file name without its suffix)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    parser.add_argument(
        "--device", default="auto", help="auto (CUDA when present, else CPU), cpu or cuda[:N] (default: auto)"
    )
    parser.add_argument(
        "--precision",
        choices=("fp32", "bf16", "auto"),
        default="fp32",
        help="network precision: bf16 = prediction and CAM under bfloat16 autocast where the CPU/GPU has it "
        "natively; auto = bf16 prediction there, fp32 CAM (default: fp32)",
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
    parser.add_argument("--seed", type=seed_value, default=0, help="random seed, recorded in summary.json (default: 0)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    parser.add_argument(
        "--dicom-out",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="write dicom/: the maps as DICOM Parametric Maps and the prediction as a DICOM SEG "
        "(default: when the input is a DICOM series; see docs/dicom.md)",
    )


def add_model_source_arguments(parser: argparse.ArgumentParser, *, demo_by_default: bool = True) -> None:
    """``--model`` and the options of an nnU-Net ``--model`` folder (``--folds``, ``--checkpoint``, ...)."""
    default = "default, or demo" if demo_by_default else "demo"
    parser.add_argument(
        "--model",
        metavar="PATH",
        help=f"medcam checkpoint ({default}: the shipped demo model), nnU-Net v2 trained-model folder or "
        "MONAI bundle folder",
    )
    parser.add_argument(
        "--folds",
        metavar="K,...",
        help="nnU-Net folds to ensemble, e.g. 0,1 or all (default: every fold_K with the checkpoint)",
    )
    parser.add_argument(
        "--checkpoint", choices=("final", "best"), help="nnU-Net checkpoint_final.pth or checkpoint_best.pth"
    )
    parser.add_argument(
        "--configuration", metavar="NAME", help="nnU-Net configuration when --model holds several (e.g. 3d_fullres)"
    )
    parser.add_argument(
        "--disable-tta",
        action="store_true",
        help="nnU-Net without test-time mirroring (as nnUNetv2_predict --disable_tta; 8x less work in 3D)",
    )


def model_source(args: argparse.Namespace) -> Any:
    """``--model`` with the nnU-Net options, or ``--model`` as given when none is set."""
    from pathlib import Path

    from medcam.models.loading import ModelPath

    given = [args.folds, args.checkpoint, args.configuration]
    if all(v is None for v in given) and not args.disable_tta:
        return args.model
    if args.model is None:
        from medcam.errors import UserError

        raise UserError(
            "--folds, --checkpoint, --configuration and --disable-tta need --model FOLDER (an nnU-Net trained model)"
        )
    folds = tuple(f.strip() for f in args.folds.split(",") if f.strip()) if args.folds else None
    return ModelPath(Path(args.model), folds, args.checkpoint, args.configuration, mirroring=not args.disable_tta)


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
    from medcam.pipeline.options import levels_layer

    return str(args.layer) if args.levels is None else levels_layer(args.levels, args.layer)


def case_name(path: str) -> str:
    """The case an input file belongs to, as batches name it, so single runs on different cases never collide.

    A DICOM series folder is named by the folder, KiTS's ``case_00042/imaging.nii.gz`` by
    its case folder (every KiTS case is ``imaging.nii.gz``), any other file by its name
    without the image suffix (and without nnU-Net's channel suffix ``_0000``).
    """
    import re
    from pathlib import Path

    from medcam.volumes.io import strip_suffix

    file = Path(path).absolute()
    if file.is_dir():
        return file.name
    name = re.sub(r"_0000$", "", strip_suffix(file.name))
    return file.parent.name if name == "imaging" and file.parent.name else name


def run(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    from medcam import pipeline
    from medcam.cli.method_options import parse_method_options
    from medcam.errors import UserError, one_line

    if not args.no_progress:
        # the cost of a region method over windows is announced before its passes start
        from medcam.methods.base import COST_LOGGER

        logging.getLogger(COST_LOGGER).setLevel(logging.INFO)
    # one options object per run, field by field the CLI options (ExplainOptions' docstring);
    # building it builds the method, so a bad method or option stops here
    options = pipeline.ExplainOptions(
        method=args.method if args.method is not None else pipeline.DEFAULT_METHOD,
        method_options=parse_method_options(args.method_options),
        pixels=args.pixels,
        layer=args.layer,
        levels=args.levels,
        montage_scale=args.montage_scale,
        montage_slices=args.montage_slices,
        montage_crop=args.montage_crop,
        device=args.device,
        precision=args.precision,
        overlap=args.overlap,
        blend=args.blend,
        window_batch=args.window_batch,
        normalize=args.normalize,
        relu=not args.no_relu,
        seed=args.seed,
        progress=not args.no_progress,
        reference=args.reference,
        dicom_out=args.dicom_out,
    )
    single = args.volume if args.volume is not None else args.image
    if single is not None:
        out = args.out if args.out is not None else Path(f"medcam_{case_name(single)}")
        written = pipeline.explain_case(
            single, out, class_name=args.class_name, overwrite=args.overwrite, model=model_source(args), options=options
        )
        print(f"medcam: wrote {written}")
        return 0
    if args.reference:
        raise UserError("--reference is one mask for one image; use it with --volume or --image, not with a batch")
    if args.out is None:
        raise UserError("--datalist and --folder need --out DIR (one sub-folder per case is written there)")
    cases = pipeline.cases_from_datalist(args.datalist) if args.datalist else pipeline.cases_from_folder(args.folder)
    rank, world = pipeline.rank_and_world()
    with _reported_here("medcam.pipeline.batch"):
        report = pipeline.explain_batch(
            cases,
            args.out,
            class_name=args.class_name,
            overwrite=args.overwrite,
            rank=rank,
            world_size=world,
            model=model_source(args),
            options=options,
        )
    prefix = f"medcam[{rank}/{world}]" if world > 1 else "medcam"
    print(
        f"{prefix}: {len(report.done)} explained, {len(report.skipped)} already done, "
        f"{len(report.failed)} failed (of {len(cases)} cases, output in {Path(args.out)})"
    )
    for case_id, message in report.failed.items():
        print(f"{prefix}: error: case {one_line(case_id)}: {one_line(message)}", file=sys.stderr)
    return 2 if report.failed else 0


@contextlib.contextmanager
def _reported_here(logger_name: str) -> Iterator[None]:
    """Drop the library's per-case error log lines: the CLI prints each failed case once, below."""
    logger = logging.getLogger(logger_name)

    def keep(record: logging.LogRecord) -> bool:
        return record.levelno < logging.ERROR

    logger.addFilter(keep)
    try:
        yield
    finally:
        logger.removeFilter(keep)
