"""Dice + CE against MONAI's implementation, the ignore index, and Dice metrics on hand-made masks."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss, DiceLoss

from medcam.metrics.dice import dice, label_dice, nanmean, region_dice
from medcam.train.losses import DiceCrossEntropyLoss


@pytest.mark.parametrize("include_background", [True, False])
def test_softmax_dice_ce_matches_monai(include_background):
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 6, 7, 5)
    target = torch.randint(0, 4, (2, 1, 6, 7, 5))
    ours = DiceCrossEntropyLoss(include_background=include_background)(logits, target)
    theirs = DiceCELoss(include_background=include_background, to_onehot_y=True, softmax=True)(logits, target)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_sigmoid_dice_bce_matches_monai_dice_plus_torch_bce():
    """Region heads: Dice as MONAI's DiceLoss(sigmoid=True) plus binary CE per channel (as nnU-Net).
    MONAI's DiceCELoss would use a softmax CE across the region channels, which overlap."""
    torch.manual_seed(1)
    logits = torch.randn(2, 3, 8, 8)
    target = (torch.rand(2, 3, 8, 8) > 0.6).float()
    ours = DiceCrossEntropyLoss(sigmoid=True)(logits, target)
    theirs = DiceLoss(sigmoid=True)(logits, target) + F.binary_cross_entropy_with_logits(logits, target)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_ignored_pixels_do_not_change_the_loss():
    torch.manual_seed(2)
    logits = torch.randn(1, 3, 8, 8)
    target = torch.randint(0, 3, (1, 1, 8, 8))
    target[..., :4] = 255
    loss = DiceCrossEntropyLoss(ignore_index=255)
    before = loss(logits, target)
    changed = logits.clone()
    changed[..., :4] = torch.randn(1, 3, 8, 4) * 10
    torch.testing.assert_close(loss(changed, target), before)
    # and the remaining pixels equal a loss on the cropped image
    torch.testing.assert_close(before, DiceCrossEntropyLoss()(logits[..., 4:], target[..., 4:]))


def test_dice_by_hand():
    pred = torch.tensor([0, 1, 1, 2, 2, 0])
    truth = torch.tensor([0, 1, 2, 2, 2, 3])
    scores = label_dice(pred, truth, {"background": 0, "a": 1, "b": 2, "c": 3})
    assert scores["a"] == pytest.approx(2 * 1 / (2 + 1))
    assert scores["b"] == pytest.approx(2 * 2 / (2 + 3))
    assert scores["c"] == 0.0  # present but missed
    assert math.isnan(dice(torch.zeros(3, dtype=torch.bool), torch.zeros(3, dtype=torch.bool)))
    regions = region_dice(pred, truth, {"ab": (1, 2), "bc": (2, 3)})
    assert regions["ab"] == 1.0  # 1 and 2 confused with each other, but the union is right
    assert regions["bc"] == pytest.approx(2 * 2 / (2 + 4))
    assert nanmean([0.5, math.nan, 1.0]) == 0.75
    ignored = label_dice(pred, torch.tensor([255, 1, 255, 2, 2, 3]), {"a": 1}, ignore_index=255)
    assert ignored["a"] == 1.0
