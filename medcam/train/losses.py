"""Dice + cross-entropy for softmax label maps (optional ignore index) and sigmoid region heads."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def soft_dice_loss(probs: Tensor, onehot: Tensor, smooth: float = 1e-5) -> Tensor:
    """1 - soft Dice per (sample, channel), averaged; sums over ``range(2, ndim)``."""
    dims = tuple(range(2, probs.ndim))
    intersection = (probs * onehot).sum(dims)
    denominator = probs.sum(dims) + onehot.sum(dims)
    return (1.0 - (2.0 * intersection + smooth) / (denominator + smooth)).mean()


class DiceCrossEntropyLoss(nn.Module):
    """``dice_weight * (1 - soft Dice) + ce_weight * cross-entropy``.

    Softmax mode: ``logits`` (N, C, *spatial), ``target`` (N, 1, *spatial) integer labels;
    pixels equal to ``ignore_index`` count in neither term; ``include_background=False``
    leaves channel 0 out of the Dice term (as nnU-Net and MONAI's option do).
    Sigmoid mode: ``target`` (N, C, *spatial) in {0, 1}, one channel per region.
    """

    def __init__(
        self,
        sigmoid: bool = False,
        include_background: bool = True,
        ignore_index: int | None = None,
        class_weights: Tensor | None = None,
        dice_weight: float = 1.0,
        ce_weight: float = 1.0,
        smooth: float = 1e-5,
    ) -> None:
        super().__init__()
        self.sigmoid = sigmoid
        self.include_background = include_background
        self.ignore_index = ignore_index
        self.register_buffer("class_weights", class_weights)
        self.dice_weight = dice_weight
        self.ce_weight = ce_weight
        self.smooth = smooth

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        if self.sigmoid:
            target = target.to(logits.dtype)
            ce = F.binary_cross_entropy_with_logits(logits, target)
            dice = soft_dice_loss(torch.sigmoid(logits), target, self.smooth)
            return self.dice_weight * dice + self.ce_weight * ce
        labels = target[:, 0].long()
        ignore = self.ignore_index if self.ignore_index is not None else -100
        weight = self.class_weights if isinstance(self.class_weights, Tensor) else None
        ce = F.cross_entropy(logits, labels, weight=weight, ignore_index=ignore)
        valid = labels != ignore
        labels = torch.where(valid, labels, torch.zeros_like(labels))
        mask = valid.unsqueeze(1).to(logits.dtype)
        probs = torch.softmax(logits, dim=1) * mask
        onehot = F.one_hot(labels, logits.shape[1]).movedim(-1, 1).to(logits.dtype) * mask
        if not self.include_background:
            probs, onehot = probs[:, 1:], onehot[:, 1:]
        dice = soft_dice_loss(probs, onehot, self.smooth)
        return self.dice_weight * dice + self.ce_weight * ce
