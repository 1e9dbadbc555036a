"""bfloat16 (``--precision bf16`` and ``auto``) against float32 for ``medcam explain`` on the demo model.

On held-out KiTS-like phantoms (the cases of configs/eval_kits_phantom.yaml's data, dataset seed 1000), the
shipped demo U-Net explains the tumour (M = predicted tumour, Seg-HiRes-Grad CAM at the
checkpoint's layer) in float32, with ``precision="bf16"`` (prediction and CAM in
bfloat16) and with ``precision="auto"`` (prediction in bfloat16 where native, CAM in
float32). Reported per case and precision: the share of predicted labels identical to
float32's, Spearman's rho between its heatmap and float32's, and the heatmap energy
inside the true tumour (the bar: >= 99.9 % labels, rho >= 0.99, energy within 2 %).
Times are wall-clock seconds of the explanations, run one after the other per case in
this one process.

    python benchmarks/bench_precision.py [--cases 6] [--method hirescam]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from scipy import stats

from medcam.data.synthetic import case_seed, write_kits_case
from medcam.pipeline import explain_volume

TUMOUR = 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=6)
    parser.add_argument("--dataset-seed", type=int, default=1000)
    parser.add_argument("--method", default="hirescam")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.cases):
            case = write_kits_case(Path(tmp), i, seed=case_seed(args.dataset_seed, i))
            truth = np.asarray(nib.load(case / "segmentation.nii.gz").dataobj) == TUMOUR
            results, seconds = {}, {}
            for precision in ("fp32", "bf16", "auto"):
                start = time.perf_counter()
                results[precision] = explain_volume(
                    case / "imaging.nii.gz", class_name="tumor", method=args.method, precision=precision
                )
                seconds[precision] = time.perf_counter() - start
            reference = results["fp32"]
            energy_ref = float(reference.heatmap[truth].sum() / max(reference.heatmap.sum(), 1e-12))
            for precision in ("bf16", "auto"):
                other = results[precision]
                same = float(np.mean(reference.prediction == other.prediction))
                rho = float(stats.spearmanr(reference.heatmap.ravel(), other.heatmap.ravel()).statistic)
                energy = float(other.heatmap[truth].sum() / max(other.heatmap.sum(), 1e-12))
                rows.append((precision, i, same, rho, energy_ref, energy, seconds["fp32"], seconds[precision]))
                print(
                    f"case {i} {precision}: labels identical {100 * same:.3f} %, Spearman {rho:.4f}, energy in "
                    f"tumour fp32 {energy_ref:.4f} {precision} {energy:.4f}, "
                    f"time fp32 {seconds['fp32']:.1f} s {precision} {seconds[precision]:.1f} s",
                    flush=True,
                )
    for precision in ("bf16", "auto"):
        table = np.array([row[1:] for row in rows if row[0] == precision], dtype=float)
        change = np.abs(table[:, 4] - table[:, 3]) / np.maximum(table[:, 3], 1e-12)
        print(
            f"{precision}: min labels identical {100 * table[:, 1].min():.3f} %, min Spearman "
            f"{table[:, 2].min():.4f}, max energy change {100 * change.max():.2f} %, "
            f"time {precision}/fp32 {table[:, 6].sum() / table[:, 5].sum():.2f}x"
        )


if __name__ == "__main__":
    main()
