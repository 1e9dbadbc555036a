"""``medcam explain`` on an nnU-Net v2 model whose plans nnU-Net's own planner made: parity and time.

A synthetic dataset (4 training cases, anisotropic voxels) is fingerprinted and planned
with nnU-Net's ``extract_fingerprint_dataset`` and ``plan_experiment_dataset``
(``ExperimentPlanner``, the default ``nnUNetPlans``). The ``3d_fullres`` and ``2d``
networks of those plans get random weights for two folds, saved in the checkpoint layout
``nnUNetTrainer`` writes. A test case with another voxel size and an oblique affine is
then predicted by nnU-Net's ``nnUNetPredictor`` and explained by ``medcam explain``
(HiResCAM at the bottleneck, both folds, with and without test-time mirroring).

Reported: the share of voxels where ``prediction.nii.gz`` equals nnU-Net's prediction,
and wall times (medcam's includes the explanation and the review folder).

    python benchmarks/bench_nnunet.py            # training cases 64 x 64 x 24, test 56 x 72 x 28
    python benchmarks/bench_nnunet.py --quick    # 48 x 48 x 20, test 40 x 56 x 24
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def write_dataset(raw: Path, shape: tuple[int, int, int]) -> dict:
    import nibabel as nib

    folder = raw / "Dataset902_Synth"
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    rng = np.random.default_rng(0)
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    x, y, z = shape
    for i in range(4):
        image = rng.normal(0, 30, shape).astype(np.float32)
        label = np.zeros(shape, np.uint8)
        label[x // 4 : 3 * x // 4, y // 4 : 3 * y // 4, z // 4 : 3 * z // 4] = 1
        label[x // 2 - 4 : x // 2 + 4, y // 2 - 4 : y // 2 + 4, z // 2 - 2 : z // 2 + 2] = 2
        image[label == 1] += 120
        image[label == 2] += 250
        nib.save(nib.Nifti1Image(image, affine), folder / "imagesTr" / f"c{i:03d}_0000.nii.gz")
        nib.save(nib.Nifti1Image(label, affine), folder / "labelsTr" / f"c{i:03d}.nii.gz")
    dataset = {
        "channel_names": {"0": "CT"},
        "labels": {"background": 0, "kidney": 1, "tumor": 2},
        "numTraining": 4,
        "file_ending": ".nii.gz",
    }
    (folder / "dataset.json").write_text(json.dumps(dataset))
    return dataset


def plan_dataset(root: Path, train_shape: tuple[int, int, int]) -> tuple[dict, dict]:
    """nnU-Net's own fingerprint and plans of the synthetic dataset (``root`` gets nnU-Net's three folders)."""
    for name, var in (("raw", "nnUNet_raw"), ("pre", "nnUNet_preprocessed"), ("res", "nnUNet_results")):
        (root / name).mkdir()
        os.environ[var] = str(root / name)
    dataset = write_dataset(root / "raw", train_shape)
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (
        extract_fingerprint_dataset,
        plan_experiment_dataset,
    )

    with contextlib.redirect_stdout(sys.stderr):  # nnU-Net prints its plans; keep stdout for the table
        extract_fingerprint_dataset(902, num_processes=1, show_progress_bar=False, verbose=False)
        plan_experiment_dataset(902)
    plans = json.loads((root / "pre" / "Dataset902_Synth" / "nnUNetPlans.json").read_text())
    return plans, dataset


def write_test_case(folder: Path, shape: tuple[int, int, int]) -> Path:
    """The test case: another voxel size than the training cases and an oblique affine."""
    import nibabel as nib

    rng = np.random.default_rng(1)
    image = rng.normal(0, 30, shape).astype(np.float32)
    image[10:30, 15:40, 6:18] += 150
    oblique = np.array([[0, -0.9, 0, 20], [0.7, 0, 0, -10], [0, 0, 2.0, 5], [0, 0, 0, 1.0]])
    folder.mkdir()
    case = folder / "t_0000.nii.gz"
    nib.save(nib.Nifti1Image(image, oblique), case)
    return case


def trained_folder(results: Path, plans: dict, dataset: dict, configuration: str) -> Path:
    """Two folds of random weights for a configuration's plans, as nnUNetTrainer.save_checkpoint writes them."""
    import torch
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    manager = PlansManager(plans)
    config = manager.get_configuration(configuration)
    folder = results / "Dataset902_Synth" / f"nnUNetTrainer__nnUNetPlans__{configuration}"
    folder.mkdir(parents=True)
    (folder / "plans.json").write_text(json.dumps(plans))
    (folder / "dataset.json").write_text(json.dumps(dataset))
    for fold in (0, 1):
        torch.manual_seed(fold)
        network = get_network_from_plans(
            config.network_arch_class_name,
            config.network_arch_init_kwargs,
            config.network_arch_init_kwargs_req_import,
            len(dataset["channel_names"]),
            manager.get_label_manager(dataset).num_segmentation_heads,
            deep_supervision=True,
        )
        (folder / f"fold_{fold}").mkdir()
        torch.save(
            {
                "network_weights": network.state_dict(),
                "logging": {"mean_fg_dice": [np.float64(0.5)], "ema_fg_dice": [np.float64(0.5)]},
                "_best_ema": np.float64(0.5),
                "current_epoch": 1,
                "init_args": {"plans": plans, "configuration": configuration, "fold": fold, "dataset_json": dataset},
                "trainer_name": "nnUNetTrainer",
                "inference_allowed_mirroring_axes": tuple(range(len(config.patch_size))),
            },
            folder / f"fold_{fold}" / "checkpoint_final.pth",
        )
    return folder


