"""YAML configs: typed, unknown keys named, and every shipped config builds its network."""

from __future__ import annotations

from pathlib import Path

import pytest

from medcam.models.factory import build_model
from medcam.train.config import ConfigError, load_config

# training configs only: configs/eval_*.yaml are medcam evaluate configs (tests/test_cli_evaluate.py)
CONFIGS = sorted(
    p for p in (Path(__file__).resolve().parents[1] / "configs").glob("*.yaml") if not p.stem.startswith("eval_")
)
OUTPUTS = {"kits23": 4, "kits23_slices": 4, "cityscapes": 19, "iqothnccd": 3, "decathlon": 4}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


BASE = """
name: x
task: segmentation
output: runs/x
dataset: {kind: kits23, root: data}
model: {architecture: monai.UNet, arguments: {spatial_dims: 3}}
"""


def test_unknown_keys_are_named_with_a_suggestion(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown config key training\.epoch; did you mean training\.epochs\?"):
        load_config(write(tmp_path, BASE + "training: {epoch: 3}\n"))
    with pytest.raises(ConfigError, match=r"preprocessing\.spacingg"):
        load_config(write(tmp_path, BASE + "preprocessing: {spacingg: [1, 1, 1]}\n"))


def test_values_are_type_checked(tmp_path):
    with pytest.raises(ConfigError, match=r"training\.epochs: expected an integer"):
        load_config(write(tmp_path, BASE + "training: {epochs: ten}\n"))
    with pytest.raises(ConfigError, match=r"training\.optimizer"):
        load_config(write(tmp_path, BASE + "training: {optimizer: lbfgs}\n"))
    with pytest.raises(ConfigError, match=r"dataset\.kind"):
        load_config(write(tmp_path, BASE.replace("kits23", "kits19")))
    with pytest.raises(ConfigError, match=r"missing task"):
        load_config(write(tmp_path, BASE.replace("task: segmentation\n", "")))


def test_overrides_and_conversions(tmp_path):
    config = load_config(
        write(tmp_path, BASE), ["training.patch_size=[8, 16, 16]", "training.lr=3e-4", "preprocessing.spacing=[1,2,3]"]
    )
    assert config.training.patch_size == (8, 16, 16) and config.training.lr == 3e-4
    assert config.preprocessing.spacing == (1.0, 2.0, 3.0)
    with pytest.raises(ConfigError, match="key=value"):
        load_config(write(tmp_path, BASE), ["training.lr"])


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_shipped_config_loads_and_builds_its_network(path):
    config = load_config(path)
    args = dict(config.model.arguments)
    if config.task == "classification":
        assert args["num_classes"] == 3
        args["pretrained"] = False  # no download in tests
    if config.model.architecture == "smp.Unet":
        assert "encoder_weights" in config.model.arguments  # stated explicitly
    outputs = args.get("out_channels", args.get("classes", args.get("num_classes")))
    regions = config.dataset.label_mode == "regions"
    expected = 3 if regions else OUTPUTS.get(config.dataset.kind)
    if config.dataset.kind == "opg":
        expected = 33 if config.dataset.mode == "teeth" else 2
    if expected is not None:
        assert outputs == expected
    if config.training.patch_size is not None:
        assert config.preprocessing.orientation is not None  # 3D configs fix the axes they were trained in
    build_model(config.model.architecture, **args)
