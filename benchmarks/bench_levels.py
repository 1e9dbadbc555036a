"""Per-level analysis: every U-Net level in one pass against one level, and against a loop over levels.

The issue's budget: all levels from ONE forward and ONE backward pass cost at most
1.3 x one level, on the demo-sized 3D U-Net (MONAI UNet 16-32-64-128, strides 2,
one residual unit per block, batch norm: ``configs/demo_unet3d.yaml``) at 96^3. The
naive alternative runs one explanation per level. Times are medians of interleaved
runs after a warm-up, through the public API (``medcam.explain``) with a
segmentation target (class 1 over a 48^3 box), so every row pays the same hook,
post-processing (upsampling to 96^3, normalisation) and target costs.

Rows: a plain no-grad forward (the floor), one level at the bottleneck (what
``layers="auto"`` picks), at ``final`` and at ``enc0`` (the first level: autograd
starts at the first hooked layer, so this records the same graph and runs the same
backward as all levels together), all levels in one pass, and one call per level.

    PYTHONPATH=$PWD python benchmarks/bench_levels.py            # 96^3, 5 repeats
    PYTHONPATH=$PWD python benchmarks/bench_levels.py --quick    # 48^3, 2 repeats

On a shared machine the CPU-time ratio is the steadier number.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from torch import nn

import medcam


def demo_unet() -> nn.Module:
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    return UNet(3, 1, 4, channels=(16, 32, 64, 128), strides=(2, 2, 2), num_res_units=1, norm="batch").eval()


def measure(runs: dict[str, Callable[[], Any]], repeats: int) -> dict[str, tuple[float, float]]:
    """Median (wall, CPU) seconds per run; interleaved, so drifting load hits every run alike."""
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
    parser.add_argument("--quick", action="store_true", help="48^3 input, 2 repeats (a smoke run)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per measurement (default 5, quick 2)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--methods", default="hirescam,gradcam", help="comma-separated (default: hirescam,gradcam)")
    args, _ = parser.parse_known_args()
    repeats = args.repeats or (2 if args.quick else 5)
    if args.threads:
        torch.set_num_threads(args.threads)
    side = 48 if args.quick else 96
    model = demo_unet()
    x = torch.randn(1, 1, side, side, side, generator=torch.Generator().manual_seed(0))
    lo, hi = side // 4, 3 * side // 4
    target = medcam.SegmentationTarget(1, pixels=f"box:{lo},{lo},{lo}:{hi},{hi},{hi}")
    levels = {lv.name: lv.path for lv in medcam.discover_levels(model)}

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of {repeats} interleaved runs; "
        f"MONAI UNet 16-32-64-128 (num_res_units=1, batch norm), input {side}^3, {len(levels)} levels"
    )
    print()
    print("| method | run | layers | s (CPU s) | / bottleneck | / enc0 | / all levels |")
    print("|---|---|---|---|---|---|---|")

    def forward() -> None:
        with torch.no_grad():
            model(x)

    for method in args.methods.split(","):
        explain = partial(medcam.explain, model, x, method, target)
        runs: dict[str, Callable[[], Any]] = {
            "forward (no grad)": forward,
            "one level: bottleneck": partial(explain, {"bottleneck": levels["bottleneck"]}),
            "one level: final": partial(explain, {"final": levels["final"]}),
            "one level: enc0": partial(explain, {"enc0": levels["enc0"]}),
            "all levels, one pass": partial(explain, "levels"),
            "one call per level": lambda explain=explain: [explain({n: p}) for n, p in levels.items()],
        }
        times = measure(runs, repeats)
        base = times["one level: bottleneck"]
        first = times["one level: enc0"]
        together = times["all levels, one pass"]
        counts = {"forward (no grad)": 0, "all levels, one pass": len(levels), "one call per level": len(levels)}
        for key, (wall, cpu) in times.items():
            print(
                f"| {method} | {key} | {counts.get(key, 1)} | {wall:.3f} ({cpu:.3f}) | "
                f"{wall / base[0]:.2f} ({cpu / base[1]:.2f}) | {wall / first[0]:.2f} ({cpu / first[1]:.2f}) | "
                f"{wall / together[0]:.2f} ({cpu / together[1]:.2f}) |",
                flush=True,
            )


if __name__ == "__main__":
    main()