def nnunet_predict(folder: Path, image: Path, out: Path, mirroring: bool) -> tuple[np.ndarray, float]:
    import nibabel as nib
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    started = time.perf_counter()
    predictor = nnUNetPredictor(use_mirroring=mirroring, device=torch.device("cpu"), allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(folder), use_folds=(0, 1))
    out.mkdir()
    predictor.predict_from_files_sequential([[str(image)]], str(out))
    return np.asarray(nib.load(out / image.name.replace("_0000", "")).dataobj), time.perf_counter() - started


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    args, _ = parser.parse_known_args(argv)
    train_shape, test_shape = ((48, 48, 20), (40, 56, 24)) if args.quick else ((64, 64, 24), (56, 72, 28))
    import nibabel as nib

    with tempfile.TemporaryDirectory() as work:
        root = Path(work)
        plans, dataset = plan_dataset(root, train_shape)
        config = plans["configurations"]["3d_fullres"]
        case = write_test_case(root / "test", test_shape)

        from medcam.cli import main as medcam

        print(
            f"nnU-Net plans: patch {config['patch_size']}, spacing {[round(s, 3) for s in config['spacing']]}, "
            f"{config['architecture']['arch_kwargs']['n_stages']} stages, normalisation "
            f"{config['normalization_schemes']}; test case {test_shape} (oblique, 0.9 x 0.7 x 2.0 mm)\n"
        )
        print(
            "| configuration | mirroring | voxels equal to nnU-Net's | labels (nnU-Net) | medcam explain s "
            "| nnUNetPredictor s |"
        )
        print("|---|---|---|---|---|---|")
        runs = [(c, m) for c in ("3d_fullres", "2d") if c in plans["configurations"] for m in (False, True)]
        folders = {c: trained_folder(root / "res", plans, dataset, c) for c, _ in runs[::2]}
        for configuration, mirroring in runs:
            folder = folders[configuration]
            with contextlib.redirect_stdout(sys.stderr):
                theirs, their_time = nnunet_predict(
                    folder, case, root / f"nnunet_{configuration}_{mirroring}", mirroring
                )
            out = root / f"medcam_{configuration}_{mirroring}"
            command = ["explain", "--volume", str(case), "--model", str(folder), "--class", "tumor"]
            command += ["--pixels", "prob>0.3", "--out", str(out), "--no-progress"]
            started = time.perf_counter()
            with contextlib.redirect_stdout(sys.stderr):
                code = medcam(command + ([] if mirroring else ["--disable-tta"]))
            our_time = time.perf_counter() - started
            if code != 0:
                print(f"medcam explain failed with exit status {code}", file=sys.stderr)
                return 1
            ours = np.asarray(nib.load(out / "prediction.nii.gz").dataobj)
            equal = float((ours == theirs).mean())
            counts = np.bincount(theirs.ravel(), minlength=3).tolist()
            row = f"| {configuration} | {'on' if mirroring else 'off'} | {equal:.5f} | {counts} "
            print(row + f"| {our_time:.1f} | {their_time:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
