"""``medcam info --model``: classes, regions, preprocessing, default layer and U-Net levels with resolution."""

from __future__ import annotations

from pathlib import Path

import pytest

from medcam.cli import main
from medcam.pipeline import inspect_model


def test_info_lists_classes_regions_and_levels(kits_model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "--model", str(kits_model)]) == 0
    out = capsys.readouterr().out
    assert "classes (--class NAME): background (0), kidney (1), tumor (2), cyst (3)" in out
    assert "masses = labels [2, 3]" in out
    assert "orientation RAS, spacing 1.6 x 1.6 x 2.5 mm, intensity [-200, 300] -> [0, 1]" in out
    assert "patch (sliding window): 8 x 8 x 8" in out
    assert "bottleneck" in out and "model.1.submodule" in out


def test_level_resolutions_are_measured(kits_model: Path) -> None:
    info = inspect_model(kits_model)
    layers = {layer.name: layer for layer in info["layers"]}
    assert list(layers) == ["enc0", "bottleneck", "final"]
    assert layers["bottleneck"].channels == 8 and layers["bottleneck"].grid == (4, 4, 4)
    assert layers["final"].channels == 12  # skip concatenation: 4 + 8
    assert layers["enc0"].voxel_mm == (3.2, 3.2, 5.0)


def test_all_layers_lists_every_module(kits_model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "--model", str(kits_model), "--all-layers"]) == 0
    out = capsys.readouterr().out
    assert "model.2.conv" in out and "model.0.conv" in out


def test_info_without_a_model_lists_methods(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info"]) == 0
    assert "hirescam" in capsys.readouterr().out


def test_info_on_a_missing_checkpoint_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "--model", str(tmp_path / "x.pt")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("medcam: error:")
