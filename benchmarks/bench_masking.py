"""How region scores should mask a CT volume: energy of the map inside the true tumour.

    python training/make_synthetic.py kits23 data/tune_kits_phantom --cases 4 --seed 2000
    PYTHONPATH=. python benchmarks/bench_masking.py [--cases 3] [--part masking|levels|all]

The shipped demo U-Net (medcam/assets/demo_unet3d.pt), class tumour, M = the predicted
tumour, on KiTS-like phantoms written with dataset seed 2000: held out from training
(seed 0) and from the evaluation of configs/eval_kits_phantom.yaml (seed 1000), so the
defaults chosen here are not tuned on the cases they are evaluated on.

Part ``masking``: Score-CAM at ``levels:dec1`` under each mask / baseline / weights
setting (the candidates for the segmentation default of medcam.methods.region), energy
inside the tumour and its ratio to chance (the tumour's share of the volume).
Part ``levels``: Seg-Grad-CAM and Seg-HiRes-Grad CAM at every level (the candidates
for ``layers="auto"`` on a segmentation target). Prints markdown tables; the numbers
are recorded in docs/methods-region-fusion.md and docs/levels.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from typing import Any

import torch

from medcam.api import explain
from medcam.evaluate.command import load_network
from medcam.evaluate.config import load_config
from medcam.evaluate.samples import open_samples
from medcam.metrics.localisation import energy_inside
from medcam.models.levels import discover_levels

SETTINGS: list[tuple[str, dict[str, Any]]] = [  # --quick: the first, the fourth, the fifth and the second
    ("soft, zeros, probability (the papers')", {"mask": "soft", "baseline": "zeros", "weights": "probability"}),
    ("soft, min, increase", {"mask": "soft", "baseline": "min", "weights": "increase"}),
    ("binary 5 %, min, probability", {"mask": "binary", "mask_top": 0.05, "baseline": "min", "weights": "probability"}),
    ("binary 1 %, min, increase", {"mask": "binary", "mask_top": 0.01, "baseline": "min", "weights": "increase"}),
    ("binary 5 %, min, increase", {"mask": "binary", "mask_top": 0.05, "baseline": "min", "weights": "increase"}),
    ("binary 20 %, min, increase", {"mask": "binary", "mask_top": 0.2, "baseline": "min", "weights": "increase"}),
    ("binary 5 %, blur, increase", {"mask": "binary", "mask_top": 0.05, "baseline": "blur", "weights": "increase"}),
    ("binary 5 %, mean, increase", {"mask": "binary", "mask_top": 0.05, "baseline": "mean", "weights": "increase"}),
]


def samples(root: str, cases: int) -> tuple[Any, list[Any]]:
    config = load_config("configs/eval_kits_phantom.yaml")
    config = dataclasses.replace(config, data=dataclasses.replace(config.data, root=root, samples=cases))
    bundle, _ = load_network(config.model)
    chosen = open_samples(config, bundle.meta)
    return bundle.model, [chosen[i] for i in range(len(chosen))]


def energy(model: Any, sample: Any, method: str, layer: str, **options: Any) -> tuple[float, float, float]:
    x = sample.image.unsqueeze(0)
    started = time.perf_counter()
    exp = explain(model, x, method, sample.target, layer, **options)
    truth = sample.truth.bool()
    chance = float(truth.float().mean())
    inside = float(energy_inside(exp.map, truth)[0])
    return inside, inside / chance, time.perf_counter() - started


def table(title: str, rows: dict[str, list[tuple[float, float, float]]]) -> None:
    print(f"\n### {title}\n")
    print("| setting | energy inside (per case) | mean | x chance (mean) | s / explanation |")
    print("|---|---|---:|---:|---:|")
    for name, values in rows.items():
        per = ", ".join(f"{v[0]:.4f}" for v in values)
        mean = sum(v[0] for v in values) / len(values)
        ratio = sum(v[1] for v in values) / len(values)
        seconds = sum(v[2] for v in values) / len(values)
        print(f"| {name} | {per} | {mean:.4f} | {ratio:.1f} | {seconds:.0f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="data/tune_kits_phantom")
    parser.add_argument("--cases", type=int, default=3)
    parser.add_argument("--part", choices=("masking", "levels", "all"), default="all")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="four masking settings only")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, chosen = samples(args.root, args.cases)
    if args.part in ("levels", "all"):
        rows: dict[str, list[tuple[float, float, float]]] = {}
        for level in discover_levels(model):
            for method in ("gradcam", "hirescam"):
                rows[f"{method} at {level.name}"] = [energy(model, s, method, f"levels:{level.name}") for s in chosen]
        table("Gradient methods by level (segmentation target)", rows)
    if args.part in ("masking", "all"):
        settings = [SETTINGS[i] for i in (0, 4, 3, 1)] if args.quick else SETTINGS
        rows = {name: [energy(model, s, "scorecam", "levels:dec1", **opts) for s in chosen] for name, opts in settings}
        table("Score-CAM at dec1 by masking", rows)


if __name__ == "__main__":
    main()
