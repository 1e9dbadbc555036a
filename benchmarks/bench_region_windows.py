"""Region methods over sliding windows (issue 14): cost against the floor, bf16, Fusion-CAM, a KiTS-sized CT.

Demo phantom (``demo``): the demo model on the demo phantom (class tumour, M = the
predicted tumour), through ``explain_volume`` (the pipeline of ``medcam explain``); the
CAM stage is timed (``timings_s["cam"]``). The floor is what Score-CAM cannot avoid:
scored (non-constant) channels x windows meeting M x the time of one window row in a
batched forward pass (``batch_size`` rows of masked windows, measured in the same run,
before and after, at the same precision). Jobs run interleaved in one process:
floor fp32, Score-CAM fp32, floor bf16, Score-CAM bf16, Fusion-CAM fp32, floor fp32 again.

KiTS-sized phantom (``kits``): the 512 x 512 x 200 phantom and U-Net of
``bench_explain.py``, M = the tumour mask: MONAI ``sliding_window_inference`` alone,
then ``medcam explain`` with Score-CAM and Fusion-CAM; each job in its own process, so
peak RSS (``ru_maxrss``) is that job's.

    python benchmarks/bench_region_windows.py demo
    python benchmarks/bench_region_windows.py kits [--quick]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))


def forward_floor(model, roi: tuple[int, ...], batch_size: int, precision: str, repeats: int = 5) -> float:
    """Seconds per window row of a batched forward pass at ``precision`` (median of ``repeats``)."""
    import torch

    from medcam.methods.region import autocast_dtype

    dtype = autocast_dtype(torch.device("cpu"), precision)
    batch = torch.rand(batch_size, 1, *roi)
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        with torch.inference_mode(), torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            model(batch)
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:]) / batch_size


def spearman(a, b) -> float:
    import numpy as np
    from scipy.stats import spearmanr

    return float(spearmanr(np.ravel(a), np.ravel(b)).statistic)


def demo(batch_size: int, layer: str) -> None:
    import torch

    from medcam.data.synthetic import write_kits_case
    from medcam.models.checkpoint import DEMO_CHECKPOINT
    from medcam.models.loading import load_model
    from medcam.pipeline import explain_volume
    from medcam.pipeline.demo import DEMO_CLASS

    with tempfile.TemporaryDirectory() as tmp:
        case = write_kits_case(Path(tmp), 0, seed=0) / "imaging.nii.gz"
        loaded = load_model(str(DEMO_CHECKPOINT), "cpu")
        model, roi = loaded.bundle.model.eval(), tuple(loaded.bundle.meta.patch_size)
        floors: dict[str, list[float]] = {"fp32": [], "bf16": []}
        runs = {}

        def explain(method: str, **options):
            opts = {"batch_size": batch_size, **options}
            start = time.perf_counter()
            found = explain_volume(
                case, class_name=DEMO_CLASS, model=loaded, method=method, method_options=opts, layer=layer
            )
            total = time.perf_counter() - start
            return found, total

        def note(text: str) -> None:
            print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)

        floors["fp32"].append(forward_floor(model, roi, batch_size, "fp32"))
        note(f"floor fp32 {floors['fp32'][-1]:.4f} s/row")
        runs["scorecam fp32"] = explain("scorecam")
        note(f"scorecam fp32 cam {runs['scorecam fp32'][0].summary['timings_s']['cam']} s")
        floors["bf16"].append(forward_floor(model, roi, batch_size, "bf16"))
        note(f"floor bf16 {floors['bf16'][-1]:.4f} s/row")
        runs["scorecam bf16"] = explain("scorecam", precision="bf16")
        note(f"scorecam bf16 cam {runs['scorecam bf16'][0].summary['timings_s']['cam']} s")
        runs["fusioncam fp32"] = explain("fusioncam")  # the segmentation variant, the default here
        note(f"fusioncam fp32 cam {runs['fusioncam fp32'][0].summary['timings_s']['cam']} s")
        floors["fp32"].append(forward_floor(model, roi, batch_size, "fp32"))
        note(f"floor fp32 {floors['fp32'][-1]:.4f} s/row")
    threads = torch.get_num_threads()
    print(
        f"demo phantom, demo model (window {roi}), class {DEMO_CLASS}, layer {layer}, batch_size {batch_size}, "
        f"{threads} threads"
    )
    print()
    print(
        "| job | CAM stage (s) | scored channels | windows meeting M / all | masked passes | floor (s) | CAM / floor |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    cams = {}
    for label, (found, _) in runs.items():
        summary = found.summary
        stats = summary["method"]["stats"]
        cam = summary["timings_s"]["cam"]
        cams[label] = cam
        scored = sum(layer["scored"] for layer in stats["layers"].values())
        meeting = sum(stats["windows_meeting_M"])
        windows = summary["sliding_window"]["windows"]
        precision = "bf16" if "bf16" in label else "fp32"
        floor = scored * meeting * statistics.mean(floors[precision])
        print(
            f"| {label} | {cam:.2f} | {scored} | {meeting} / {windows} | {stats['masked_window_passes']} | "
            f"{floor:.2f} | {cam / floor:.2f}x |"
        )
    print()
    per_row = {k: [round(f * 1e3, 2) for f in v] for k, v in floors.items()}
    print(f"window row forward time (ms, before / after): fp32 {per_row['fp32']}, bf16 {per_row['bf16']}")
    primary = runs["scorecam fp32"][0].primary
    rho = spearman(runs["scorecam fp32"][0].maps[primary], runs["scorecam bf16"][0].maps[primary])
    print(f"Score-CAM bf16 vs fp32: {cams['scorecam fp32'] / cams['scorecam bf16']:.2f}x faster, Spearman {rho:.4f}")
    print(f"Fusion-CAM / Score-CAM (fp32): {cams['fusioncam fp32'] / cams['scorecam fp32']:.3f}x")


def worker_explain(files: dict[str, str], method: str, out: Path) -> dict[str, float]:
    import monai  # noqa: F401  (imported before the clock, as in the inference worker)

    from medcam.pipeline import explain_case

    start = time.perf_counter()
    explain_case(
        files["image"], out, class_name="tumor", model=files["model"], method=method,
        pixels=f"mask:{files['mask']}", overwrite=True,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    summary = json.loads((out / "summary.json").read_text())
    stats = summary["method"]["stats"]
    return {
        "seconds": seconds,
        "windows": summary["sliding_window"]["windows"],
        "meeting": sum(stats["windows_meeting_M"]),
        "masked_passes": stats["masked_window_passes"],
        **{f"t_{k}": v for k, v in summary["timings_s"].items()},
    }


def kits(quick: bool, methods: list[str]) -> None:
    import bench_explain

    shape, patch = ((100, 256, 256), 64) if quick else ((200, 512, 512), 96)
    work = HERE / "out" / "explain" / ("quick" if quick else "full")
    files = bench_explain.prepare(work, shape, patch)
    payload = json.dumps(files)

    def run(args: list[str]) -> dict[str, float]:
        done = subprocess.run(
            [sys.executable, __file__, "worker", *args], capture_output=True, text=True, check=False, cwd=REPO
        )
        if done.returncode != 0:
            raise RuntimeError(f"worker {args[0]} failed:\n{done.stderr[-3000:]}")
        return json.loads(done.stdout.strip().splitlines()[-1])

    infer = run(["inference", payload])
    print(f"[{time.strftime('%H:%M:%S')}] inference: {infer}", file=sys.stderr, flush=True)
    rows = [("MONAI sliding_window_inference alone", infer)]
    for method in methods:
        rows.append(
            (f"medcam explain --method {method}, M = tumour", run([method, payload, str(work / f"out_{method}")]))
        )
    print(f"phantom {shape[2]} x {shape[1]} x {shape[0]} voxels (KiTS IPL), 3D U-Net (16-32-64-128), window {patch}^3")
    print()
    print("| job | time (s) | x inference | peak RSS (GB) | windows meeting M / all | masked window passes |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, result in rows:
        windows = f"{int(result['meeting'])} / {int(result['windows'])}" if "windows" in result else "-"
        passes = f"{int(result['masked_passes'])}" if "masked_passes" in result else "-"
        ratio = result["seconds"] / infer["seconds"]
        print(
            f"| {label} | {result['seconds']:.1f} | {ratio:.2f} | {result['peak_rss_gb']:.2f} | {windows} | {passes} |"
        )
    print()
    for label, result in rows[1:]:
        parts = ", ".join(f"{k[2:]} {v:.1f}" for k, v in result.items() if k.startswith("t_"))
        print(f"{label}: {parts} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["demo", "kits", "worker"])
    parser.add_argument("rest", nargs="*", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="kits: 256 x 256 x 100, 64^3 windows")
    parser.add_argument("--methods", default="scorecam,fusioncam", help="kits: methods to run")
    parser.add_argument("--layer", default="auto", help="demo: the explained layer (e.g. levels:bottleneck)")
    parser.add_argument("--batch-size", type=int, default=16, help="demo: the methods' batch_size")
    args = parser.parse_args()
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("medcam.cost").setLevel(logging.INFO)  # the announced cost, on stderr
    if args.what == "demo":
        demo(args.batch_size, args.layer)
    elif args.what == "kits":
        kits(args.quick, args.methods.split(","))
    else:
        import bench_explain

        kind, files = args.rest[0], json.loads(args.rest[1])
        if kind == "inference":
            result = bench_explain.worker_inference(files)
        else:
            result = worker_explain(files, kind, Path(args.rest[2]))
        result["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
        print(json.dumps(result))


if __name__ == "__main__":
    main()
