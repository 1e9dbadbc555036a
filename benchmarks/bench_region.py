"""Speed and agreement of medcam's region and fusion methods, against pytorch-grad-cam.

    PYTHONPATH=. python benchmarks/bench_region.py            # full (224 px, 64^3 volume)
    PYTHONPATH=. python benchmarks/bench_region.py --quick    # small sizes, one repeat

Part 1, ResNet-18 (torchvision, weights=None, seeded) at layer4, one image:
pytorch-grad-cam's ScoreCAM; the forward-pass floor (non-constant channels x the
batched forward time per image, batch 16, contiguous float32, as pytorch-grad-cam
runs it); medcam's Score-CAM in fp32 and bf16 (Spearman of bf16 to fp32); Fusion-CAM
vs its own Score-CAM; the channel budget's agreement with the full map.
Part 2, a demo-sized 3D MONAI U-Net: Seg-Fusion-CAM with the full Score-CAM region
part, with Group-CAM, and with max_channels=64: time and agreement.

Every timing is the minimum over ``--repeats`` runs, methods interleaved, so that a
loaded machine penalises all of them alike. Prints markdown tables.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable
from typing import Any

os.environ.setdefault("TQDM_DISABLE", "1")  # pytorch-grad-cam's ScoreCAM draws progress bars

import numpy as np
import torch
import torchvision
from scipy.stats import pearsonr, spearmanr

import medcam


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(spearmanr(a.flatten().numpy(), b.flatten().numpy()).statistic)


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(pearsonr(a.flatten().numpy(), b.flatten().numpy()).statistic)


CLOCK = {"wall": time.perf_counter, "cpu": time.process_time}
clock = CLOCK["wall"]


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """Seconds on the chosen clock (``--clock``) and the result of ``fn()``."""
    start = clock()
    result = fn()
    return clock() - start, result


def best_of(runs: dict[str, Callable[[], Any]], repeats: int) -> tuple[dict[str, float], dict[str, Any]]:
    """Minimum time per named run over ``repeats`` interleaved rounds, and the last result."""
    times = {name: float("inf") for name in runs}
    results: dict[str, Any] = {}
    for _ in range(repeats):
        for name, fn in runs.items():
            seconds, results[name] = timed(fn)
            times[name] = min(times[name], seconds)
    return times, results


def forward_per_image(
    model: torch.nn.Module, x: torch.Tensor, batch: int, repeats: int, layout: torch.memory_format
) -> float:
    inputs = x.expand(batch, *x.shape[1:]).contiguous(memory_format=layout)
    with torch.inference_mode():
        model(inputs)  # warm-up: oneDNN builds its kernels for this shape once
        return min(timed(lambda: model(inputs))[0] for _ in range(max(repeats, 3))) / batch


def nonconstant_channels(model: torch.nn.Module, x: torch.Tensor) -> int:
    store: dict[str, torch.Tensor] = {}
    handle = model.layer4.register_forward_hook(lambda m, i, o: store.setdefault("a", o))
    try:
        with torch.inference_mode():
            model(x)
    finally:
        handle.remove()
    rows = store["a"][0].flatten(1)
    return int((rows.amax(1) > rows.amin(1)).sum())


def pgc_scorecam(model: torch.nn.Module, x: torch.Tensor, cls: int) -> np.ndarray:
    from pytorch_grad_cam import ScoreCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    with ScoreCAM(model=model, target_layers=[model.layer4]) as cam:
        return cam(input_tensor=x, targets=[ClassifierOutputTarget(cls)])


def classification(size: int, repeats: int, budgets: tuple[int, ...]) -> list[str]:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(3))
    cls = int(model(x).argmax())

    def ours(method: str, **options: Any) -> Callable[[], medcam.Explanation]:
        return lambda: medcam.explain(model, x, method, target=cls, layers="layer4", **options)

    nonconstant = nonconstant_channels(model, x)
    floor_batches = -(-nonconstant // 16)
    floor_inputs = x.expand(16, *x.shape[1:]).contiguous()

    def floor_run() -> None:
        with torch.inference_mode():
            for _ in range(floor_batches):
                model(floor_inputs)

    runs = {
        "forward-pass floor": floor_run,
        "pytorch-grad-cam ScoreCAM": lambda: pgc_scorecam(model, x, cls),
        "medcam scorecam fp32": ours("scorecam"),
        "medcam scorecam bf16": ours("scorecam", precision="bf16"),
        "medcam fusioncam fp32": ours("fusioncam"),
        "medcam fusioncam bf16": ours("fusioncam", precision="bf16"),
    }
    times, results = best_of(runs, repeats)
    parity = ours("scorecam", weights="softmax_over_channels")()
    reference = results["pytorch-grad-cam ScoreCAM"]
    reference = (reference - reference.min()) / (reference.max() - reference.min())
    parity_error = float(np.abs(parity.map.numpy() - reference).max())

    # the floor run does whole batches of 16; charge it for the non-constant channels only
    per_image = times.pop("forward-pass floor") / (floor_batches * 16)
    floor = nonconstant * per_image
    per_image_cl = forward_per_image(model, x, 16, repeats, torch.channels_last)
    # for scale: how far the Score-CAM weights move the map away from equal weights
    store: dict[str, torch.Tensor] = {}
    handle = model.layer4.register_forward_hook(lambda m, i, o: store.setdefault("a", o))
    try:
        with torch.inference_mode():
            model(x)
    finally:
        handle.remove()
    equal = torch.nn.functional.interpolate(store["a"].sum(1, keepdim=True), size=x.shape[2:], mode="bilinear")
    fp32 = results["medcam scorecam fp32"]
    layer = fp32.stats["layers"]["layer4"]
    pgc = times["pytorch-grad-cam ScoreCAM"]

    lines = [
        f"### ResNet-18 layer4, one {size}x{size} image, class {cls}",
        "",
        f"{layer['channels']} channels, {layer['constant']} constant, {layer['scored']} distinct masks scored; "
        f"batched forward (batch 16, fp32) {per_image * 1e3:.1f} ms/image contiguous (over {floor_batches} "
        f"batches), {per_image_cl * 1e3:.1f} ms/image channels-last (one batch); floor = {nonconstant} x "
        f"{per_image * 1e3:.1f} ms = {floor:.2f} s. Parity of `weights='softmax_over_channels'` with pytorch-grad-cam: "
        f"max |diff| = {parity_error:.1e}. For scale, the unweighted channel sum has Spearman "
        f"{spearman(equal[:, 0], fp32.map):.4f} to the fp32 Score-CAM map.",
        "",
        "| run | time (s) | vs pytorch-grad-cam | vs floor | agreement |",
        "|---|---:|---:|---:|---|",
    ]
    for name, seconds in times.items():
        note = ""
        if name == "medcam scorecam bf16":
            note = f"Spearman to fp32 map {spearman(results[name].map, fp32.map):.6f}"
        if name.startswith("medcam fusioncam"):
            own = name.replace("fusioncam", "scorecam")
            note = (
                f"{seconds / times[own]:.3f}x its Score-CAM; inputs scored {results[name].stats['scored_inputs']} "
                f"vs {results[own].stats['scored_inputs']}"
            )
        lines.append(f"| {name} | {seconds:.2f} | {pgc / seconds:.2f}x faster | {seconds / floor:.2f}x | {note} |")
    lines.append(f"| forward-pass floor | {floor:.2f} | {pgc / floor:.2f}x faster | 1.00x | |")
    lines += ["", "Channel budget (`max_channels`, fp32) against the full Score-CAM map:", ""]
    lines += ["| max_channels | time (s) | Spearman | Pearson |", "|---:|---:|---:|---:|"]
    for budget in budgets:
        seconds, exp = timed(ours("scorecam", max_channels=budget))
        lines.append(
            f"| {budget} | {seconds:.2f} | {spearman(exp.map, fp32.map):.4f} | {pearson(exp.map, fp32.map):.4f} |"
        )
    return lines


def segmentation(size: int, repeats: int, budget: int, channels: tuple[int, ...]) -> list[str]:
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    strides = (2,) * (len(channels) - 1)
    model = UNet(3, 1, 3, channels=channels, strides=strides, num_res_units=2).eval()
    x = torch.randn(1, 1, size, size, size, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        predicted = model(x).argmax(1)
    pixels = "predicted" if bool((predicted == 1).any()) else "image"
    target = medcam.SegmentationTarget(1, pixels=pixels)
    layer, _ = medcam.resolve_layers(model, "auto", x)
    path = next(iter(layer.values()))

    def fusion(**options: Any) -> Callable[[], medcam.Explanation]:
        return lambda: medcam.explain(model, x, "fusioncam", target=target, layers=path, **options)

    runs = {
        "fusioncam, region=scorecam (full)": fusion(),
        "fusioncam, region=groupcam": fusion(region="groupcam"),
        "fusioncam, region=scorecam (full), bf16": fusion(precision="bf16"),
        f"fusioncam, region=scorecam, max_channels={budget}": fusion(max_channels=budget),
        f"fusioncam, region=scorecam, max_channels={budget}, bf16": fusion(max_channels=budget, precision="bf16"),
        "scorecam (full)": lambda: medcam.explain(model, x, "scorecam", target=target, layers=path),
        f"scorecam, max_channels={budget}": lambda: medcam.explain(
            model, x, "scorecam", target=target, layers=path, max_channels=budget
        ),
    }
    times, results = best_of(runs, repeats)
    full_fusion = results["fusioncam, region=scorecam (full)"].map
    full_score = results["scorecam (full)"].map
    width = results["scorecam (full)"].stats["layers"][path]["channels"]
    lines = [
        f"### MONAI UNet 3D (channels {channels[0]}-{channels[-1]}, 2 residual units), one {size}^3 volume, "
        f"layer `{path}` ({width} channels), class 1 over `{pixels}`",
        "",
        "| run | time (s) | Spearman to full Fusion-CAM | Spearman to full Score-CAM |",
        "|---|---:|---:|---:|",
    ]
    for name, seconds in times.items():
        exp = results[name]
        lines.append(
            f"| {name} | {seconds:.2f} | {spearman(exp.map, full_fusion):.4f} | {spearman(exp.map, full_score):.4f} |"
        )
    full, own = "fusioncam, region=scorecam (full)", "scorecam (full)"
    lines += [
        "",
        f"Fusion-CAM (full Score-CAM part) / Score-CAM: {times[full] / times[own]:.3f}x; inputs scored "
        f"{results[full].stats['scored_inputs']} vs {results[own].stats['scored_inputs']} (plus one captured "
        "pass each, with a backward pass for Fusion-CAM).",
    ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes, one repeat (a smoke run)")
    parser.add_argument("--repeats", type=int, default=None, help="timing repeats (default 3, quick 1)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument(
        "--clock",
        choices=sorted(CLOCK),
        default="wall",
        help="wall time, or process CPU time (steadier on a loaded machine with --threads 1)",
    )
    args = parser.parse_args()
    global clock
    clock = CLOCK[args.clock]
    if args.threads:
        torch.set_num_threads(args.threads)
    repeats = args.repeats or (1 if args.quick else 3)
    size2d, size3d = (64, 32) if args.quick else (224, 64)
    unet = (8, 16, 32, 64) if args.quick else (16, 32, 64, 128, 256)
    budgets = (64,) if args.quick else (64, 128, 256)
    print(f"## Region and fusion methods{' (quick)' if args.quick else ''}\n")
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.machine()}, "
        f"{args.clock} clock, best of {repeats}\n"
    )
    print("\n".join(classification(size2d, repeats, budgets)))
    print()
    print("\n".join(segmentation(size3d, repeats, 64 if not args.quick else 16, unet)))


if __name__ == "__main__":
    main()
