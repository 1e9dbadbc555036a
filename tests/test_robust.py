"""RobustCAM through the public API: exactness, invariance, segmentation anatomy, batching, errors."""

from __future__ import annotations

import json
import logging

import pytest
import torch
import torchvision
from monai.networks.nets import UNet
from scipy import ndimage
from torch import nn

import medcam
from medcam.core.targets import TargetError
from medcam.errors import UserError
from medcam.methods.robust import RobustCAM
from medcam.methods.robust.views import Identity, ViewError


class Ramp(nn.Module):
    """Multiplies a feature map by a fixed column ramp (ones: no effect)."""

    def __init__(self, positional: bool, size: int) -> None:
        super().__init__()
        ramp = torch.linspace(0.2, 2.0, size) if positional else torch.ones(size)
        self.register_buffer("ramp", ramp.view(1, 1, 1, size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.ramp


class Pointwise(nn.Module):
    """1x1 convolution (positive weights, no bias) -> fixed spatial weighting -> GAP -> linear.

    Explained at ``weigh``. Without the weighting (all ones) Grad-CAM and HiResCAM give
    ``alpha * x(p)`` with ``alpha > 0``: after min-max normalisation the explanation is
    invariant to flips (a permutation of pixels) and to brightness and contrast changes
    (affine in intensity). With a column ramp the activations, hence the maps, depend
    on position, so a flip changes them.
    """

    def __init__(self, positional: bool, size: int = 16) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 1, bias=False)
        self.weigh = Ramp(positional, size)
        self.head = nn.Linear(4, 2)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([0.5, 1.0, 1.5, 2.0]).view(4, 1, 1, 1))
            self.head.weight.copy_(torch.tensor([[1.0, 0.5, 0.25, 2.0], [-1.0, 0.0, 1.0, 0.5]]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.weigh(self.conv(x)).mean(dim=(2, 3)))


class PointwiseSegmenter(nn.Module):
    """A per-pixel two-class net: the gradient of a sum over M is zero outside M."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 1)
        self.out = nn.Conv2d(4, 2, 1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([0.5, 1.0, 1.5, 2.0]).view(4, 1, 1, 1))
            self.conv.bias.fill_(0.1)
            self.out.weight.copy_(torch.tensor([[-1.0, 0.5, 0.0, -0.5], [1.0, 0.5, 0.25, 1.0]]).view(2, 4, 1, 1))
            self.out.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.conv(x)))


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None, num_classes=3).eval()


@pytest.fixture(scope="module")
def unet3d() -> nn.Module:
    torch.manual_seed(0)
    return UNet(3, 1, 3, channels=(4, 8, 16), strides=(2, 2), num_res_units=1).eval()


def test_identity_only_equals_the_base_method_classification(resnet: nn.Module):
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    robust = medcam.explain(resnet, x, "robustcam", layers=["layer3", "layer4"], views=["identity"])
    base = medcam.explain(resnet, x, "gradcam", layers=["layer3", "layer4"])
    for alias in base.maps:
        assert torch.equal(robust.maps[alias], base.maps[alias])
        assert torch.equal(robust.extras["uncertainty"][alias], torch.zeros_like(base.maps[alias]))
        assert torch.equal(robust.extras["valid_views"][alias], torch.ones_like(base.maps[alias]))
    assert torch.equal(robust.target.classes, base.target.classes)
    assert robust.stats["base"] == "gradcam"


def test_identity_only_equals_the_base_method_segmentation(unet3d: nn.Module):
    x = torch.randn(1, 1, 16, 16, 16, generator=torch.Generator().manual_seed(2))
    target = medcam.SegmentationTarget(1, pixels="box:3,4,5:12,13,11")
    robust = medcam.explain(unet3d, x, "robustcam", target=target, layers="levels", views=["identity"])
    base = medcam.explain(unet3d, x, "hirescam", target=target, layers="levels")  # "auto" picks HiResCAM
    assert set(robust.maps) == set(base.maps) and len(base.maps) > 2
    for alias in base.maps:
        assert torch.equal(robust.maps[alias], base.maps[alias]), alias
    assert torch.equal(robust.target.mask, base.target.mask)
    # another base by name, with median fusion: still exact
    other = medcam.explain(unet3d, x, "robustcam", target=target, layers="levels", views=["identity"], base="gradcam")
    grad = medcam.explain(unet3d, x, "gradcam", target=target, layers="levels")
    median = medcam.explain(
        unet3d, x, "robustcam", target=target, layers="levels", views=["identity"], base="gradcam", fusion="median"
    )
    for alias in grad.maps:
        assert torch.equal(other.maps[alias], grad.maps[alias])
        assert torch.equal(median.maps[alias], grad.maps[alias])


@pytest.mark.parametrize("base", ["gradcam", "hirescam"])
def test_uncertainty_is_zero_for_an_invariant_model_and_positive_otherwise(base: str):
    x = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(3)) + 0.1
    views = ["identity", "flip:0", "flip:1", "jitter:0.4,0.4,0"]
    target = medcam.ClassTarget(0)
    invariant = medcam.explain(Pointwise(False), x, "robustcam", target, "weigh", views=views, base=base)
    assert invariant.map.amax() == 1.0  # a real map, not a blank one
    assert float(invariant.extras["uncertainty"]["weigh"].max()) < 1e-5
    assert invariant.stats["stability"]["weigh"]["mean_variance"][0] < 1e-10
    assert invariant.stats["stability"]["weigh"]["spearman"][0] == pytest.approx(1.0)
    # the fused map of an invariant model is its single-view map
    single = medcam.explain(Pointwise(False), x, base, target, "weigh")
    assert torch.allclose(invariant.map, single.map, atol=1e-5)

    varying = medcam.explain(Pointwise(True), x, "robustcam", target, "weigh", views=views, base=base)
    assert float(varying.extras["uncertainty"]["weigh"].max()) > 0.05
    assert varying.stats["stability"]["weigh"]["mean_variance"][0] > 1e-4


def test_segmentation_views_explain_the_same_anatomy():
    """M moves with the image: every warped-back map lies on the original M, in no mirrored copy."""
    x = torch.rand(1, 1, 40, 40, generator=torch.Generator().manual_seed(4)) + 0.2
    box = torch.zeros(40, 40, dtype=torch.bool)
    box[6:16, 24:35] = True  # off-centre: a flip without moving M would explain the mirrored box
    target = medcam.SegmentationTarget(1, pixels=box)
    exp = medcam.explain(
        PointwiseSegmenter(), x, "robustcam", target, "conv", views=["identity", "flip:0", "flip:1", "rotate:15"]
    )
    fused = exp.map[0]
    near = torch.from_numpy(ndimage.binary_dilation(box.numpy(), iterations=2))
    assert float(fused[~near].abs().max()) < 1e-6
    assert float(fused[box].mean()) > 0.3
    assert exp.stats["dropped_views"] == []
    assert torch.equal(exp.target.mask[0], box)  # the result reports the original M


def test_resnet18_default_views_2d(resnet: nn.Module):
    """Smoke test plus the facts the default 2D view set fixes (6 views, rotation corners)."""
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    exp = medcam.explain(resnet, x, "robustcam", layers="layer3")
    fused, std, seen = exp.map, exp.extras["uncertainty"]["layer3"], exp.extras["valid_views"]["layer3"]
    assert fused.shape == std.shape == seen.shape == (2, 64, 64)
    assert torch.isfinite(fused).all() and fused.min() >= 0 and fused.max() <= 1
    assert torch.isfinite(std).all() and std.min() >= 0 and std.max() <= 0.5 and std.max() > 0
    assert seen[:, 32, 32].tolist() == [6.0, 6.0] and seen[:, 0, 0].tolist() == [5.0, 5.0]
    assert len(exp.stats["views"]) == 6 and exp.stats["views"][-1] == "greyscale"
    stability = exp.stats["stability"]["layer3"]
    assert len(stability["top_iou_per_view"][0]) == 6
    assert all(0 <= v <= 1 for v in stability["top_iou"]) and all(-1 <= v <= 1 for v in stability["spearman"])
    json.dumps({"stats": dict(exp.stats), "options": dict(exp.options)})  # ready for summary.json


def test_unet_3d_default_views(unet3d: nn.Module):
    x = torch.randn(1, 1, 16, 16, 16, generator=torch.Generator().manual_seed(6))
    target = medcam.SegmentationTarget(1, pixels="image")
    exp = medcam.explain(unet3d, x, "robustcam", target=target, layers="auto")
    alias = next(iter(exp.maps))
    fused, std, seen = exp.maps[alias], exp.extras["uncertainty"][alias], exp.extras["valid_views"][alias]
    assert fused.shape == std.shape == seen.shape == (1, 16, 16, 16)
    assert torch.isfinite(fused).all() and torch.isfinite(std).all() and float(std.max()) > 0
    # in-plane rotations (plane 0, 1) lose the in-plane corners along the whole axis 2
    assert float(seen[0, 8, 8, 8]) == 7 and seen[0, 0, 0, :].tolist() == [5.0] * 16
    assert exp.stats["base"] == "hirescam" and len(exp.stats["views"]) == 7


def test_batching_is_exact_and_sample_major(resnet: nn.Module):
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    together = medcam.explain(resnet, x, "robustcam", layers="layer3", batch_size=None)
    one_by_one = medcam.explain(resnet, x, "robustcam", layers="layer3", batch_size=1)
    odd = medcam.explain(resnet, x, "robustcam", layers="layer3", batch_size=4)  # chunks cross samples
    second = medcam.explain(resnet, x[1:], "robustcam", layers="layer3")
    for other in (one_by_one, odd):
        assert torch.allclose(together.map, other.map, atol=1e-5)
        assert torch.allclose(
            together.extras["uncertainty"]["layer3"], other.extras["uncertainty"]["layer3"], atol=1e-5
        )
    assert torch.allclose(together.map[1:], second.map, atol=1e-5)
    assert not torch.allclose(together.map[0], together.map[1], atol=1e-2)


def test_views_that_lose_the_pixel_set_are_dropped_with_a_warning(caplog: pytest.LogCaptureFixture):
    x = torch.rand(1, 1, 32, 32, generator=torch.Generator().manual_seed(8))
    target = medcam.SegmentationTarget(1, pixels="voxel:0,0")  # a corner: rotating by 45 deg loses it
    with caplog.at_level(logging.WARNING, logger="medcam.methods.robust"):
        exp = medcam.explain(PointwiseSegmenter(), x, "robustcam", target, "conv", views=["identity", "rotate:45"])
    assert "rotate:45" in caplog.text and "dropped" in caplog.text
    assert exp.stats["dropped_views"] == [{"sample": 0, "view": "rotate:45"}]
    assert exp.extras["valid_views"]["conv"].max() == 1
    assert exp.stats["stability"]["conv"]["top_iou_per_view"][0][1] is None
    with pytest.raises(TargetError, match="every view moves the pixel set M"):
        medcam.explain(PointwiseSegmenter(), x, "robustcam", target, "conv", views=["rotate:45"])


def test_model_is_untouched(resnet: nn.Module):
    resnet.train()
    try:
        flags = [m.training for m in resnet.modules()]
        state = {k: v.clone() for k, v in resnet.state_dict().items()}
        medcam.explain(resnet, torch.randn(1, 3, 32, 32), "robustcam", layers="layer4")
        assert [m.training for m in resnet.modules()] == flags
        assert all(p.grad is None for p in resnet.parameters())
        assert all(torch.equal(v, state[k]) for k, v in resnet.state_dict().items())  # BN stats too
        assert all(not m._forward_hooks for m in resnet.modules())
    finally:
        resnet.eval()


def test_options_are_checked_early():
    with pytest.raises(UserError, match="fusion"):
        RobustCAM(fusion="max")  # type: ignore[arg-type]
    with pytest.raises(UserError, match="batch_size"):
        RobustCAM(batch_size=0)
    with pytest.raises(UserError, match="cannot wrap itself"):
        RobustCAM(base="robustcam")
    with pytest.raises(ViewError, match="not known"):
        RobustCAM(views=["identity", "twirl:5"])
    with pytest.raises(UserError, match="views is empty"):
        RobustCAM(views=[])
    with pytest.raises(UserError, match="method 'nope' is not known"):
        medcam.explain(Pointwise(False), torch.rand(1, 1, 16, 16), "robustcam", 0, "weigh", base="nope")
    with pytest.raises(ViewError, match="3 channels"):
        medcam.explain(Pointwise(False), torch.rand(1, 1, 16, 16), "robustcam", 0, "weigh", views=["greyscale"])
    assert RobustCAM(views=["identity", "rotate:5"]).options()["views"] == ["identity", "rotate:5"]
    assert RobustCAM(views=Identity()).options()["views"] == ["identity"]
