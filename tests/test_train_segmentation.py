"""Short segmentation runs on synthetic layouts: loss falls, checkpoints hold what explain needs, resume replays."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest
import torch

from medcam.data.synthetic import write_cityscapes_dataset, write_kits_dataset
from medcam.models.checkpoint import load_checkpoint
from medcam.models.levels import discover_levels, segmentation_default_level
from medcam.train.config import ExperimentConfig, build
from medcam.train.loop import train

TINY_UNET3D = {
    "spatial_dims": 3,
    "in_channels": 1,
    "out_channels": 4,
    "channels": [8, 16, 32],
    "strides": [2, 2],
    "num_res_units": 1,
    "norm": "batch",
}


@pytest.fixture(scope="module")
def kits_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("kits") / "dataset"
    write_kits_dataset(root, 4, seed=0, shape=(24, 48, 48))
    return root


def kits_config(root: Path, output: Path, **training: Any) -> ExperimentConfig:
    data = {
        "name": "tiny_kits",
        "task": "segmentation",
        "output": str(output),
        "dataset": {"kind": "kits23", "root": str(root), "fractions": [0.75, 0.25, 0.0]},
        "model": {"architecture": "monai.UNet", "arguments": dict(TINY_UNET3D)},
        "preprocessing": {"orientation": "IPL", "spacing": [13.3, 8.0, 8.0], "a_min": -200.0, "a_max": 300.0},
        "training": {
            "epochs": 4,
            "batch_size": 1,
            "samples_per_image": 2,
            "patch_size": [16, 32, 32],
            "lr": 0.01,
            "threads": 1,
            "intensity_augmentation": True,
            **training,
        },
    }
    return build(ExperimentConfig, data)


def losses(output: Path) -> list[float]:
    with (output / "metrics.csv").open() as f:
        return [float(row["train_loss"]) for row in csv.DictReader(f)]


def test_3d_unet_loss_falls_and_checkpoint_has_explain_metadata(kits_root, tmp_path):
    result = train(kits_config(kits_root, tmp_path / "run"), progress=False)
    history = losses(tmp_path / "run")
    assert len(history) == 4 and history[-1] < history[0]
    bundle = load_checkpoint(tmp_path / "run" / "best.pt")
    meta = bundle.meta
    assert meta.task == "segmentation" and meta.spatial_dims == 3 and meta.activation == "softmax"
    assert meta.labels == {"background": 0, "kidney": 1, "tumor": 2, "cyst": 3}
    assert meta.regions == {"kidney_and_masses": [1, 2, 3], "masses": [2, 3], "tumor": [2]}
    assert meta.patch_size == (16, 32, 32)
    assert meta.preprocessing.orientation == "IPL" and meta.preprocessing.spacing == (13.3, 8.0, 8.0)
    # the UNet's last decoder level, the level layers="auto" explains (docs/levels.md)
    assert meta.cam_layers == [segmentation_default_level(discover_levels(bundle.model)).path]
    assert dict(bundle.model.named_modules())[meta.cam_layers[0]] is not None
    assert meta.training["epoch"] == result.best_epoch
    assert "dice_tumor" in meta.training["val"]
    header = (tmp_path / "run" / "metrics.csv").read_text().splitlines()[0]
    assert header.startswith("epoch,train_loss,lr,seconds,score,dice_kidney,dice_tumor,dice_cyst")


def test_resume_replays_the_missing_epochs_exactly(kits_root, tmp_path):
    straight = kits_config(kits_root, tmp_path / "straight", epochs=2, val_every=5)
    train(straight, progress=False)
    first = kits_config(kits_root, tmp_path / "resumed", epochs=1, val_every=5)
    train(first, progress=False)
    second = kits_config(kits_root, tmp_path / "resumed", epochs=2, val_every=5)
    train(second, resume=True, progress=False)
    a = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "resumed" / "last.pt", weights_only=True)["model"]
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)
    assert losses(tmp_path / "resumed") == pytest.approx(losses(tmp_path / "straight"))


def test_region_heads_train_with_sigmoid_and_say_so(kits_root, tmp_path):
    regions = build(
        ExperimentConfig,
        {
            "name": "regions",
            "task": "segmentation",
            "output": str(tmp_path / "regions"),
            "dataset": {"kind": "kits23", "root": str(kits_root), "label_mode": "regions"},
            "model": {"architecture": "monai.UNet", "arguments": {**TINY_UNET3D, "out_channels": 3}},
            "preprocessing": {"orientation": "IPL", "spacing": [13.3, 8.0, 8.0], "a_min": -200.0, "a_max": 300.0},
            "training": {"epochs": 1, "batch_size": 1, "patch_size": [16, 32, 32], "threads": 1},
        },
    )
    train(regions, progress=False)
    meta = load_checkpoint(tmp_path / "regions" / "best.pt").meta
    assert meta.activation == "sigmoid"
    assert meta.labels == {"kidney_and_masses": 0, "masses": 1, "tumor": 2}


def test_2d_smp_unet_on_cityscapes_learns_19_train_ids(tmp_path):
    write_cityscapes_dataset(tmp_path / "cs", (4, 1, 0), seed=0, size=(32, 64))
    config = build(
        ExperimentConfig,
        {
            "name": "tiny_cityscapes",
            "task": "segmentation",
            "output": str(tmp_path / "run"),
            "dataset": {"kind": "cityscapes", "root": str(tmp_path / "cs")},
            "model": {
                "architecture": "smp.Unet",
                "arguments": {
                    "encoder_name": "resnet18",
                    "encoder_weights": None,
                    "in_channels": 3,
                    "classes": 19,
                    "decoder_channels": [32, 16, 16, 8, 8],
                },
            },
            "preprocessing": {"a_min": 0.0, "a_max": 255.0, "size": [64, 128]},
            "training": {"epochs": 3, "batch_size": 2, "lr": 0.01, "threads": 1, "intensity_augmentation": False},
        },
    )
    train(config, progress=False)
    history = losses(tmp_path / "run")
    assert history[-1] < history[0]
    bundle = load_checkpoint(tmp_path / "run" / "best.pt")
    meta = bundle.meta
    assert meta.spatial_dims == 2 and len(meta.labels) == 19 and "background" not in meta.labels
    assert meta.preprocessing.size == (64, 128)
    assert meta.cam_layers == [segmentation_default_level(discover_levels(bundle.model)).path]  # last decoder
