"""The seeded models, inputs and targets every library is timed on.

Imported by the worker in two environments (the project's and M3d-CAM's, see
peer_env.py), so it depends on torch, torchvision and MONAI only, never on medcam.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

UNET_BOTTLENECK = "model.1.submodule.1.submodule.1.submodule.1.submodule"


@dataclass(frozen=True)
class Case:
    name: str
    kind: str  # "classification" or "segmentation"
    layer: str
    size: int
    description: str


CASES: dict[str, Case] = {
    c.name: c
    for c in (
        Case("resnet18-2d", "classification", "layer4", 224, "torchvision ResNet-18, 1x3x224x224, layer4"),
        Case("resnet50-2d", "classification", "layer4", 224, "torchvision ResNet-50, 1x3x224x224, layer4"),
        Case("unet3d-64", "segmentation", UNET_BOTTLENECK, 64, "MONAI UNet 3D, 1x1x64^3, bottleneck"),
        Case("unet3d-96", "segmentation", UNET_BOTTLENECK, 96, "MONAI UNet 3D, 1x1x96^3, bottleneck"),
        Case("unet3d-128", "segmentation", UNET_BOTTLENECK, 128, "MONAI UNet 3D, 1x1x128^3, bottleneck"),
    )
}


def build(case: Case) -> tuple[nn.Module, Tensor]:
    """The model (seed 0, random weights, eval mode) and input (seed 1) of ``case``."""
    torch.manual_seed(0)
    if case.kind == "classification":
        import torchvision

        factory = {"resnet18-2d": torchvision.models.resnet18, "resnet50-2d": torchvision.models.resnet50}
        model = factory[case.name](weights=None)
        torch.manual_seed(1)
        x = torch.randn(1, 3, case.size, case.size)
    else:
        from monai.networks.nets import UNet

        model = UNet(3, 1, 3, channels=(16, 32, 64, 128, 256), strides=(2, 2, 2, 2), num_res_units=2)
        torch.manual_seed(1)
        # a bright sphere in noise, so the untrained net's prediction has structure
        grid = torch.stack(torch.meshgrid(*[torch.linspace(-1, 1, case.size)] * 3, indexing="ij"))
        x = ((grid.pow(2).sum(0) < 0.3).float() + 0.2 * torch.randn(case.size, case.size, case.size))[None, None]
    return model.eval(), x


@dataclass(frozen=True)
class Goal:
    """What every library explains: class ``index``; for segmentation over the pixel set ``mask``.

    Segmentation: the foreground class with the most predicted voxels, M = its
    predicted voxels, score S = sum over M of its logits (medcam's ``predicted`` M).
    """

    index: int
    mask: Tensor | None

    def score(self, output: Tensor) -> Tensor:
        """S per sample from the model output, the scalar each peer differentiates."""
        if self.mask is None:
            return output[:, self.index]
        return (output[:, self.index] * self.mask).flatten(1).sum(dim=1)


def goal(case: Case, model: nn.Module, x: Tensor) -> Goal:
    with torch.no_grad():
        out = model(x)
    if case.kind == "classification":
        return Goal(int(out.argmax(dim=1)[0]), None)
    predicted = out.argmax(dim=1)
    counts = torch.bincount(predicted.flatten(), minlength=out.shape[1])
    counts[0] = -1  # explain a foreground class
    index = int(counts.argmax())
    if int(counts[index]) <= 0:
        raise RuntimeError(f"{case.name}: the untrained net predicts no foreground voxel")
    return Goal(index, (predicted == index).float())
