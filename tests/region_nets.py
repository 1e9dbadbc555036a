"""Networks for the region and fusion tests: tiny seeded classifiers and a known-answer segmenter."""

from __future__ import annotations

import torch
from torch import Tensor, nn

CONV = {2: nn.Conv2d, 3: nn.Conv3d}


class SmallClassifier(nn.Module):
    """conv-relu -> strided conv-relu (``features``, 6 channels) -> GAP -> linear, 2D or 3D."""

    def __init__(self, dims: int, classes: int = 3, width: int = 6) -> None:
        super().__init__()
        conv = CONV[dims]
        self.features = nn.Sequential(
            conv(1, width, 3, padding=1),
            nn.ReLU(),
            conv(width, width, 3, padding=1, stride=2),
            nn.ReLU(),
        )
        self.fc = nn.Linear(width, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.features(x).flatten(2).mean(-1))


def small_classifier(dims: int, seed: int = 0) -> SmallClassifier:
    torch.manual_seed(seed)
    return SmallClassifier(dims).eval()


def small_input(dims: int, batch: int = 1, size: int = 12, seed: int = 1) -> Tensor:
    return torch.randn(batch, 1, *([size] * dims), generator=torch.Generator().manual_seed(seed))


class Localize(nn.Module):
    """Channel k = ReLU(x) inside block k of a fixed tiling, 0 elsewhere: localised feature maps."""

    def __init__(self, size: int, block: int) -> None:
        super().__init__()
        n = size // block
        ids = torch.arange(n**3).view(n, n, n)
        ids = ids.repeat_interleave(block, 0).repeat_interleave(block, 1).repeat_interleave(block, 2)
        basis = torch.stack([ids == k for k in range(n**3)]).float()
        self.register_buffer("basis", basis)

    def forward(self, x: Tensor) -> Tensor:
        return x.clamp_min(0) * self.basis


class RegionAnswerNet(nn.Module):
    """A 3D two-class segmenter whose answer is known by construction.

    The class-1 logit in output box ``out[i]`` depends only on the input inside region
    ``source[i]`` (a soft maximum of it), everywhere else it is -5. Explaining class 1
    over M = ``out[i]`` must therefore point at ``source[i]``, which lies elsewhere.
    The hooked layer ``features`` holds 64 spatially separated channels (4^3 blocks).
    """

    def __init__(self, size: int = 16, block: int = 4, temperature: float = 0.1, gain: float = 10.0) -> None:
        super().__init__()
        self.features = Localize(size, block)
        half = size // 2
        shape = (size, size, size)
        self.source = [torch.zeros(shape, dtype=torch.bool), torch.zeros(shape, dtype=torch.bool)]
        self.out = [torch.zeros(shape, dtype=torch.bool), torch.zeros(shape, dtype=torch.bool)]
        self.source[0][:half, :half, :half] = True
        self.out[0][half:, :half, :half] = True
        self.source[1][half:, half:, half:] = True
        self.out[1][:half, half:, half:] = True
        self.temperature = temperature
        self.gain = gain

    def forward(self, x: Tensor) -> Tensor:
        features = self.features(x)
        logit = torch.full_like(features[:, 0], -5.0)
        for source, out in zip(self.source, self.out, strict=True):
            # only the channels of blocks inside the source region are read
            channels = (self.features.basis * source).flatten(1).any(dim=1)
            values = features[:, channels].sum(dim=1)[:, source] / self.temperature
            count = torch.tensor(float(values.shape[1]))
            smooth_max = self.temperature * (values.logsumexp(dim=1) - count.log())
            detector = self.gain * (smooth_max - 0.5)
            logit = torch.where(out, detector.view(-1, 1, 1, 1), logit)
        return torch.stack([torch.zeros_like(logit), logit], dim=1)


def answer_input(batch: int = 1, size: int = 16, seed: int = 2) -> Tensor:
    """Bright structure everywhere: values in [0.5, 1.5]."""
    generator = torch.Generator().manual_seed(seed)
    return 0.5 + torch.rand(batch, 1, size, size, size, generator=generator)


class Splitter(nn.Module):
    """2D segmentation: class 1 where the input is bright (each pixel's own value)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[1, 0, 1, 1] = 4.0
            self.conv.bias.copy_(torch.tensor([0.0, -2.0]))

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class TissueAnswerNet(nn.Module):
    """A 3D two-class segmenter that recognises one tissue by its intensity, as a CT model does.

    Input: ``tissue_input`` (fat 0.3 everywhere, a lesion voxel at exactly 1.0 and a bone
    voxel at 2.0 in the same 3^3 block). The class-1 logit inside ``out`` is high only
    while some voxel of ``source`` (that block) still reads 1.0 +- 0.05. The hooked layer
    ``features`` holds 64 spatially separated channels (4^3 blocks). A soft Score-CAM mask
    of the block's channel is 0.5 at the lesion (its maximum is the bone), which turns the
    lesion into 0.65, another tissue; a binary mask shows it as it is.
    """

    def __init__(self, size: int = 12, block: int = 3, gain: float = 20.0) -> None:
        super().__init__()
        self.features = Localize(size, block)
        shape = (size, size, size)
        self.source = torch.zeros(shape, dtype=torch.bool)
        self.source[:block, :block, :block] = True
        self.out = torch.zeros(shape, dtype=torch.bool)
        self.out[-block:, -block:, -block:] = True
        self.gain = gain

    def forward(self, x: Tensor) -> Tensor:
        shown = self.features(x).sum(dim=1)  # the input, through the block channels
        lesion = torch.exp(-(((shown[:, self.source] - 1.0) / 0.05) ** 2)).amax(dim=1)
        detector = self.gain * (lesion - 0.5)
        logit = torch.where(self.out, detector.view(-1, 1, 1, 1), torch.full_like(shown, -5.0))
        return torch.stack([torch.zeros_like(logit), logit], dim=1)


def tissue_input(size: int = 12) -> Tensor:
    x = torch.full((1, 1, size, size, size), 0.3)
    x[0, 0, 1, 1, 1] = 1.0  # the lesion
    x[0, 0, 0, 0, 0] = 2.0  # bone, the block's brightest voxel
    return x
