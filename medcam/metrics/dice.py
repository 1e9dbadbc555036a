"""Dice per class and per region on hard label maps, the way KiTS-style evaluation reports them (training, the demo)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from medcam.metrics.localisation import mask_dice


def dice(pred: Tensor, truth: Tensor) -> float:
    """Dice of two boolean masks of one case (:func:`~medcam.metrics.localisation.mask_dice`); NaN if both empty."""
    return float(mask_dice(pred.reshape(1, -1), truth.reshape(1, -1))[0])


def label_dice(
    pred: Tensor, truth: Tensor, labels: Mapping[str, int], ignore_index: int | None = None
) -> dict[str, float]:
    """Dice per named label value (background excluded) between two label maps."""
    valid = torch.ones_like(truth, dtype=torch.bool) if ignore_index is None else truth != ignore_index
    return {
        name: dice((pred == value) & valid, (truth == value) & valid)
        for name, value in labels.items()
        if name != "background"
    }


def region_dice(pred: Tensor, truth: Tensor, regions: Mapping[str, Sequence[int]]) -> dict[str, float]:
    """Dice per region (e.g. KiTS HECs), each region being the union of its label values."""
    out = {}
    for name, values in regions.items():
        v = torch.as_tensor(list(values), device=pred.device)
        out[name] = dice(torch.isin(pred, v), torch.isin(truth, v))
    return out


def nanmean(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan
