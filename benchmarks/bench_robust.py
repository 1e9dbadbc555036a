"""RobustCAM cost against one view of its base method, on the same model and input.

The issue's budget: RobustCAM with V views costs at most V times one run of its base
method; batching the views (one forward and one backward for several views) should
make it less. Times are wall-clock medians after one warm-up run, through the public
API (``medcam.explain``), so both sides pay the same hook and post-processing costs.
RobustCAM also binds its target with one extra no-grad forward and computes its
stability metrics; both are included.

    PYTHONPATH=$PWD python benchmarks/bench_robust.py            # full sizes
    PYTHONPATH=$PWD python benchmarks/bench_robust.py --quick    # small sizes, 2 repeats

A second table times the explain pipeline (``medcam explain`` without writing the
folder: ``medcam.pipeline.explain_volume``) with ``--method robustcam`` against
``--method hirescam`` on a demo-sized KiTS-like CT phantom (IPL, HU) larger than the
model's window, so RobustCAM runs per sliding window; ``--pipeline-only`` runs just it.

On a shared machine ``--threads 1`` and the CPU-time ratio give the steadiest numbers.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from timing import measure
from torch import nn

import medcam
from medcam.methods.robust import RobustCAM


@dataclass
class Case:
    name: str
    build: Callable[[], nn.Module]
    shape: tuple[int, ...]
    target: Any
    layers: str
    views: list[str] | str
    options: dict[str, Any]


def _resnet(depth: int) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import torchvision

        torch.manual_seed(0)
        return getattr(torchvision.models, f"resnet{depth}")(weights=None, num_classes=3)

    return build


def _unet() -> nn.Module:
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    # the `medcam demo` network
    return UNet(3, 1, 2, channels=(8, 16, 32, 64), strides=(2, 2, 2), num_res_units=1)


SIX_3D = ["identity", "flip", "rotate:10", "rotate:-10", "intensity", "blur:1"]


def cases(quick: bool) -> list[Case]:
    side2, side3 = (112, 48) if quick else (224, 96)
    seg = medcam.SegmentationTarget(1, pixels="image")
    out = [
        Case("ResNet-18", _resnet(18), (1, 3, side2, side2), None, "layer4", "default", {}),
        Case("ResNet-50", _resnet(50), (1, 3, side2, side2), None, "layer4", "default", {}),
        Case("MONAI UNet 3D", _unet, (1, 1, side3, side3, side3), seg, "auto", SIX_3D, {}),
        Case("MONAI UNet 3D", _unet, (1, 1, side3, side3, side3), seg, "auto", "default", {}),
        Case("MONAI UNet 3D", _unet, (1, 1, side3, side3, side3), seg, "auto", SIX_3D, {"stability": False}),
    ]
    if quick:
        out = [c for c in out if c.name != "ResNet-50"]
    return out


def pipeline_table(quick: bool, repeats: int) -> None:
    """``explain_volume`` with RobustCAM vs HiResCAM on a phantom CT over sliding windows."""
    import tempfile
    from pathlib import Path

    import nibabel as nib
    import numpy as np
    from bench_explain import phantom

    from medcam.models.checkpoint import CheckpointMeta, Preprocessing, save_checkpoint
    from medcam.pipeline import explain_volume

    shape, patch = ((32, 96, 96), 32) if quick else ((48, 160, 160), 32)
    work = Path(tempfile.mkdtemp(prefix="bench_robust_"))
    ct, tumour = phantom(shape)
    affine = np.array([[0, 0, -0.78, 200.0], [0, -0.78, 0, 200.0], [-2.5, 0, 0, 250.0], [0, 0, 0, 1]])
    for data, name in ((ct, "imaging.nii.gz"), (tumour, "tumour.nii.gz")):
        image = nib.Nifti1Image(data, None)
        image.header.set_sform(affine, code=2)  # as KiTS stores its cases: sform only, IPL
        image.header.set_qform(affine, code=0)
        nib.save(image, str(work / name))
    torch.manual_seed(0)
    net = _unet()
    meta = CheckpointMeta(
        "monai.UNet",
        {"spatial_dims": 3, "in_channels": 1, "out_channels": 2, "channels": [8, 16, 32, 64], "strides": [2, 2, 2],
         "num_res_units": 1},
        "segmentation", 3, 1, {"background": 0, "tumor": 1}, patch_size=(patch,) * 3,
        preprocessing=Preprocessing(orientation="RAS", spacing=(1.6, 1.6, 2.5), a_min=-200.0, a_max=300.0),
    )  # fmt: skip
    ckpt = save_checkpoint(work / "demo_unet.pt", net, meta)
    common = {"class_name": "tumor", "model": ckpt, "pixels": f"mask:{work / 'tumour.nii.gz'}", "progress": False}
    runs: dict[str, dict[str, Any]] = {
        "hirescam": {"method": "hirescam"},
        "robustcam 6": {"method": "robustcam", "method_options": {"views": SIX_3D}},
        "robustcam 7": {"method": "robustcam"},
    }
    summaries: dict[str, Any] = {}

    def run(name: str) -> None:
        summaries[name] = explain_volume(work / "imaging.nii.gz", **common, **runs[name]).summary

    times = measure({name: partial(run, name) for name in runs}, repeats)
    base_wall, base_cpu = times["hirescam"]
    base_cam = summaries["hirescam"]["timings_s"]["cam"]
    grid = "x".join(map(str, summaries["hirescam"]["model"]["model_grid"]))
    print()
    print(
        f"explain pipeline (explain_volume, no writing): phantom {'x'.join(map(str, shape))} IPL -> model grid "
        f"{grid} (RAS), {patch}^3 windows, M = tumour mask"
    )
    print()
    print(
        "| method | views | windows with backward | total s (CPU s) | cam stage s | ratio total wall | ratio total CPU "
        "| ratio cam |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, (wall, cpu) in times.items():
        summary = summaries[name]
        windows = summary["sliding_window"]
        views = len(summary["method"]["stats"].get("views", [])) or 1
        cam = summary["timings_s"]["cam"]
        print(
            f"| {name.split()[0]} | {views} | {windows['windows_with_backward']} / {windows['windows']} | "
            f"{wall:.2f} ({cpu:.2f}) | {cam:.2f} | {wall / base_wall:.2f} | {cpu / base_cpu:.2f} | "
            f"{cam / base_cam:.2f} |",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small inputs, fewer repeats (a smoke run)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per measurement (default 5, quick 2)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--pipeline-only", action="store_true", help="only the explain-pipeline table")
    args = parser.parse_args()
    repeats = args.repeats or (2 if args.quick else 5)
    if args.threads:
        torch.set_num_threads(args.threads)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of {repeats} interleaved runs")
    if args.pipeline_only:
        pipeline_table(args.quick, repeats)
        return
    print()
    print(
        "| model | input | base | views | batch_size | stability | base s (CPU s) | RobustCAM s (CPU s) "
        "| ratio wall | ratio CPU | budget |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for case in cases(args.quick):
        model = case.build().eval()
        x = torch.randn(*case.shape, generator=torch.Generator().manual_seed(0))
        base_name = "hirescam" if case.target is not None else "gradcam"
        views = RobustCAM(views=case.views).resolve_views(x)
        batch_sizes: list[int | None] = [6, 1] if len(views) <= 6 else [6, None, 1]
        runs: dict[str, Callable[[], Any]] = {
            "base": partial(medcam.explain, model, x, base_name, case.target, case.layers),
        }
        for batch_size in batch_sizes:
            options = {"views": case.views, "batch_size": batch_size, **case.options}
            runs[str(batch_size)] = partial(medcam.explain, model, x, "robustcam", case.target, case.layers, **options)
        times = measure(runs, repeats)
        base_wall, base_cpu = times.pop("base")
        size = "x".join(map(str, case.shape[2:]))
        stability = "on" if case.options.get("stability", True) else "off"
        for batch_size, (wall, cpu) in times.items():
            label = "all" if batch_size == "None" else batch_size
            print(
                f"| {case.name} | {size} | {base_name} | {len(views)} | {label} | {stability} | "
                f"{base_wall:.3f} ({base_cpu:.3f}) | {wall:.3f} ({cpu:.3f}) | {wall / base_wall:.2f} | "
                f"{cpu / base_cpu:.2f} | {len(views)} |",
                flush=True,
            )
    pipeline_table(args.quick, repeats)


if __name__ == "__main__":
    main()
