"""Peak memory of ``medcam explain`` on a 5-fold nnU-Net model: one fold's weights in memory at a time.

A trained-model folder with nnU-Net's default 3d_fullres widths (a 6-stage
PlainConvUNet, 32-320 features, two convolutions per stage: 31 M parameters, 125 MB of
float32 weights per fold) and five folds of random weights, in ``nnUNetTrainer``'s
checkpoint layout; patch 64^3 (bottleneck 2^3) so that the case (30 x 26 x 22, one window) stays cheap
on a CPU. ``medcam explain --disable-tta`` (HiResCAM at the last decoder level, every
fold) runs in a fresh process, which reports its peak resident set size (``VmHWM``)
and wall time.

    python benchmarks/bench_nnunet_folds.py [--folds 5] [--src DIR]

``--src DIR`` imports medcam from another source tree (e.g. an export of an older
commit), to compare before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

WIDTHS = [32, 64, 128, 256, 320, 320]


def plans(patch: int) -> dict:
    stages = len(WIDTHS)
    kwargs = {
        "n_stages": stages,
        "features_per_stage": WIDTHS,
        "conv_op": "torch.nn.modules.conv.Conv3d",
        "kernel_sizes": [[3, 3, 3]] * stages,
        "strides": [[1, 1, 1]] + [[2, 2, 2]] * (stages - 1),
        "n_conv_per_stage": [2] * stages,
        "n_conv_per_stage_decoder": [2] * (stages - 1),
        "conv_bias": True,
        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
        "norm_op_kwargs": {"eps": 1e-05, "affine": True},
        "dropout_op": None,
        "dropout_op_kwargs": None,
        "nonlin": "torch.nn.LeakyReLU",
        "nonlin_kwargs": {"inplace": True},
    }
    resampling = {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None}
    config = {
        "data_identifier": "nnUNetPlans_3d_fullres",
        "preprocessor_name": "DefaultPreprocessor",
        "batch_size": 2,
        "patch_size": [patch] * 3,
        "median_image_size_in_voxels": [30, 26, 22],
        "spacing": [1.0, 1.0, 1.0],
        "normalization_schemes": ["ZScoreNormalization"],
        "use_mask_for_norm": [False],
        "resampling_fn_data": "resample_data_or_seg_to_shape",
        "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": {**resampling, "order": 3},
        "resampling_fn_seg_kwargs": {**resampling, "is_seg": True},
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": resampling,
        "architecture": {
            "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
            "arch_kwargs": kwargs,
            "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
        },
        "batch_dice": False,
    }
    return {
        "dataset_name": "Dataset903_Folds",
        "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": [1.0, 1.0, 1.0],
        "original_median_shape_after_transp": [30, 26, 22],
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "configurations": {"3d_fullres": config},
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {
            "0": {
                "max": 400.0,
                "mean": 150.0,
                "median": 150.0,
                "min": -50.0,
                "percentile_00_5": 0.0,
                "percentile_99_5": 350.0,
                "std": 60.0,
            }
        },
    }


def write_folder(root: Path, folds: int, patch: int) -> Path:
    import torch
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plan = plans(patch)
    dataset = {
        "channel_names": {"0": "MR"},
        "labels": {"background": 0, "kidney": 1, "tumor": 2},
        "numTraining": 4,
        "file_ending": ".nii.gz",
    }
    folder = root / "Dataset903_Folds" / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    folder.mkdir(parents=True)
    (folder / "plans.json").write_text(json.dumps(plan))
    (folder / "dataset.json").write_text(json.dumps(dataset))
    config = PlansManager(plan).get_configuration("3d_fullres")
    for fold in range(folds):
        torch.manual_seed(fold)
        network = get_network_from_plans(
            config.network_arch_class_name,
            config.network_arch_init_kwargs,
            config.network_arch_init_kwargs_req_import,
            1,
            3,
            deep_supervision=True,
        )
        (folder / f"fold_{fold}").mkdir()
        torch.save(
            {
                "network_weights": network.state_dict(),
                "init_args": {"configuration": "3d_fullres"},
                "trainer_name": "nnUNetTrainer",
                "inference_allowed_mirroring_axes": (0, 1, 2),
            },
            folder / f"fold_{fold}" / "checkpoint_final.pth",
        )
        del network
    return folder


def write_case(folder: Path) -> Path:
    import nibabel as nib

    rng = np.random.default_rng(0)
    image = rng.normal(100, 40, (30, 26, 22)).astype(np.float32)
    image[8:20, 8:18, 6:16] += 120
    folder.mkdir(parents=True)
    nib.save(nib.Nifti1Image(image, np.eye(4)), folder / "case_0000.nii.gz")
    return folder / "case_0000.nii.gz"


def child(argv: list[str]) -> int:
    """In the fresh process: run ``medcam explain`` and print its wall time and peak RSS as JSON."""
    started = time.perf_counter()
    from medcam.cli import main

    code = main(["explain", *argv])
    seconds = time.perf_counter() - started
    status = Path("/proc/self/status").read_text().splitlines()
    peak = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    import medcam

    print(json.dumps({"exit": code, "seconds": seconds, "peak_mb": peak / 1024, "medcam": medcam.__file__}))
    return 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["--child"]:
        return child(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--patch", type=int, default=64)
    parser.add_argument("--src", help="import medcam from this source tree (default: this checkout)")
    args, _ = parser.parse_known_args(argv)
    src = Path(args.src).resolve() if args.src else Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as work:
        root = Path(work)
        folder = write_folder(root / "results", args.folds, args.patch)
        case = write_case(root / "images")
        weights_mb = sum(p.stat().st_size for p in folder.glob("fold_*/checkpoint_final.pth")) / 2**20
        env = {**os.environ, "PYTHONPATH": str(src)}
        command = ["--volume", str(case), "--model", str(folder), "--class", "tumor", "--method", "hirescam"]
        command += ["--disable-tta", "--pixels", "image", "--out", str(root / "out"), "--no-progress"]
        done = subprocess.run(
            [sys.executable, __file__, "--child", *command], env=env, capture_output=True, text=True, check=False
        )
        if done.returncode != 0 or not done.stdout.strip():
            print(done.stderr, file=sys.stderr)
            return 1
        result = json.loads(done.stdout.strip().splitlines()[-1])
        summary = json.loads((root / "out" / "summary.json").read_text())
    print(f"{args.folds} folds, {weights_mb:.0f} MB of checkpoints; medcam from {result['medcam']}\n")
    print("| folds | checkpoints MB | medcam explain peak RSS MB | wall s | copies summed | load average |")
    print("|---|---|---|---|---|---|")
    load = " / ".join(f"{v:.1f}" for v in os.getloadavg())
    copies = summary["sliding_window"].get("copies_summed")
    row = f"| {args.folds} | {weights_mb:.0f} | {result['peak_mb']:.0f} | {result['seconds']:.1f} | {copies} | {load} |"
    print(row)
    return 0 if result["exit"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
