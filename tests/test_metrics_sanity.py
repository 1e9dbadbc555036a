"""Cascading randomisation: on a copy, from the output backwards, with known outcomes."""

from __future__ import annotations

import pytest
import torch
from monai.networks.nets import UNet
from torch import Tensor, nn

import medcam
from medcam.errors import UserError
from medcam.metrics import cascading_randomisation, parameterised_modules, randomise


class TwoHeads(nn.Module):
    """A classifier with an auxiliary head that the explained output never uses."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3, padding=1))
        self.head = nn.Linear(8, 3)
        self.aux = nn.Linear(8, 2)

    def forward(self, x: Tensor) -> Tensor:
        feats = self.features(x)
        pooled = feats.mean(dim=(2, 3))
        self.aux(pooled)  # computed, not returned
        return self.head(pooled)


def snapshot(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_cascade_runs_backwards_on_a_copy() -> None:
    torch.manual_seed(0)
    model = TwoHeads()
    model.train()
    x = torch.randn(2, 1, 12, 12)
    before = snapshot(model)
    assert parameterised_modules(model, x) == ["features.0", "features.2", "aux", "head"]
    result = cascading_randomisation(model, x, "gradcam", target=1, layers="features.2", keep_maps=True)
    assert result.steps == ("head", "aux", "features.2", "features.0")
    assert result.spearman["features.2"].shape == (4, 2)
    assert result.maps is not None and result.maps["features.2"].shape == (4, 2, 12, 12)
    # the user's model: same weights, same training flags, no gradients
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(m.training for m in model.modules())
    assert all(p.grad is None for p in model.parameters())
    # after the head is random the map no longer matches (Grad-CAM depends on the head's weights)
    assert (result.spearman["features.2"][0] < 0.95).all()


def test_randomising_a_module_off_the_path_leaves_the_map_unchanged() -> None:
    torch.manual_seed(0)
    model = TwoHeads()
    x = torch.randn(2, 1, 10, 10)
    result = cascading_randomisation(model, x, "hirescam", target=0, layers="features.2", modules=["aux", "head"])
    assert result.steps == ("aux", "head")
    assert torch.allclose(result.spearman["features.2"][0], torch.ones(2, dtype=torch.float64))
    assert torch.allclose(result.ssim["features.2"][0], torch.ones(2, dtype=torch.float64))
    assert (result.spearman["features.2"][1] < 0.99).all()


def test_randomise_is_seeded_and_keeps_scale() -> None:
    torch.manual_seed(0)
    a, b = nn.Conv2d(4, 8, 3), nn.Conv2d(4, 8, 3)
    b.load_state_dict(a.state_dict())
    original = a.weight.detach().clone()
    randomise(a, torch.Generator().manual_seed(3))
    randomise(b, torch.Generator().manual_seed(3))
    assert torch.equal(a.weight, b.weight) and not torch.equal(a.weight, original)
    assert a.weight.std().item() == pytest.approx(original.std().item(), rel=0.2)
    c = nn.Conv2d(4, 8, 3)
    randomise(c, torch.Generator().manual_seed(3), mode="reset")
    with pytest.raises(UserError, match="mode"):
        randomise(c, torch.Generator(), mode="shuffle")  # type: ignore[arg-type]


def test_grouped_cascade_on_a_3d_segmentation_unet() -> None:
    torch.manual_seed(0)
    net = UNet(3, 1, 2, channels=(4, 8, 16), strides=(2, 2), num_res_units=1)
    x = torch.randn(1, 1, 16, 16, 16)
    before = snapshot(net)
    target = medcam.SegmentationTarget(1, pixels="image")
    result = cascading_randomisation(net, x, "gradcam", target=target, layers="levels:bottleneck", groups=3)
    assert len(result.steps) == 3
    assert result.ssim["bottleneck"].shape == (3, 1)
    assert torch.isfinite(result.ssim["bottleneck"]).all()
    # fully randomised at the end: the map has changed
    assert result.spearman["bottleneck"][-1, 0] < 0.9
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
