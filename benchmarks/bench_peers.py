"""Time medcam against its peers on the same seeded models, inputs and targets.

Peers: pytorch-grad-cam (GradCAM, HiResCAM, ScoreCAM), captum (LayerGradCam), MONAI
(monai.visualize.GradCAM) and M3d-CAM (its PyPI package is also called ``medcam``,
so it runs in a separate virtual environment, see peer_env.py). Cases (cases.py):
torchvision ResNet-18 / ResNet-50 classification at 224 x 224, and a 3D MONAI UNet
at 64^3, 96^3 and 128^3 explained at its bottleneck for S = sum over M of the class
logits (M = the class's predicted voxels); peers that take a scalar get exactly that
S through their own target mechanism.

Every measurement is a fresh process (peer_worker.py): one warm-up call, then the
median of ``--repeats`` calls; peak memory is what the first call adds to the
resident set (see peer_worker.py). Each peer's map is compared with medcam's map of
the same method by Pearson correlation, so a fast but wrong map is marked wrong.

    python benchmarks/bench_peers.py [--quick] [--repeats 5] [--threads 2]

Prints a markdown table per case and writes the raw results as JSON under --out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from cases import CASES  # noqa: E402

# library -> methods it offers, under medcam's method names
PEERS: dict[str, tuple[str, ...]] = {
    "pytorch-grad-cam": ("gradcam", "hirescam", "scorecam"),
    "captum": ("gradcam",),
    "monai": ("gradcam",),
    "m3d-cam": ("gradcam",),
}
QUICK_CASES = ("resnet18-2d", "unet3d-64")
AGREE, INVERTED, UNRELATED = 0.98, -0.90, 0.50


@dataclass
class Job:
    case: str
    library: str
    method: str


def medcam_methods() -> tuple[str, ...]:
    sys.path.insert(0, str(ROOT))
    import medcam

    wanted = ("gradcam", "hirescam", "scorecam")
    return tuple(m for m in wanted if m in medcam.list_methods())


def plan(cases: list[str], libraries: list[str], quick: bool) -> list[Job]:
    ours = medcam_methods()
    jobs = []
    for case in cases:
        for method in ours:
            if not (quick and method == "scorecam"):
                jobs.append(Job(case, "medcam", method))
        for library in libraries:
            for method in PEERS[library]:
                if quick and method == "scorecam":
                    continue
                jobs.append(Job(case, library, method))
    return jobs


def run_job(job: Job, args: argparse.Namespace, maps: Path, peer_python: Path | None) -> dict[str, Any]:
    map_out = maps / f"{job.case}.{job.library}.{job.method}.npy"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["OMP_NUM_THREADS"] = str(args.threads)
    if job.library == "m3d-cam":
        if peer_python is None:
            return {"status": "skipped", "error": "no peer environment (--no-m3dcam)"}
        python = str(peer_python)
    else:
        python = sys.executable
        env["PYTHONPATH"] = str(ROOT)
    command = [
        python,
        str(HERE / "peer_worker.py"),
        *("--case", job.case, "--library", job.library, "--method", job.method),
        *("--repeats", str(args.repeats), "--threads", str(args.threads), "--budget", str(args.budget)),
        *("--map-out", str(map_out)),
    ]
    started = time.perf_counter()
    try:
        done = subprocess.run(
            command, env=env, cwd=tempfile.gettempdir(), capture_output=True, text=True, timeout=args.timeout
        )
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "error": f"timed out after {args.timeout:.0f} s"}
    wall = time.perf_counter() - started
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        if done.returncode in (-9, 137):
            return {"status": "oom", "error": "killed by signal 9 (out of memory?)"}
        tail = done.stderr.strip().splitlines()[-1:] or [f"exit status {done.returncode}"]
        return {"status": "error", "error": tail[0][:300]}
    result = json.loads(lines[-1])
    result["wall"] = wall
    if result.get("status") == "ok":
        result["map"] = str(map_out)
    return result


def correlation(a: Path, b: Path) -> float:
    x, y = np.load(a).ravel().astype(np.float64), np.load(b).ravel().astype(np.float64)
    if x.shape != y.shape or x.std() == 0 or y.std() == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def verdict(r: float | None) -> str:
    if r is None:
        return "ran; not compared (no medcam map of this method)"
    if np.isnan(r):
        return "WRONG: blank or mis-shaped map"
    if r >= AGREE:
        return "ok"
    if r <= INVERTED:
        return "WRONG: map inverted"
    if r < UNRELATED:
        return "WRONG: map differs"
    return "differs"


def describe(results: list[tuple[Job, dict[str, Any]]]) -> dict[str, Any]:
    """Add ratios to medcam and map correlations to each result."""
    ours = {(j.case, j.method): r for j, r in results if j.library == "medcam" and r.get("status") == "ok"}
    for job, result in results:
        if result.get("status") != "ok":
            continue
        ref = ours.get((job.case, job.method))
        if ref is None or job.library == "medcam":
            result["r"] = None if job.library != "medcam" else 1.0
            continue
        result["time_ratio"] = result["seconds"] / ref["seconds"]
        if "cpu_seconds" in result and "cpu_seconds" in ref:
            result["cpu_ratio"] = result["cpu_seconds"] / max(ref["cpu_seconds"], 1e-9)
        result["memory_ratio"] = result["peak_extra_mb"] / max(ref["peak_extra_mb"], 1e-9)
        result["r"] = correlation(Path(result["map"]), Path(ref["map"]))
    return {"results": results}


# known causes, each checked by hand (benchmarks/RESULTS.md says how)
NOTES = {
    ("monai", "WRONG: map inverted", "classification"): "MONAI's default postprocessing maps the maximum to 0",
    ("monai", "WRONG: map inverted", "segmentation"): "MONAI's default postprocessing maps the maximum to 0",
    ("pytorch-grad-cam", "differs", "segmentation"): "3D maps resized by scipy zoom: cubic spline, corners aligned",
}


def table(case: str, rows: list[tuple[Job, dict[str, Any]]]) -> str:
    info = CASES[case]
    lines = [
        f"**{case}**: {info.description}",
        "",
        "| library | method | median s | CPU s | runs | peak MB | time / medcam | CPU / medcam | memory / medcam "
        "| r vs medcam | status |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for job, r in rows:
        if r.get("status") != "ok":
            status = {
                "oom": "FAILED: out of memory",
                "timeout": "NOT MEASURED: over the --timeout limit",
                "skipped": "skipped",
            }.get(r.get("status", ""), "FAILED")
            lines.append(f"| {job.library} | {job.method} |" + " - |" * 8 + f" {status}: {r.get('error', '')} |")
            continue
        corr = r.get("r")
        state = "reference" if job.library == "medcam" else verdict(corr)
        note = NOTES.get((job.library, state, info.kind))
        if note:
            state += f" ({note})"
        if r.get("cold_only"):
            state += "; one cold call only (over --budget)"
        if not r.get("peak_exact", True):
            state += "; memory = process peak"
        ratio = f"{r['time_ratio']:.2f}x" if "time_ratio" in r else "-"
        cpu = f"{r['cpu_seconds']:.3f}" if "cpu_seconds" in r else "-"
        cpu_ratio = f"{r['cpu_ratio']:.2f}x" if "cpu_ratio" in r else "-"
        mem_ratio = f"{r['memory_ratio']:.2f}x" if "memory_ratio" in r else "-"
        corr_text = "-" if corr is None or job.library == "medcam" else f"{corr:.3f}"
        lines.append(
            f"| {job.library} | {job.method} | {r['seconds']:.3f} | {cpu} | {r['runs']} | {r['peak_extra_mb']:.0f} | "
            f"{ratio} | {cpu_ratio} | {mem_ratio} | {corr_text} | {state} |"
        )
    return "\n".join(lines)


def report(record: dict[str, Any]) -> str:
    """The markdown tables of one run's JSON record."""
    args, load = record["args"], record["load"]
    results = [(Job(r["case"], r["library"], r["method"]), r) for r in record["results"]]
    cases = record.get("cases") or list(dict.fromkeys(r["case"] for r in record["results"]))
    lines = [
        f"#### `{record['command']}` ({record.get('date', 'date not recorded')})",
        "",
        f"{record.get('cpu', 'CPU not recorded')}, torch threads {args['threads']}, "
        f"load average at the end {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}; "
        f"median of {args['repeats']} calls after one warm-up; peak MB = resident memory the first call adds; "
        "r = Pearson correlation of the map with medcam's map of the same method.",
    ]
    if record.get("peer_env"):
        lines.append(f"M3d-CAM {record['peer_env']['medcam_version']} imported from its own environment.")
    for case in cases:
        lines += ["", table(case, [(j, r) for j, r in results if j.case == case])]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="ResNet-18 and UNet 64^3 only, no Score-CAM, 2 repeats")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls after the warm-up (default 5; quick 2)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads per process")
    parser.add_argument("--budget", type=float, default=30.0, help="a first call slower than this is not repeated")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds before a measurement is abandoned")
    parser.add_argument("--cases", default=None, help=f"comma-separated subset of {', '.join(CASES)}")
    parser.add_argument("--libraries", default=",".join(PEERS), help="comma-separated peers")
    parser.add_argument("--methods", default="gradcam,hirescam,scorecam", help="comma-separated methods to time")
    parser.add_argument("--no-m3dcam", action="store_true", help="do not build M3d-CAM's separate environment")
    parser.add_argument("--out", default=str(HERE / "out"), help="folder for maps and the JSON results")
    parser.add_argument("--render", default=None, help="print the tables of a saved JSON record and exit")
    args, unknown = parser.parse_known_args(argv)
    if args.render:
        print(report(json.loads(Path(args.render).read_text())))
        return 0
    if unknown:
        print(f"bench_peers: ignoring options {unknown}", file=sys.stderr)
    if args.repeats is None:
        args.repeats = 2 if args.quick else 5
    cases = args.cases.split(",") if args.cases else list(QUICK_CASES if args.quick else CASES)
    libraries = [name for name in args.libraries.split(",") if name]
    unknown_names = [c for c in cases if c not in CASES] + [p for p in libraries if p not in PEERS]
    if unknown_names:
        parser.error(f"unknown case or library: {unknown_names}")

    peer_python = None
    peer_info: dict[str, Any] = {}
    if "m3d-cam" in libraries and not args.no_m3dcam:
        from peer_env import ensure_peer_env
        from peer_env import peer_python as locate

        root = HERE / ".peer-venv"
        peer_info = ensure_peer_env(root)
        peer_python = locate(root)

    out = Path(args.out)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    maps = out / f"peers-{stamp}-maps"
    maps.mkdir(parents=True, exist_ok=True)
    methods = set(args.methods.split(","))
    jobs = [job for job in plan(cases, libraries, args.quick) if job.method in methods]
    results = []
    for index, job in enumerate(jobs, 1):
        print(f"[{index}/{len(jobs)}] {job.case} {job.library} {job.method}", file=sys.stderr, flush=True)
        results.append((job, run_job(job, args, maps, peer_python)))
    describe(results)
    record = {
        "command": " ".join(["python benchmarks/bench_peers.py", *(argv if argv is not None else sys.argv[1:])]),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "args": vars(args),
        "cpu": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "load": os.getloadavg(),
        "peer_env": peer_info,
        "cases": cases,
        "results": [{"case": j.case, "library": j.library, "method": j.method, **r} for j, r in results],
    }
    (out / f"peers-{stamp}.json").write_text(json.dumps(record, indent=2))
    print(report(record))
    failed_ours = [j for j, r in results if j.library == "medcam" and r.get("status") != "ok"]
    return 1 if failed_ours else 0


if __name__ == "__main__":
    sys.exit(main())
