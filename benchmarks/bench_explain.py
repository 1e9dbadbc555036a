"""Peak memory and time of ``medcam explain`` vs MONAI ``sliding_window_inference`` alone.

A KiTS-sized CT phantom (512 x 512 x 200 voxels, KiTS's IPL orientation, int16 HU) and
a small 3D U-Net (random weights; the cost does not depend on the weights) are written
to a work folder. Each measurement runs in its own process, so peak RSS
(``ru_maxrss``) belongs to that job alone:

* ``inference``: load the volume, the same preprocessing, MONAI
  ``sliding_window_inference`` with the same window, overlap and blending;
* ``explain M=tumour``: the whole ``medcam explain`` (load, preprocess, predict,
  sliding-window HiResCAM over the windows that intersect the tumour, invert, write
  the review folder), M given as the phantom's tumour mask;
* ``explain M=image``: the worst case, every window gets a backward pass.

Each explain job runs once per ``--precision`` (``fp32``: float32 throughout;
``bf16``: prediction and CAM under bfloat16 autocast; ``auto``: bf16 prediction, fp32 CAM).

Targets (issue #4): peak RSS <= 4 GB and time <= 3.5x inference alone. Issue #18: M = tumour
bf16 <= 1.0x and fp32 <= 1.3x MONAI's fp32 inference alone, peak RSS <= 3 GB; M = image <= 2.5x.

    python benchmarks/bench_explain.py                          # 512 x 512 x 200, 96^3 windows
    python benchmarks/bench_explain.py --quick                  # 256 x 256 x 100, 64^3 windows
    python benchmarks/bench_explain.py --precision fp32,bf16    # each explain job in both
    python benchmarks/bench_explain.py --window-batch 1,2,4     # each explain job per window batch
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def phantom(shape: tuple[int, int, int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """An abdomen-like CT in KiTS index order (I, P, L) and its tumour mask."""
    rng = np.random.default_rng(seed)
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    zc, yc, xc = (s / 2 for s in shape)
    ct = np.full(shape, -1000, dtype=np.int16)
    body = ((y - yc) / (0.42 * shape[1])) ** 2 + ((x - xc) / (0.47 * shape[2])) ** 2 <= 1
    ct[np.broadcast_to(body, shape)] = 40
    spine = ((y - yc * 1.35) / (0.06 * shape[1])) ** 2 + ((x - xc) / (0.06 * shape[2])) ** 2 <= 1
    ct[np.broadcast_to(spine, shape)] = 400
    tumour = np.zeros(shape, dtype=bool)
    for side in (-1, 1):
        kidney = (
            ((z - zc) / (0.3 * shape[0])) ** 2
            + ((y - yc * 1.2) / (0.09 * shape[1])) ** 2
            + ((x - xc - side * 0.22 * shape[2]) / (0.06 * shape[2])) ** 2
        ) <= 1
        ct[kidney] = 30
    tumour |= (
        ((z - zc * 1.1) / (0.08 * shape[0])) ** 2
        + ((y - yc * 1.2) / (0.04 * shape[1])) ** 2
        + ((x - xc - 0.25 * shape[2]) / (0.04 * shape[2])) ** 2
    ) <= 1
    ct[tumour] = 70
    ct = (ct + rng.normal(0, 8, shape).astype(np.int16)).astype(np.int16)
    return ct, tumour.astype(np.uint8)


def prepare(folder: Path, shape: tuple[int, int, int], patch: int) -> dict[str, str]:
    import nibabel as nib
    import torch

    from medcam.models.checkpoint import CheckpointMeta, Preprocessing, save_checkpoint
    from medcam.models.factory import build_model

    folder.mkdir(parents=True, exist_ok=True)
    image, mask = folder / "imaging.nii.gz", folder / "tumour.nii.gz"
    if not image.exists():
        ct, tumour = phantom(shape)
        affine = np.array([[0, 0, -0.78, 200.0], [0, -0.78, 0, 200.0], [-2.5, 0, 0, 250.0], [0, 0, 0, 1]])
        for data, path in ((ct, image), (tumour, mask)):
            img = nib.Nifti1Image(data, None)
            img.header.set_sform(affine, code=2)
            img.header.set_qform(affine, code=0)
            img.header.set_zooms((2.5, 0.78, 0.78))
            nib.save(img, str(path))
    arguments = {
        "spatial_dims": 3,
        "in_channels": 1,
        "out_channels": 3,
        "channels": [16, 32, 64, 128],
        "strides": [2, 2, 2],
        "num_res_units": 1,
    }
    torch.manual_seed(0)
    model = build_model("monai.UNet", **arguments)
    meta = CheckpointMeta(
        architecture="monai.UNet",
        arguments=arguments,
        task="segmentation",
        spatial_dims=3,
        in_channels=1,
        labels={"background": 0, "kidney": 1, "tumor": 2},
        patch_size=(patch, patch, patch),
        preprocessing=Preprocessing(orientation="RAS", a_min=-200.0, a_max=300.0),
    )
    save_checkpoint(folder / "unet3d.pt", model, meta)
    return {"image": str(image), "mask": str(mask), "model": str(folder / "unet3d.pt")}


def worker_inference(files: dict[str, str]) -> dict[str, float]:
    import torch
    from monai.inferers import sliding_window_inference

    from medcam.models.checkpoint import load_checkpoint
    from medcam.volumes.io import load_volume
    from medcam.volumes.preprocessing import prepare as to_grid

    bundle = load_checkpoint(files["model"])
    meta = bundle.meta
    x = to_grid(load_volume(files["image"]), meta.preprocessing, spatial_dims=3, in_channels=1).image
    start = time.perf_counter()
    with torch.no_grad():
        out = sliding_window_inference(x, meta.patch_size, 1, bundle.model, overlap=0.25, mode="gaussian")
    seconds = time.perf_counter() - start
    labels = out.argmax(1)
    return {"seconds": seconds, "voxels_labelled": float(labels.numel())}


def worker_explain(files: dict[str, str], pixels: str, out: Path, precision: str, batch: int) -> dict[str, float]:
    import monai  # noqa: F401  (imported before the clock, as in the inference worker)

    from medcam.pipeline import explain_case

    start = time.perf_counter()
    explain_case(
        files["image"], out, class_name="tumor", model=files["model"], pixels=pixels, precision=precision,
        window_batch=batch, overwrite=True,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    summary = json.loads((out / "summary.json").read_text())
    return {
        "seconds": seconds,
        "windows": summary["sliding_window"]["windows"],
        "windows_with_backward": summary["sliding_window"]["windows_with_backward"],
        **{f"t_{k}": v for k, v in summary["timings_s"].items()},
    }


def run_worker(args: list[str]) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, __file__, "--worker", *args], capture_output=True, text=True, check=False, cwd=REPO
    )
    if done.returncode != 0:
        raise RuntimeError(f"worker {args[0]} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="256 x 256 x 100 phantom, 64^3 windows")
    parser.add_argument("--work", default=str(HERE / "out" / "explain"), help="work folder")
    parser.add_argument("--precision", default="fp32", help="comma-separated explain precisions (fp32,bf16,auto)")
    parser.add_argument("--pixels", default="tumour,image", help="comma-separated jobs: tumour, image")
    parser.add_argument("--window-batch", default="1", help="comma-separated --window-batch values of explain")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        kind, files_json = args.worker[0], args.worker[1]
        files = json.loads(files_json)
        if kind == "inference":
            result = worker_inference(files)
        else:
            result = worker_explain(files, args.worker[2], Path(args.worker[3]), args.worker[4], int(args.worker[5]))
        result["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
        print(json.dumps(result))
        return
    shape, patch = ((100, 256, 256), 64) if args.quick else ((200, 512, 512), 96)
    work = Path(args.work) / ("quick" if args.quick else "full")
    files = prepare(work, shape, patch)
    payload = json.dumps(files)
    infer = run_worker(["inference", payload])
    rows = [("MONAI sliding_window_inference alone", infer, 1.0)]
    jobs = {"tumour": ("M = tumour mask", f"mask:{files['mask']}"), "image": ("M = image", "image")}
    for name in args.pixels.split(","):
        label, pixels = jobs[name]
        for precision in args.precision.split(","):
            for batch in args.window_batch.split(","):
                out = str(work / f"out_{name}_{precision}_{batch}")
                result = run_worker(["explain", payload, pixels, out, precision, batch])
                tag = f", window batch {batch}" if "," in args.window_batch else ""
                ratio = result["seconds"] / infer["seconds"]
                rows.append((f"medcam explain, {label}, {precision}{tag}", result, ratio))
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"phantom {shape[2]} x {shape[1]} x {shape[0]} voxels (KiTS IPL), 3D U-Net (16-32-64-128), window {patch}^3")
    print(f"load average at the end: {load}")
    print()
    print("| job | time (s) | x inference | peak RSS (GB) | windows with backward |")
    print("|---|---:|---:|---:|---:|")
    for label, result, ratio in rows:
        windows = f"{int(result['windows_with_backward'])} / {int(result['windows'])}" if "windows" in result else "-"
        print(f"| {label} | {result['seconds']:.1f} | {ratio:.2f} | {result['peak_rss_gb']:.2f} | {windows} |")
    print()
    for label, result, _ in rows[1:]:
        parts = ", ".join(f"{k[2:]} {v:.1f}" for k, v in result.items() if k.startswith("t_"))
        print(f"{label}: {parts} s")


if __name__ == "__main__":
    main()
