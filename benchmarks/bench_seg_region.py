"""Seg-Fusion's gradient part and Score-CAM's options for segmentation, by measurement (issue 13).

    python training/make_synthetic.py kits23 /tmp/h13/phantoms --cases 6 --seed 1000
    PYTHONPATH=. python benchmarks/bench_seg_region.py --root /tmp/h13/phantoms [--part fusion|scorecam|all]

The shipped demo U-Net, class tumour, M = the predicted tumour, on the held-out KiTS-like
phantoms of configs/eval_kits_phantom.yaml (dataset seed 1000, never seen in training), the
config's preprocessing and padding; every case fits one window. Each map is scored by

* energy inside the ground-truth tumour and its ratio to chance (the tumour's share of the
  volume: a map spread evenly scores 1x);
* keep-top-k and remove-top-k of medcam.metrics.region_faithfulness with the evaluation's
  settings (k = 0.5, 1, 2, 4 x |M|, the "min" baseline, seed 0).

Part ``fusion``: Seg-Grad-CAM, Seg-HiRes-Grad CAM and Fusion-CAM's segmentation variant with
``gradient="gradcam"`` and ``"hirescam"`` at the default layer, and why the guard fell back
(``stats["fallback"]``). Part ``scorecam``: Score-CAM under mask / baseline / weights / layer
settings. Prints markdown tables and writes every number to ``--json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
from bench_masking import samples  # the eval config's held-out phantoms, as bench_masking reads them

from medcam.api import explain
from medcam.metrics.localisation import energy_inside
from medcam.metrics.region_faithfulness import keep_remove_top_k, random_map

FUSION: list[tuple[str, str, dict[str, Any]]] = [
    ("Seg-Grad-CAM", "gradcam", {}),
    ("Seg-HiRes-Grad CAM", "hirescam", {}),
    ("Seg-Fusion, gradient=gradcam", "fusioncam", {"gradient": "gradcam", "variant": "segmentation"}),
    ("Seg-Fusion, gradient=hirescam", "fusioncam", {"gradient": "hirescam", "variant": "segmentation"}),
]
# the other region-scored methods under the soft (the previous default) and binary 1 % masks over air
BINARY = {"mask": "binary", "mask_top": 0.01, "baseline": "min"}
MASKED: list[tuple[str, str, dict[str, Any]]] = [
    ("Group-CAM, soft, min", "groupcam", {"mask": "soft", "baseline": "min"}),
    ("Group-CAM, binary 1 %, min", "groupcam", BINARY),
    ("Seg-Fusion, gradient=gradcam, binary 1 %", "fusioncam", {"gradient": "gradcam", **BINARY}),
    ("Seg-Fusion, gradient=hirescam, binary 1 %", "fusioncam", {"gradient": "hirescam", **BINARY}),
]
SCORECAM: list[tuple[str, dict[str, Any]]] = [
    ("soft, min, increase", {"mask": "soft", "baseline": "min", "weights": "increase"}),
    ("soft, min, probability", {"mask": "soft", "baseline": "min", "weights": "probability"}),
    ("binary 1 %, min, increase", {"mask": "binary", "mask_top": 0.01, "baseline": "min", "weights": "increase"}),
    ("binary 5 %, min, increase", {"mask": "binary", "mask_top": 0.05, "baseline": "min", "weights": "increase"}),
    ("soft, blur, increase", {"mask": "soft", "baseline": "blur", "weights": "increase"}),
    ("soft, blur, probability", {"mask": "soft", "baseline": "blur", "weights": "probability"}),
    ("binary 1 %, blur, increase", {"mask": "binary", "mask_top": 0.01, "baseline": "blur", "weights": "increase"}),
    ("binary 5 %, blur, increase", {"mask": "binary", "mask_top": 0.05, "baseline": "blur", "weights": "increase"}),
    ("soft, mean, increase", {"mask": "soft", "baseline": "mean", "weights": "increase"}),
    ("binary 5 %, mean, increase", {"mask": "binary", "mask_top": 0.05, "baseline": "mean", "weights": "increase"}),
    ("binary 0.5 %, min, increase", {"mask": "binary", "mask_top": 0.005, "baseline": "min", "weights": "increase"}),
    ("binary 2 %, min, increase", {"mask": "binary", "mask_top": 0.02, "baseline": "min", "weights": "increase"}),
]
MULTIPLES = (0.5, 1.0, 2.0, 4.0)


def score(model: Any, x: torch.Tensor, maps: torch.Tensor, target: Any, truth: torch.Tensor) -> dict[str, float]:
    """Energy inside (and x chance), keep- and remove-top-k of one map, as medcam evaluate scores it."""
    top = keep_remove_top_k(model, x, maps, target, multiples=MULTIPLES, baseline="min", batch_size=4, seed=0)
    inside = float(energy_inside(maps, truth)[0])
    return {
        "energy": inside,
        "x_chance": inside / float(truth.float().mean()),
        "keep": float(top.keep_score[0]),
        "remove": float(top.remove_score[0]),
    }


def run(model: Any, sample: Any, method: str, layer: str, **options: Any) -> dict[str, Any]:
    x = sample.image.unsqueeze(0)
    started = time.perf_counter()
    exp = explain(model, x, method, sample.target, layer, **options)
    seconds = time.perf_counter() - started
    row: dict[str, Any] = {**score(model, x, exp.map, exp.target, sample.truth.bool()), "seconds": seconds}
    row["case"] = sample.id
    fallback = exp.stats.get("fallback")
    if fallback:
        (reasons,) = fallback.values()
        (betas,) = exp.stats["betas"].values()
        row.update(fallback=reasons[0], keep_gradient=betas["keep_gradient"][0], keep_fused=betas["keep_fused"][0])
    shown = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items())
    print(f"  {method} {options}: {shown}", flush=True)
    return row


def controls(model: Any, sample: Any) -> dict[str, dict[str, float]]:
    x = sample.image.unsqueeze(0)
    truth = sample.truth.bool()
    exp = explain(model, x, "gradcam", sample.target, "levels:dec1")  # binds M as the methods do
    noise = random_map(torch.zeros(1, *x.shape[2:]), 0)
    return {
        "control: random map": score(model, x, noise, exp.target, truth),
        "control: truth mask": score(model, x, truth.float().unsqueeze(0), exp.target, truth),
    }


def table(title: str, rows: dict[str, list[dict[str, Any]]]) -> None:
    print(f"\n### {title}\n")
    print("| map | energy x chance (per case) | mean x chance | cases >= 10x | keep-top-k (mean) | remove (mean) |")
    print("|---|---|---:|---:|---:|---:|")
    for name, values in rows.items():
        ratios = [v["x_chance"] for v in values]
        per = ", ".join(f"{r:.1f}" for r in ratios)
        mean = sum(ratios) / len(ratios)
        tens = sum(r >= 10 for r in ratios)
        keep = sum(v["keep"] for v in values) / len(values)
        remove = sum(v["remove"] for v in values) / len(values)
        print(f"| {name} | {per} | {mean:.1f} | {tens}/{len(values)} | {keep:.3f} | {remove:.3f} |", flush=True)
    fused = {k: v for k, v in rows.items() if any("fallback" in r for r in v)}
    for name, values in fused.items():
        print(
            f"\n{name}: "
            + "; ".join(f"{v['fallback']} (keep {v['keep_fused']:.3f} vs {v['keep_gradient']:.3f})" for v in values)
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="data/eval_kits_phantom")
    parser.add_argument("--cases", type=int, default=6)
    parser.add_argument("--part", choices=("fusion", "scorecam", "masked", "all"), default="all")
    parser.add_argument("--layers", default="dec1", help="comma-separated levels for the Score-CAM part")
    parser.add_argument("--settings", default=None, help="comma-separated indices into SCORECAM (default: all)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=None, help="write every number here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, chosen = samples(args.root, args.cases)
    print(f"cases: {[s.id for s in chosen]}")
    out: dict[str, dict[str, list[dict[str, Any]]]] = {}
    rows: dict[str, list[dict[str, Any]]] = {}
    for sample in chosen:
        for name, values in controls(model, sample).items():
            rows.setdefault(name, []).append(values)
    out["controls"] = rows
    table("Controls", rows)
    if args.part in ("fusion", "all"):
        rows = {name: [run(model, s, method, "auto", **opts) for s in chosen] for name, method, opts in FUSION}
        out["fusion"] = rows
        table("Seg-Fusion's gradient part (default layer, dec1)", rows)
    if args.part in ("masked", "all"):
        rows = {
            name: [run(model, s, method, "auto", variant="segmentation", **opts) for s in chosen]
            if method == "fusioncam"
            else [run(model, s, method, "auto", **opts) for s in chosen]
            for name, method, opts in MASKED
        }
        out["masked"] = rows
        table("Group-CAM and Seg-Fusion with binary masks (default layer, dec1)", rows)
    if args.part in ("scorecam", "all"):
        rows = {}
        for level in args.layers.split(","):
            picked = SCORECAM if args.settings is None else [SCORECAM[int(i)] for i in args.settings.split(",")]
            for name, opts in picked:
                rows[f"{level}: {name}"] = [run(model, s, "scorecam", f"levels:{level}", **opts) for s in chosen]
                table("Score-CAM so far", {f"{level}: {name}": rows[f"{level}: {name}"]})
        out["scorecam"] = rows
        table("Score-CAM by masking, baseline, weights and layer", rows)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
