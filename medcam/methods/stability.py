"""Stability of an explanation across views (RobustCAM's metrics): pure tensor functions.

Each function takes maps shaped ``(N, *spatial)`` and an optional boolean ``valid``
mask of the same shape (voxels to compare; warped-back views are unknown outside
their field of view) and returns one value per sample, ``(N,)`` float64.

These belong with the other metrics (``medcam.metrics``); they live here until that
package exists and are written to move there unchanged.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _valid(maps: Tensor, valid: Tensor | None) -> Tensor:
    return torch.ones_like(maps, dtype=torch.bool) if valid is None else valid.bool()


def mean_variance(std: Tensor, count: Tensor) -> Tensor:
    """Mean over voxels seen by at least one view of the per-voxel variance (``std ** 2``)."""
    seen = count > 0
    variance = std.double().pow(2) * seen
    total = seen.flatten(1).sum(dim=1).clamp_min(1)
    return variance.flatten(1).sum(dim=1) / total


def _top_set(values: Tensor, k: int) -> Tensor:
    """Indices of the ``k`` largest values; ties go to the lower index (deterministic)."""
    order = torch.sort(values, descending=True, stable=True).indices
    return order[:k]


def top_fraction_iou(a: Tensor, b: Tensor, valid: Tensor | None = None, fraction: float = 0.1) -> Tensor:
    """IoU of the top ``fraction`` of voxels of ``a`` and of ``b`` (within ``valid``), per sample.

    Both sets hold ``k = max(1, round(fraction * n))`` voxels of the ``n`` valid ones, so
    the IoU is ``|A & B| / (2k - |A & B|)``. No valid voxel gives NaN.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    mask = _valid(a, valid)
    out = torch.empty(a.shape[0], dtype=torch.float64)
    for n in range(a.shape[0]):
        keep = mask[n].flatten()
        va, vb = a[n].flatten()[keep], b[n].flatten()[keep]
        if va.numel() == 0:
            out[n] = math.nan
            continue
        k = max(1, round(fraction * va.numel()))
        hits = torch.zeros(va.numel(), dtype=torch.int8, device=va.device)
        hits[_top_set(va, k)] += 1
        hits[_top_set(vb, k)] += 1
        both = int((hits == 2).sum())
        out[n] = both / (2 * k - both)
    return out


def _average_ranks(values: Tensor) -> Tensor:
    """Ranks 0..n-1 with ties sharing their average rank (scipy's ``rankdata`` 'average')."""
    order = torch.argsort(values, stable=True)
    _, inverse, counts = torch.unique_consecutive(values[order], return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).double()
    average = ends - (counts.double() + 1) / 2
    ranks = torch.empty(values.numel(), dtype=torch.float64, device=values.device)
    ranks[order] = average[inverse]
    return ranks


def spearman(a: Tensor, b: Tensor, valid: Tensor | None = None) -> Tensor:
    """Spearman rank correlation of ``a`` and ``b`` over ``valid`` voxels, per sample.

    Undefined correlations (a constant map, fewer than two voxels) count as 0, as in the
    RobustCAM reference.
    """
    mask = _valid(a, valid)
    out = torch.zeros(a.shape[0], dtype=torch.float64)
    for n in range(a.shape[0]):
        keep = mask[n].flatten()
        va, vb = a[n].flatten()[keep], b[n].flatten()[keep]
        if va.numel() < 2:
            continue
        ra, rb = _average_ranks(va), _average_ranks(vb)
        ra, rb = ra - ra.mean(), rb - rb.mean()
        denominator = float((ra.pow(2).sum() * rb.pow(2).sum()).sqrt())
        if denominator > 0:
            out[n] = float((ra * rb).sum()) / denominator
    return out
