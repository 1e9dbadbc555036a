"""Known-answer localisation: networks whose class-c score depends on one region only.

Feature channel k is gated by a fixed spatial mask R_k inside the network, so the
class-c output cannot depend on the input outside R_c. A faithful map must put
(almost) all of its mass inside R_c, although the input has bright structure
everywhere.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import medcam

GRADIENT_METHODS = ["gradcam", "hirescam", "gradcam++", "xgradcam"]


class Gate(nn.Module):
    """Multiplies channel k by the fixed mask of region k."""

    def __init__(self, regions: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("regions", regions.float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.regions


class GatedNet(nn.Module):
    """conv -> ReLU -> gate channel k by region k -> (classifier: GAP + identity linear | seg: 1x1 conv)."""

    def __init__(self, regions: torch.Tensor, segmentation: bool) -> None:
        super().__init__()
        dims = regions.ndim - 1
        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        k = regions.shape[0]
        self.features = conv(1, k, 3, padding=1)
        with torch.no_grad():
            self.features.weight.fill_(1.0 / 3**dims)
            self.features.bias.zero_()
        self.relu = nn.ReLU()
        self.gate = Gate(regions)
        self.segmentation = segmentation
        self.head = conv(k, k, 1) if segmentation else nn.Linear(k, k)
        with torch.no_grad():
            self.head.weight.copy_(torch.eye(k).view_as(self.head.weight))
            self.head.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gated = self.gate(self.relu(self.features(x)))
        if self.segmentation:
            return self.head(gated)
        return self.head(gated.flatten(2).mean(-1))


def _halves(shape: tuple[int, ...]) -> torch.Tensor:
    regions = torch.zeros(2, *shape, dtype=torch.bool)
    regions[0, ..., : shape[-1] // 2] = True
    regions[1, ..., shape[-1] // 2 :] = True
    return regions


def _blobs(shape: tuple[int, ...]) -> torch.Tensor:
    """Bright blobs on both sides of the input, background zero."""
    x = torch.zeros(1, 1, *shape)
    for centre in ((shape[-1] // 4), (3 * shape[-1] // 4)):
        x[(..., slice(2, shape[-2] - 2), slice(centre - 2, centre + 2))] = 1.0
    return x


def _mass_inside(cam: torch.Tensor, region: torch.Tensor) -> float:
    return float((cam * region).sum() / cam.sum())


@pytest.mark.parametrize("method", [*GRADIENT_METHODS, "cam"])
def test_classifier_map_lies_in_the_region_the_class_reads(method: str) -> None:
    regions = _halves((24, 24))
    net = GatedNet(regions, segmentation=False)
    x = _blobs((24, 24))
    for cls in (0, 1):
        cam = medcam.explain(net, x, method, target=cls, layers="gate").map[0]
        assert _mass_inside(cam, regions[cls]) > 0.99
        assert regions[cls].flatten()[cam.argmax()]


@pytest.mark.parametrize("method", GRADIENT_METHODS)
def test_segmentation_map_lies_in_the_region_the_class_reads_3d(method: str) -> None:
    regions = _halves((12, 12, 16))
    net = GatedNet(regions, segmentation=True)
    x = _blobs((12, 12, 16))
    target = medcam.SegmentationTarget(1, pixels="image")
    cam = medcam.explain(net, x, method, target=target, layers="gate").map[0]
    assert _mass_inside(cam, regions[1]) > 0.99


def test_hirescam_stays_faithful_before_the_gate_where_gradcam_does_not() -> None:
    """Draelos & Carin's point: before the gate, channel k is active everywhere but only
    region k reaches the output. HiResCAM (element-wise) keeps to region k; Grad-CAM's
    averaged weights paint wherever channel k is active."""
    regions = _halves((24, 24))
    net = GatedNet(regions, segmentation=False)
    x = _blobs((24, 24))
    hires = medcam.explain(net, x, "hirescam", target=1, layers="relu").map[0]
    grad = medcam.explain(net, x, "gradcam", target=1, layers="relu").map[0]
    assert _mass_inside(hires, regions[1]) > 0.99
    assert _mass_inside(grad, regions[1]) < 0.6


def test_seg_hires_follows_the_pixel_set_where_seg_gradcam_cannot() -> None:
    """With M on the right half only, HiResCAM stays there; Grad-CAM spreads to the left.

    Both classes read the whole image here (no gating), so only the pixel set decides.
    """
    regions = torch.ones(2, 12, 12, 16, dtype=torch.bool)
    net = GatedNet(regions, segmentation=True)
    x = _blobs((12, 12, 16))
    right = _halves((12, 12, 16))[1]
    target = medcam.SegmentationTarget(1, pixels=right)
    hires = medcam.explain(net, x, "hirescam", target=target, layers="gate").map[0]
    grad = medcam.explain(net, x, "gradcam", target=target, layers="gate").map[0]
    assert _mass_inside(hires, right) > 0.9
    assert _mass_inside(grad, right) < 0.6
