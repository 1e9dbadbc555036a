"""TorchScript (scripted or traced) models: one clear line instead of torch's hook error."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import medcam
from medcam.core.hooks import LayerCapture, LayerError
from medcam.models.checkpoint import CheckpointError, read_checkpoint


def _net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Conv2d(2, 2, 1)).eval()


@pytest.mark.parametrize("kind", ["scripted", "traced"])
def test_explain_refuses_torchscript_in_one_line(kind: str) -> None:
    x = torch.randn(1, 1, 8, 8)
    model = torch.jit.script(_net()) if kind == "scripted" else torch.jit.trace(_net(), x)
    with pytest.raises(LayerError, match=f"{kind} TorchScript module.*pass the Python nn.Module") as err:
        medcam.explain(model, x, "gradcam", 1, layers=["0"])
    assert "\n" not in str(err.value)
    with pytest.raises(LayerError, match="TorchScript"):
        LayerCapture(model, ["0"])


def test_torchscript_file_as_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    torch.jit.script(_net()).save(str(path))
    with pytest.raises(CheckpointError, match="is a TorchScript archive, on which layer hooks cannot run; pass"):
        read_checkpoint(path)
