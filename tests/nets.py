"""Small networks for tests: seeded, fast on CPU, with known structure."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from medcam.core.probe import Probe
from medcam.core.targets import BoundTarget, Target
from medcam.methods.base import CAMMethod, MethodResult, PostProcessing

CONV = {2: nn.Conv2d, 3: nn.Conv3d}
BN = {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}


class TinyClassifier(nn.Module):
    """conv-bn-relu(inplace) x2 -> global average pooling -> linear, in 2D or 3D.

    ``features`` is the layer to explain; the head is GAP + linear, so CAM applies.
    """

    def __init__(self, dims: int, in_channels: int = 1, classes: int = 3, width: int = 8) -> None:
        super().__init__()
        conv, bn = CONV[dims], BN[dims]
        self.features = nn.Sequential(
            conv(in_channels, width, 3, padding=1),
            bn(width),
            nn.ReLU(inplace=True),
            conv(width, width, 3, padding=1, stride=2),
            bn(width),
            nn.ReLU(inplace=True),
        )
        self.pool = nn.AdaptiveAvgPool2d(1) if dims == 2 else nn.AdaptiveAvgPool3d(1)
        self.fc = nn.Linear(width, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


def tiny_unet(dims: int, classes: int = 3, in_channels: int = 1) -> nn.Module:
    """A seeded MONAI UNet with two down-sampling steps and a residual unit per level."""
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    return UNet(dims, in_channels, classes, channels=(4, 8, 16), strides=(2, 2), num_res_units=1)


def tiny_classifier(dims: int, classes: int = 3) -> TinyClassifier:
    torch.manual_seed(0)
    model = TinyClassifier(dims, classes=classes)
    # non-trivial running statistics, so eval mode differs from train mode
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.BatchNorm2d, nn.BatchNorm3d)):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    return model


def seeded_input(dims: int, batch: int = 1, size: int = 16, channels: int = 1, seed: int = 1) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, channels, *([size] * dims), generator=generator)


def hook_count(model: nn.Module) -> int:
    """Forward, pre-forward and backward hooks registered anywhere in ``model``."""
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) + len(m._backward_pre_hooks)
        for m in model.modules()
    )


class InputMapMethod(CAMMethod):
    """A stand-in for a method that needs no gradients (region or augmentation methods).

    Its map is the input's first channel; its ``uncertainty`` extra is that channel's
    magnitude plus ``uncertainty_offset``. Known answers for the plumbing around methods.
    """

    name = "input-map-test"
    needs_gradients = False

    def __init__(self, uncertainty_offset: float = 0.0) -> None:
        self.uncertainty_offset = uncertainty_offset

    def run(
        self,
        probe: Probe,
        x: Tensor,
        target: Target | BoundTarget,
        layers: Mapping[str, str],
        post: PostProcessing,
    ) -> MethodResult:
        output = probe.forward(x)
        bound = target if isinstance(target, BoundTarget) else target.bind(output)
        maps = {alias: post.apply(x[:, 0], tuple(x.shape[2:])) for alias in layers}
        uncertainty = {alias: x[:, 0].abs() + self.uncertainty_offset for alias in layers}
        return MethodResult(maps, bound, output, {"uncertainty": uncertainty})
