"""RobustCAM cost against one view of its base method, on the same model and input.

The issue's budget: RobustCAM with V views costs at most V times one run of its base
method; batching the views (one forward and one backward for several views) should
make it less. Times are wall-clock medians after one warm-up run, through the public
API (``medcam.explain``), so both sides pay the same hook and post-processing costs.
RobustCAM also binds its target with one extra no-grad forward and computes its
stability metrics; both are included.

    PYTHONPATH=$PWD python benchmarks/bench_robust.py            # full sizes
    PYTHONPATH=$PWD python benchmarks/bench_robust.py --quick    # small sizes, 2 repeats

On a shared machine ``--threads 1`` and the CPU-time ratio give the steadiest numbers.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
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


def measure(runs: dict[str, Callable[[], Any]], repeats: int) -> dict[str, tuple[float, float]]:
    """Median (wall, CPU) seconds of each run; runs are interleaved so load drift hits all alike.

    CPU time (all threads of this process) is the steadier number on a shared machine.
    """
    for run in runs.values():
        run()  # warm-up: allocator, thread pools, lazy imports
    wall: dict[str, list[float]] = {k: [] for k in runs}
    cpu: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(repeats):
        for key, run in runs.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            run()
            wall[key].append(time.perf_counter() - start)
            cpu[key].append(time.process_time() - start_cpu)
    return {k: (statistics.median(wall[k]), statistics.median(cpu[k])) for k in runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small inputs, fewer repeats (a smoke run)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per measurement (default 5, quick 2)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    repeats = args.repeats or (2 if args.quick else 5)
    if args.threads:
        torch.set_num_threads(args.threads)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of {repeats} interleaved runs")
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


if __name__ == "__main__":
    main()
