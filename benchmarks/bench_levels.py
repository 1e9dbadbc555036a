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
    PYTHONPATH=$PWD python benchmarks/bench_levels.py --breakdown --methods gradcam

``--breakdown`` adds where the time goes (CPU s of the capture, i.e. forward +
backward, per hooked set, and of the per-level post-processing) and the peak memory
of each run in a fresh process.

On a shared machine the CPU-time ratio is the steadier number.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
from timing import measure
from torch import nn

import medcam


def demo_unet() -> nn.Module:
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    return UNet(3, 1, 4, channels=(16, 32, 64, 128), strides=(2, 2, 2), num_res_units=1, norm="batch").eval()


def breakdown(
    model: nn.Module, x: torch.Tensor, target: Any, levels: dict[str, str], method: str, repeats: int
) -> None:
    """CPU seconds of the capture (one forward + one backward) per hooked set, and of the post-processing."""
    from medcam.core.hooks import evaluation_mode
    from medcam.core.probe import Probe
    from medcam.methods.base import PostProcessing

    probe, cam, post = Probe(model), medcam.create_method(method), PostProcessing()
    size = tuple(x.shape[2:])
    with evaluation_mode(model):
        capture = probe.capture(x, levels, target, gradients=True)
        single = {"bottleneck": levels["bottleneck"]}
        one = probe.capture(x, single, target, gradients=True)
        runs: dict[str, Callable[[], Any]] = {
            "capture: bottleneck": partial(probe.capture, x, single, target, gradients=True),
            "capture: enc0": partial(probe.capture, x, {"enc0": levels["enc0"]}, target, gradients=True),
            "capture: all levels": partial(probe.capture, x, levels, target, gradients=True),
            "post-processing: 1 level": partial(cam.maps, one, size, post),  # type: ignore[attr-defined]
            "post-processing: all levels": partial(cam.maps, capture, size, post),  # type: ignore[attr-defined]
        }
        times = measure(runs, repeats)
    print()
    print(f"| {method}: part | CPU s |")
    print("|---|---|")
    for key, (_, cpu) in times.items():
        print(f"| {key} | {cpu:.3f} |")
    print()
    print("| run (fresh process) | peak resident MB | above the model and input |")
    print("|---|---|---|")
    for run in ("forward", "bottleneck", "enc0", "levels"):
        done = subprocess.run(
            [sys.executable, __file__, "--memory-child", run, "--side", str(x.shape[-1]), "--methods", method],
            capture_output=True,
            text=True,
            check=True,
        )
        before, after = (float(v) for v in done.stdout.split())
        print(f"| {run} | {after:.0f} | {after - before:.0f} |")


def _peak_mb() -> float:
    """Peak resident memory of this process (VmHWM, MB); resettable, unlike ``ru_maxrss``."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return float(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # pragma: no cover - not Linux


def memory_child(run: str, side: int, method: str) -> None:
    """Print the resident memory before one run and its peak during the run (MB)."""
    model = demo_unet()
    x = torch.randn(1, 1, side, side, side, generator=torch.Generator().manual_seed(0))
    lo, hi = side // 4, 3 * side // 4
    target = medcam.SegmentationTarget(1, pixels=f"box:{lo},{lo},{lo}:{hi},{hi},{hi}")
    levels = {lv.name: lv.path for lv in medcam.discover_levels(model)}
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak to the current resident size
    before = _peak_mb()
    if run == "forward":
        with torch.no_grad():
            model(x)
    else:
        medcam.explain(model, x, method, target, "levels" if run == "levels" else {run: levels[run]})
    print(before, _peak_mb())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="48^3 input, 2 repeats (a smoke run)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per measurement (default 5, quick 2)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--methods", default="hirescam,gradcam", help="comma-separated (default: hirescam,gradcam)")
    parser.add_argument("--breakdown", action="store_true", help="also time the parts and measure peak memory")
    parser.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--side", type=int, default=None, help=argparse.SUPPRESS)
    args, _ = parser.parse_known_args()
    repeats = args.repeats or (2 if args.quick else 5)
    if args.threads:
        torch.set_num_threads(args.threads)
    side = args.side or (48 if args.quick else 96)
    if args.memory_child:
        memory_child(args.memory_child, side, args.methods.split(",")[0])
        return
    model = demo_unet()
    x = torch.randn(1, 1, side, side, side, generator=torch.Generator().manual_seed(0))
    lo, hi = side // 4, 3 * side // 4
    target = medcam.SegmentationTarget(1, pixels=f"box:{lo},{lo},{lo}:{hi},{hi},{hi}")
    levels = {lv.name: lv.path for lv in medcam.discover_levels(model)}

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of {repeats} interleaved runs; "
        f"MONAI UNet 16-32-64-128 (num_res_units=1, batch norm), input {side}^3, {len(levels)} levels"
    )

    def forward() -> None:
        with torch.no_grad():
            model(x)

    for method in args.methods.split(","):
        print()
        print("| method | run | layers | s (CPU s) | / bottleneck | / enc0 | / all levels |")
        print("|---|---|---|---|---|---|---|")
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
        if args.breakdown:
            breakdown(model, x, target, levels, method, repeats)


if __name__ == "__main__":
    main()
