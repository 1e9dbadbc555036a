"""Tiny nnU-Net v2 trained-model folders written the way nnUNetv2_train writes them.

A hand-written plans.json (a 3-stage 3D PlainConvUNet with 2..8 features, patch 16^3),
random weights, and checkpoints with the keys nnU-Net's trainer saves, including the
numpy scalars of its training log that make ``weights_only`` loading need an allow-list.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

LABELS = {"background": 0, "kidney": 1, "tumor": 2}
REGION_LABELS = {"background": 0, "kidney": [1, 2, 3], "masses": [2, 3], "tumor": 2}
REGION_ORDER = [1, 3, 2]


def plans(
    *,
    configuration: str = "3d_fullres",
    patch: tuple[int, ...] = (16, 16, 16),
    spacing: tuple[float, ...] = (2.0, 1.5, 1.5),
    transpose: tuple[int, ...] = (0, 1, 2),
    residual: bool = False,
    normalization: str = "ZScoreNormalization",
    cascade: bool = False,
) -> dict[str, Any]:
    """plans.json of a 3-stage 3D U-Net (features 2, 4, 8)."""
    backward = [int(i) for i in np.argsort(transpose)]
    dims = len(patch)  # 2: a "2d" configuration of 3D data
    kwargs: dict[str, Any] = {
        "n_stages": 3,
        "features_per_stage": [2, 4, 8],
        "conv_op": f"torch.nn.modules.conv.Conv{dims}d",
        "kernel_sizes": [[3] * dims] * 3,
        "strides": [[1] * dims, [2] * dims, [2] * dims],
        "n_conv_per_stage_decoder": [1, 1],
        "conv_bias": True,
        "norm_op": f"torch.nn.modules.instancenorm.InstanceNorm{dims}d",
        "norm_op_kwargs": {"eps": 1e-05, "affine": True},
        "dropout_op": None,
        "dropout_op_kwargs": None,
        "nonlin": "torch.nn.LeakyReLU",
        "nonlin_kwargs": {"inplace": True},
    }
    if residual:
        kwargs["n_blocks_per_stage"] = [1, 1, 1]
        name = "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"
    else:
        kwargs["n_conv_per_stage"] = [1, 1, 1]
        name = "dynamic_network_architectures.architectures.unet.PlainConvUNet"
    config: dict[str, Any] = {
        "data_identifier": f"nnUNetPlans_{configuration}",
        "preprocessor_name": "DefaultPreprocessor",
        "batch_size": 2,
        "patch_size": list(patch),
        "median_image_size_in_voxels": [24, 24, 24],
        "spacing": list(spacing[-dims:]),
        "normalization_schemes": [normalization],
        "use_mask_for_norm": [False],
        "resampling_fn_data": "resample_data_or_seg_to_shape",
        "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
        "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None},
        "architecture": {
            "network_class_name": name,
            "arch_kwargs": kwargs,
            "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
        },
        "batch_dice": False,
    }
    configurations: dict[str, Any] = {configuration: config}
    if cascade:
        configurations["3d_lowres"] = config
        configurations[configuration] = {"inherits_from": "3d_lowres", "previous_stage": "3d_lowres"}
    return {
        "dataset_name": "Dataset901_Tiny",
        "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": list(spacing),
        "original_median_shape_after_transp": [24, 24, 24],
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": list(transpose),
        "transpose_backward": backward,
        "configurations": configurations,
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {
            "0": {
                "max": 300.0,
                "mean": 100.0,
                "median": 100.0,
                "min": -100.0,
                "percentile_00_5": -50.0,
                "percentile_99_5": 250.0,
                "std": 50.0,
            }
        },
    }


def dataset(labels: dict[str, Any] = LABELS, order: list[int] | None = None, channels: int = 1) -> dict[str, Any]:
    data: dict[str, Any] = {
        "channel_names": {str(i): "CT" if i == 0 else f"MR{i}" for i in range(channels)},
        "labels": labels,
        "numTraining": 4,
        "file_ending": ".nii.gz",
    }
    if order is not None:
        data["regions_class_order"] = order
    return data


def network(
    plan: dict[str, Any], data: dict[str, Any], configuration: str = "3d_fullres", seed: int = 0, ds: bool = True
) -> Any:
    """The plans' network (with deep supervision, as nnU-Net trains it, unless ``ds`` is off), random weights."""
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    manager = PlansManager(plan)
    config = manager.get_configuration(configuration)
    torch.manual_seed(seed)
    net = get_network_from_plans(
        config.network_arch_class_name,
        config.network_arch_init_kwargs,
        config.network_arch_init_kwargs_req_import,
        len(data["channel_names"]),
        manager.get_label_manager(data).num_segmentation_heads,
        allow_init=True,
        deep_supervision=ds,
    )
    with torch.no_grad():  # nnU-Net's init leaves biases at 0; random ones make folds differ more
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return net


