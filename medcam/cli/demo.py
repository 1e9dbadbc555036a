"""``medcam demo``: explain a small 3D U-Net on a synthetic volume and print a summary."""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(sub: Any) -> None:
    parser = sub.add_parser("demo", help="explain a demo 3D U-Net on a synthetic volume")
    parser.add_argument("--out", default="demo_output", help="output folder (default: demo_output)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic volume and network")


def run(args: argparse.Namespace) -> int:
    import time

    import torch
    from monai.networks.nets import UNet

    import medcam

    torch.manual_seed(args.seed)
    # a bright sphere in noise; an untrained U-Net explained over the whole image
    grid = torch.stack(torch.meshgrid(*[torch.linspace(-1, 1, 64)] * 3, indexing="ij"))
    volume = (grid.pow(2).sum(0) < 0.25).float() + 0.1 * torch.randn(64, 64, 64)
    x = volume[None, None]
    net = UNet(3, 1, 2, channels=(8, 16, 32, 64), strides=(2, 2, 2), num_res_units=1)
    rows = []
    for method in ("gradcam", "hirescam"):
        start = time.perf_counter()
        exp = medcam.explain(net, x, method, target=medcam.SegmentationTarget(1, pixels="image"), layers="levels")
        seconds = time.perf_counter() - start
        for name, cam in exp.maps.items():
            rows.append((method, name, exp.layers[name], float(cam.mean()), seconds))
    print(f"medcam {medcam.__version__} demo: synthetic 64^3 volume, untrained MONAI UNet, class 1 over the image")
    print(f"{'method':<10} {'level':<11} {'mean map':>8}  module path")
    for method, name, path, mean, _ in rows:
        print(f"{method:<10} {name:<11} {mean:>8.3f}  {path}")
    print(f"all levels in one pass: gradcam {rows[0][4]:.2f} s, hirescam {rows[-1][4]:.2f} s")
    return 0
