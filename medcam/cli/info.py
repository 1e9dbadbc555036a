"""``medcam info``: the registered methods, and with ``--model`` what a checkpoint offers.

``medcam info --model CKPT`` lists the checkpoint's classes (label -> output channel),
regions, preprocessing, default CAM layers and the U-Net levels with their channels and
resolution (one forward pass at the patch size).
"""

from __future__ import annotations

import argparse
from typing import Any

EXAMPLE = """\
example:
  medcam info --model demo
"""


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "info",
        help="list CAM methods, or a checkpoint's classes, layers and levels",
        description=__doc__,
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from medcam.cli.explain import add_model_source_arguments

    add_model_source_arguments(parser, demo_by_default=False)  # without --model, info lists the methods
    parser.add_argument("--all-layers", action="store_true", help="list every module with its output shape")


def run(args: argparse.Namespace) -> int:
    import medcam

    print("methods:", ", ".join(medcam.list_methods()))
    if args.model is None:
        return 0
    from medcam.cli.explain import model_source
    from medcam.pipeline import inspect_model

    info = inspect_model(model_source(args), all_layers=args.all_layers)
    meta = info["meta"]
    print(f"model: {info['path']}")
    channels = f"{meta.in_channels} input channel(s)"
    print(f"  {meta.architecture}, {meta.task}, {meta.spatial_dims}D, {channels}, {meta.activation} outputs")
    labels = sorted(meta.labels.items(), key=lambda kv: kv[1])
    print("classes (--class NAME): " + ", ".join(f"{name} ({channel})" for name, channel in labels))
    if meta.regions:
        print("regions (--class NAME): " + ", ".join(f"{name} = labels {list(v)}" for name, v in meta.regions.items()))
    origin = meta.training if meta.training.get("source") in ("nnunet", "monai-bundle") else {}
    if origin.get("source") == "nnunet":
        print(
            f"nnU-Net: configuration {origin['configuration']}, folds {', '.join(origin['folds'])} "
            f"(checkpoint_{origin['checkpoint']}.pth), trainer {origin['trainer']}, plans {origin['plans']}"
        )
        axes = origin.get("mirror_axes")
        print(f"test-time mirroring: axes {axes} (--disable-tta turns it off)" if axes else "test-time mirroring: off")
        print("preprocessing: nnU-Net's own (the plans' reader, transpose, crop, normalisation, resampling)")
    pre = meta.preprocessing
    steps = []
    if pre.orientation:
        steps.append(f"orientation {pre.orientation}")
    if pre.spacing:
        steps.append("spacing " + " x ".join(f"{s:g}" for s in pre.spacing) + " mm")
    if pre.size:
        steps.append("size " + " x ".join(str(s) for s in pre.size))
    if pre.a_min is not None:
        steps.append(f"intensity [{pre.a_min:g}, {pre.a_max:g}] -> [{pre.b_min:g}, {pre.b_max:g}]")
    if pre.mean is not None:
        steps.append(f"normalise mean {list(pre.mean)} std {list(pre.std or [])}")
    if origin.get("source") != "nnunet":
        print("preprocessing: " + (", ".join(steps) or "none"))
    patch = " x ".join(str(s) for s in meta.patch_size) if meta.patch_size else "whole image"
    print(f"patch (sliding window): {patch}")
    print("default layer (--layer auto): " + (", ".join(meta.cam_layers) if meta.cam_layers else info["auto_layer"]))
    size = " x ".join(str(s) for s in info["input_size"])
    title = "layers" if args.all_layers else "U-Net levels (--levels, or --levels NAME,...)"
    if not info["layers"]:
        print(f"{title}: none found; pass module paths to --layer (see --all-layers)")
        return 0
    print(f"{title}, measured at input {size}:")
    width = max(len(layer.name) for layer in info["layers"])
    for layer in info["layers"]:
        grid = " x ".join(str(g) for g in layer.grid)
        # one factor when isotropic, else one per axis (DynUNet's anisotropic strides: "1/2 x 1/4 x 1/4")
        unique = dict.fromkeys(layer.scale)
        scale = " x ".join(_fraction(s) for s in (unique if len(unique) == 1 else layer.scale))
        voxel = f", {' x '.join(f'{v:g}' for v in layer.voxel_mm)} mm" if layer.voxel_mm else ""
        path = f"  {layer.path}" if layer.path != layer.name else ""
        print(f"  {layer.name:<{width}}  {layer.channels:>4} ch  {grid:<12} ({scale}{voxel}){path}")
    return 0


def _fraction(scale: float) -> str:
    if scale >= 1:
        return f"x{scale:g}"
    return f"1/{1 / scale:g}"