def checkpoint(net: Any, plan: dict[str, Any], data: dict[str, Any], configuration: str, fold: int) -> dict[str, Any]:
    """The dict nnUNetTrainer.save_checkpoint writes (log values are numpy scalars, as there)."""
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.99, nesterov=True)
    return {
        "network_weights": net.state_dict(),
        "optimizer_state": optimizer.state_dict(),
        "grad_scaler_state": None,
        "logging": {
            "mean_fg_dice": [np.float64(0.5), np.float64(0.6)],
            "ema_fg_dice": [np.float64(0.5), np.float64(0.51)],
            "dice_per_class_or_region": [[np.float64(0.4), np.float32(0.6)]],
            "train_losses": [np.float64(-0.1), np.float64(-0.2)],
            "val_losses": [np.float64(-0.1), np.float64(-0.15)],
            "lrs": [0.01, 0.0099],
            "epoch_start_timestamps": [1.0, 2.0],
            "epoch_end_timestamps": [1.5, 2.5],
        },
        "_best_ema": np.float64(0.51),
        "current_epoch": 2,
        "init_args": {
            "plans": plan,
            "configuration": configuration,
            "fold": fold,
            "dataset_json": data,
            "device": torch.device("cpu"),
        },
        "trainer_name": "nnUNetTrainer",
        "inference_allowed_mirroring_axes": tuple(
            range(len(plan["configurations"][configuration].get("patch_size", [0] * 3)))
        ),
    }


def write_results(
    root: Path,
    *,
    folds: tuple[int, ...] = (0, 1),
    labels: dict[str, Any] = LABELS,
    order: list[int] | None = None,
    configuration: str = "3d_fullres",
    best: bool = False,
    deep_supervision: bool = True,
    channels: int = 1,
    **plan_options: Any,
) -> Path:
    """``root/Dataset901_Tiny/nnUNetTrainer__nnUNetPlans__<configuration>`` with ``folds``; returns it."""
    plan = plans(configuration=configuration, **plan_options)
    data = dataset(labels, order, channels)
    if channels > 1:
        plan["configurations"][configuration]["normalization_schemes"] *= channels
        plan["configurations"][configuration]["use_mask_for_norm"] *= channels
        plan["foreground_intensity_properties_per_channel"].update(
            {str(c): plan["foreground_intensity_properties_per_channel"]["0"] for c in range(1, channels)}
        )
    folder = root / "Dataset901_Tiny" / f"nnUNetTrainer__nnUNetPlans__{configuration}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "plans.json").write_text(json.dumps(plan, indent=1))
    (folder / "dataset.json").write_text(json.dumps(data, indent=1))
    network_config = "3d_lowres" if plan_options.get("cascade") else configuration
    for fold in folds:
        net = network(plan, data, network_config, seed=fold, ds=deep_supervision)
        (folder / f"fold_{fold}").mkdir(exist_ok=True)
        payload = checkpoint(net, plan, data, configuration, fold)
        torch.save(payload, folder / f"fold_{fold}" / "checkpoint_final.pth")
        if best:
            torch.save(payload, folder / f"fold_{fold}" / "checkpoint_best.pth")
    return folder


def write_case(folder: Path, name: str = "case", *, channels: int = 1, seed: int = 0) -> Path:
    """``folder/<name>_0000.nii.gz`` (.. ``_000N``): a 30 x 26 x 22 volume with a zero border (cropped by
    nnU-Net), anisotropic voxels and a flipped, shifted affine; returns the ``_0000`` file."""
    import nibabel as nib

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    affine = np.diag([-1.2, 1.7, 2.5, 1.0])
    affine[:3, 3] = [30.0, -5.0, 3.0]
    for c in range(channels):
        image = np.zeros((30, 26, 22), np.float32)
        image[3:27, 2:24, 4:20] = rng.normal(100 + 20 * c, 40, (24, 22, 16))
        nib.save(nib.Nifti1Image(image, affine), folder / f"{name}_{c:04d}.nii.gz")
    return folder / f"{name}_0000.nii.gz"


def nnunet_prediction(model: Path, image: Path, out: Path, folds: tuple[int, ...], mirroring: bool = False) -> Any:
    """nnU-Net's own prediction of ``image`` (its predictor, sequential, on the CPU), as a numpy array."""
    import nibabel as nib
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    predictor = nnUNetPredictor(
        tile_step_size=0.5, use_mirroring=mirroring, device=torch.device("cpu"), allow_tqdm=False
    )
    predictor.initialize_from_trained_model_folder(str(model), use_folds=folds)
    out.mkdir(parents=True, exist_ok=True)
    files = sorted(image.parent.glob(image.name.replace("_0000", "_000?")))
    predictor.predict_from_files_sequential([[str(f) for f in files]], str(out))
    case = image.name.replace("_0000", "")
    return np.asarray(nib.load(out / case).dataobj)
