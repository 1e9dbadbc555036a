"""The model's forward with PyTorch's Conv3d against medcam's oneDNN convolutions (issue 18).

The MONAI 3D UNet of bench_core.py (16-32-64-128), 96^3 windows, batch 1, 2 and 4, under
``torch.no_grad`` and ``torch.inference_mode``, with and without
``medcam.core.fast_conv.onednn_convolutions``; interleaved round by round in one process,
min and median of the process CPU time (``--clock wall`` for wall time, with more threads).

    python benchmarks/bench_forward.py [--quick] [--threads 1] [--repeats 7] [--clock cpu|wall]
    python benchmarks/bench_forward.py --explain quick|full [--repeats 2]

``--explain``: instead, the whole ``medcam explain`` of bench_explain.py's phantom (M =
tumour mask, fp32) with medcam's oneDNN convolutions on and off, against MONAI's
``sliding_window_inference`` alone, interleaved in this one process.
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

from medcam.core.fast_conv import onednn_convolutions

Mode = Callable[[], contextlib.AbstractContextManager[object]]


def explain_rows(size: str, repeats: int, clock: Callable[[], float]) -> None:
    """The whole explanation with the oneDNN convolutions on and off (see the module docstring)."""
    import bench_explain
    from monai.inferers import sliding_window_inference

    from medcam.core import probe, windows
    from medcam.models.checkpoint import load_checkpoint
    from medcam.pipeline import explain_case
    from medcam.volumes.io import load_volume
    from medcam.volumes.preprocessing import prepare

    shape, patch = ((100, 256, 256), 64) if size == "quick" else ((200, 512, 512), 96)
    work = bench_explain.HERE / "out" / "explain" / size  # bench_explain.py's work folder
    files = bench_explain.prepare(work, shape, patch)
    bundle = load_checkpoint(files["model"])
    x = prepare(load_volume(files["image"]), bundle.meta.preprocessing, spatial_dims=3, in_channels=1).image

    def inference() -> None:
        with torch.no_grad():
            sliding_window_inference(x, bundle.meta.patch_size, 1, bundle.model, overlap=0.25, mode="gaussian")

    def explain() -> None:
        pixels = f"mask:{files['mask']}"
        explain_case(files["image"], work / "out", class_name="tumor", model=files["model"], pixels=pixels,
                     precision="fp32", overwrite=True)  # fmt: skip

    @contextlib.contextmanager
    def off(model: torch.nn.Module) -> Iterator[int]:
        yield 0

    def explain_off() -> None:
        saved = probe.onednn_convolutions, windows.onednn_convolutions
        probe.onednn_convolutions = windows.onednn_convolutions = off
        try:
            explain()
        finally:
            probe.onednn_convolutions, windows.onednn_convolutions = saved

    runs = {"MONAI sliding_window_inference": inference, "explain, PyTorch Conv3d": explain_off, "explain": explain}
    seconds = interleaved(runs, repeats, clock)
    print(f"### {size}: {' x '.join(map(str, shape))} voxels, {patch}^3 windows, M = tumour mask, fp32\n")
    print("| job | min s | median s | x inference (min) |\n|---|---:|---:|---:|")
    base = min(seconds["MONAI sliding_window_inference"])
    for name, times in seconds.items():
        print(f"| {name} | {min(times):.2f} | {statistics.median(times):.2f} | {min(times) / base:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="batch 1 only, 3 repeats")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    parser.add_argument("--explain", choices=("quick", "full"), help="the whole explanation instead")
    args, _ = parser.parse_known_args()  # run_all.py passes every script the same flags
    torch.set_num_threads(args.threads)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    repeats = 3 if args.quick else args.repeats
    if args.explain:
        print(f"torch {torch.__version__}, {args.threads} thread(s), {repeats} interleaved runs, {args.clock} time\n")
        explain_rows(args.explain, repeats, clock)
        return
    model = unet3d()
    print(f"torch {torch.__version__}, {args.threads} thread(s), {repeats} interleaved runs, {args.clock} time\n")
    print("| batch | mode | PyTorch min / median ms | oneDNN min / median ms | ratio of mins | max abs diff |")
    print("|---:|---|---:|---:|---:|---:|")
    for batch in (1,) if args.quick else (1, 2, 4):
        x = torch.randn(batch, 1, 96, 96, 96, generator=torch.Generator().manual_seed(1))
        runs: dict[str, Callable[[], torch.Tensor]] = {}
        for name, mode in (("no_grad", torch.no_grad), ("inference_mode", torch.inference_mode)):

            def plain(mode: Mode = mode, x: torch.Tensor = x) -> torch.Tensor:
                with mode():
                    return model(x)

            def fast(mode: Mode = mode, x: torch.Tensor = x) -> torch.Tensor:
                with mode(), onednn_convolutions(model):
                    return model(x)

            runs[f"{name} torch"], runs[f"{name} onednn"] = plain, fast
        diff = (runs["no_grad torch"]() - runs["no_grad onednn"]()).abs().max().item()
        seconds = interleaved(runs, repeats, clock)
        for mode_name in ("no_grad", "inference_mode"):
            a, b = seconds[f"{mode_name} torch"], seconds[f"{mode_name} onednn"]
            print(
                f"| {batch} | {mode_name} | {min(a) * 1e3:.1f} / {statistics.median(a) * 1e3:.1f} "
                f"| {min(b) * 1e3:.1f} / {statistics.median(b) * 1e3:.1f} | {min(b) / min(a):.2f} | {diff:.1e} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
