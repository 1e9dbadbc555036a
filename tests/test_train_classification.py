"""Short classification runs on the synthetic IQ-OTH/NCCD layout: loss falls, frozen backbones stay frozen."""

from __future__ import annotations

import csv
import urllib.error
from pathlib import Path
from typing import Any

import pytest
import torch

from medcam.data.synthetic import write_iqothnccd_dataset
from medcam.errors import UserError
from medcam.models.checkpoint import load_checkpoint
from medcam.models.factory import build_model
from medcam.train.classification import classification_metrics, freeze_backbone
from medcam.train.config import ExperimentConfig, build
from medcam.train.loop import train


@pytest.fixture(scope="module")
def iqoth_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("iqoth")
    write_iqothnccd_dataset(root, (8, 4, 8), seed=0, size=(64, 64))
    return root


def config(root: Path, output: Path, **training: Any) -> ExperimentConfig:
    return build(
        ExperimentConfig,
        {
            "name": "tiny_iqoth",
            "task": "classification",
            "output": str(output),
            "dataset": {"kind": "iqothnccd", "root": str(root)},
            "model": {"architecture": "torchvision.resnet18", "arguments": {"num_classes": 3, "pretrained": False}},
            "preprocessing": {"a_min": 0.0, "a_max": 255.0, "size": [64, 64], "mean": [0.5] * 3, "std": [0.25] * 3},
            "training": {"epochs": 3, "batch_size": 6, "lr": 0.003, "threads": 1, **training},
        },
    )


def test_classifier_loss_falls_with_weighted_ce_and_checkpoint_metadata(iqoth_root, tmp_path):
    train(config(iqoth_root, tmp_path / "run"), progress=False)
    with (tmp_path / "run" / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    history = [float(r["train_loss"]) for r in rows]
    assert history[-1] < history[0]
    assert {"accuracy", "macro_f1", "recall_benign"} <= set(rows[0])
    meta = load_checkpoint(tmp_path / "run" / "best.pt").meta
    assert meta.task == "classification" and meta.labels == {"normal": 0, "benign": 1, "malignant": 2}
    assert meta.in_channels == 3 and meta.preprocessing.size == (64, 64)
    assert meta.cam_layers == ["layer4"]
    assert meta.training["class_weights"] == [1.0, 2.0, 1.0]  # max count / count on the 60 % split (5, 2, 5)


def test_frozen_backbone_changes_only_the_head(iqoth_root, tmp_path):
    torch.manual_seed(0)
    reference = build_model("torchvision.resnet18", num_classes=3)
    train(config(iqoth_root, tmp_path / "frozen", epochs=1, frozen_backbone=True, seed=0), progress=False)
    state = torch.load(tmp_path / "frozen" / "last.pt", weights_only=True)["model"]
    changed = {k for k, v in state.items() if not torch.equal(v, reference.state_dict()[k])}
    assert changed == {"fc.weight", "fc.bias"}  # batch-norm statistics of the backbone included


def test_freeze_backbone_finds_each_torchvision_head():
    for arch, head in [("torchvision.efficientnet_b0", "classifier"), ("torchvision.densenet161", "classifier")]:
        model = build_model(arch, num_classes=3)
        trainable = freeze_backbone(model)
        assert trainable and all(name.startswith(head + ".") for name in trainable)


def test_pretrained_without_network_is_a_clear_error(monkeypatch):
    import torchvision.models._api as api

    def offline(*args: Any, **kwargs: Any) -> Any:
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(api.WeightsEnum, "get_state_dict", offline)
    with pytest.raises(UserError, match="pretrained: false"):
        build_model("torchvision.resnet50", num_classes=3, pretrained=True)


def test_classification_metrics_by_hand():
    confusion = torch.tensor([[3, 1, 0], [0, 2, 0], [1, 0, 3]])
    m = classification_metrics(confusion, ["a", "b", "c"], loss=0.5)
    assert m["accuracy"] == pytest.approx(8 / 10)
    assert m["recall_a"] == pytest.approx(3 / 4) and m["recall_b"] == 1.0 and m["recall_c"] == pytest.approx(3 / 4)
    f1_b = 2 * (2 / 3) * 1.0 / (2 / 3 + 1.0)
    f1_a = 2 * (3 / 4) * (3 / 4) / (3 / 2)
    f1_c = 2 * 1.0 * (3 / 4) / (1.0 + 3 / 4)
    assert m["macro_f1"] == pytest.approx((f1_a + f1_b + f1_c) / 3)
