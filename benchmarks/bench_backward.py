"""The CAM backward's exact shortcuts (issue 18), switched on and off in one process.

Seg-HiRes-Grad CAM at the bottleneck of the MONAI 3D UNet of bench_core.py (96^3)
against a no-grad forward, with medcam's input-gradient rules as they are ("new") and
with oneDNN, the PReLU rule and the skip-channel span switched off ("previous": the
code before them), interleaved round by round, process CPU time, min and median.

    python benchmarks/bench_backward.py [--quick] [--threads 1] [--repeats 9]

The glibc allocator's page faults make single runs vary by tens of percent on a busy
machine; MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=68719476736
MALLOC_TOP_PAD_=1073741824 in the environment removes most of that (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Callable, Iterator

import torch
from bench_core import unet3d
from timing import interleaved

import medcam
from medcam.core import conv_grad, input_grads


@contextlib.contextmanager
def previous_code() -> Iterator[None]:
    """Convolutions by PyTorch's own forward kernel, every channel, PReLU left to autograd."""
    saved = (conv_grad._on_onednn, conv_grad.channel_span, input_grads.rule)
    conv_grad._on_onednn = lambda x: False  # type: ignore[assignment]
    conv_grad.channel_span = lambda x: None  # type: ignore[assignment]
    input_grads.rule = lambda m: input_grads._CONVOLUTION if conv_grad.eligible(m) else None  # type: ignore[assignment]
    try:
        yield
    finally:
        conv_grad._on_onednn, conv_grad.channel_span, input_grads.rule = saved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 repeats")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=9)
    args, _ = parser.parse_known_args()  # run_all.py passes every script the same flags
    repeats = 3 if args.quick else args.repeats
    torch.set_num_threads(args.threads)
    model = unet3d()
    x = torch.randn(1, 1, 96, 96, 96, generator=torch.Generator().manual_seed(1))
    bottleneck = next(lv.path for lv in medcam.discover_levels(model) if lv.name == "bottleneck")
    target = medcam.SegmentationTarget(1, pixels="image")

    def forward() -> None:
        with torch.no_grad():
            model(x)

    def cam() -> None:
        medcam.explain(model, x, "hirescam", target=target, layers=bottleneck)

    def previous() -> None:
        with previous_code():
            cam()

    runs: dict[str, Callable[[], None]] = {"forward": forward, "new": cam, "previous": previous}
    seconds = interleaved(runs, repeats, time.process_time)
    print(f"torch {torch.__version__}, {args.threads} thread(s), {repeats} interleaved runs, process CPU time\n")
    print("### Seg-HiRes-Grad CAM at the bottleneck, MONAI UNet 3D 1x1x96x96x96: input-gradient rules on / off\n")
    print("| what | min ms (x forward) | median ms (x forward) |\n|---|---:|---:|")
    low, mid = min(seconds["forward"]), statistics.median(seconds["forward"])
    for name, times in seconds.items():
        a, b = min(times), statistics.median(times)
        print(f"| {name} | {a * 1000:.1f} ({a / low:.2f}) | {b * 1000:.1f} ({b / mid:.2f}) |")


if __name__ == "__main__":
    main()
