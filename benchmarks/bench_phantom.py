"""Time the KiTS-like phantom: generation, writing in KiTS23's layout, reading it back, preprocessing
(orientation IPL, spacing 5 x 3.2 x 3.2 mm, window [-200, 300] HU: the demo model's).

    python benchmarks/bench_phantom.py            # default (64, 128, 128) and full KiTS size (200, 512, 512)
    python benchmarks/bench_phantom.py --quick    # default size only
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="only the small default shape")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from monai.transforms import Compose

    from medcam.data.kits import KiTS23
    from medcam.data.synthetic import kits_phantom, write_kits_case
    from medcam.data.transforms import LoadRecordd, preprocessing_transforms
    from medcam.models.checkpoint import Preprocessing

    shapes = [(64, 128, 128)] if args.quick else [(64, 128, 128), (200, 512, 512)]
    pre = Preprocessing(orientation="IPL", spacing=(5.0, 3.2, 3.2), a_min=-200.0, a_max=300.0)
    print("| shape | generate (s) | write .nii.gz (s) | read + check (s) | preprocess (s) | files (MB) |")
    print("|---|---|---|---|---|---|")
    for shape in shapes:
        times: dict[str, list[float]] = {"gen": [], "write": [], "read": [], "pre": []}
        size = 0.0
        for repeat in range(args.repeats):
            with tempfile.TemporaryDirectory() as tmp:
                start = time.perf_counter()
                kits_phantom(repeat, shape=shape)
                times["gen"].append(time.perf_counter() - start)
                start = time.perf_counter()
                folder = write_kits_case(tmp, 0, seed=repeat, shape=shape)
                times["write"].append(time.perf_counter() - start - times["gen"][-1])
                size = sum(p.stat().st_size for p in Path(folder).iterdir()) / 1e6
                data = KiTS23(tmp)
                start = time.perf_counter()
                data.load(data.entries()[0])
                times["read"].append(time.perf_counter() - start)
                pipeline = Compose([LoadRecordd(data), *preprocessing_transforms(pre, 3)])
                start = time.perf_counter()
                pipeline(data.entries()[0])
                times["pre"].append(time.perf_counter() - start - times["read"][-1])
        best = {k: min(v) for k, v in times.items()}
        cells = [f"{best[k]:.2f}" for k in ("gen", "write", "read", "pre")]
        print(f"| {shape} | {' | '.join(cells)} | {size:.1f} |")


if __name__ == "__main__":
    main()
