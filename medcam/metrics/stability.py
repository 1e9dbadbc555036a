"""Stability of a map across augmented views (the RobustCAM metrics, METHODS.md).

``views`` are the maps of V views of the same N inputs, already warped back to the
original frame: ``(V, N, *spatial)``. ``valid`` (same shape, optional) marks the
pixels each view actually saw; a pixel that left the field of view is invalid, not
zero, and is left out of every statistic for that view.

* mean per-pixel variance across valid views (ddof 0), lower is better;
* mean IoU of each view's top 10 % with the fused map's top 10 %, higher is better;
* mean Spearman rho of each view with the fused map (a constant map counts as 0),
  higher is better.

The fused map defaults to the per-pixel mean over valid views.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from medcam.errors import UserError
from medcam.metrics.similarity import pearson_rows, ranks_and_top


@dataclass(frozen=True)
class Stability:
    """Per-sample stability scores, each ``(N,)`` float64."""

    variance: Tensor
    top_k_iou: Tensor
    spearman: Tensor


def _check(views: Tensor, valid: Tensor | None) -> Tensor:
    if views.ndim < 3:
        raise UserError(f"views must be shaped (V, N, *spatial), got {tuple(views.shape)}")
    if views.shape[0] < 2:
        raise UserError(f"stability needs at least 2 views, got {views.shape[0]}")
    if valid is None:
        return torch.ones_like(views, dtype=torch.bool)
    if valid.shape != views.shape:
        raise UserError(f"valid has shape {tuple(valid.shape)} but views {tuple(views.shape)}; give one mask per view")
    return valid.to(views.device).bool()


def fuse_mean(views: Tensor, valid: Tensor | None = None) -> Tensor:
    """Per-pixel mean over the valid views, ``(N, *spatial)``; pixels no view saw are 0."""
    mask = _check(views, valid).double()
    count = mask.sum(dim=0)
    return ((views.double() * mask).sum(dim=0) / count.clamp_min(1)).float()


def per_pixel_variance(views: Tensor, valid: Tensor | None = None) -> Tensor:
    """Mean over pixels (seen by at least one view) of the variance across valid views, ``(N,)``."""
    mask = _check(views, valid).double()
    values = views.double()
    count = mask.sum(dim=0)
    mean = (values * mask).sum(dim=0) / count.clamp_min(1)
    variance = (((values - mean) ** 2) * mask).sum(dim=0) / count.clamp_min(1)
    seen = (count > 0).double()
    return ((variance * seen).flatten(1).sum(dim=1) / seen.flatten(1).sum(dim=1).clamp_min(1)).cpu()


def stability(
    views: Tensor, fused: Tensor | None = None, valid: Tensor | None = None, *, top: float = 0.1
) -> Stability:
    """The three RobustCAM stability scores of ``views`` against ``fused`` (default: their mean)."""
    mask = _check(views, valid)
    if fused is None:
        fused = fuse_mean(views, mask)
    if fused.shape != views.shape[1:]:
        raise UserError(f"fused has shape {tuple(fused.shape)}, expected {tuple(views.shape[1:])} (N, *spatial)")
    fused = fused.to(views.device)
    n_views, n = views.shape[:2]
    ious = torch.zeros(n_views, n, dtype=torch.float64)
    rhos = torch.zeros(n_views, n, dtype=torch.float64)
    for i in range(n):
        iou, rho = view_agreement(views[:, i], fused[i], mask[:, i], top)
        ious[:, i], rhos[:, i] = iou.nan_to_num(0.0), rho  # views without valid pixels are not counted
    counted = mask.flatten(2).any(dim=2).double().cpu()
    per = counted.sum(dim=0).clamp_min(1)
    return Stability(
        variance=per_pixel_variance(views, mask),
        top_k_iou=(ious * counted).sum(dim=0) / per,
        spearman=(rhos * counted).sum(dim=0) / per,
    )


def mean_variance(std: Tensor, count: Tensor) -> Tensor:
    """Mean over pixels seen by at least one view of the variance ``std ** 2``, ``(N,)``.

    For fused results that already carry the per-pixel standard deviation and the
    number of valid views (RobustCAM's ``uncertainty`` and ``valid_views``).
    """
    seen = count > 0
    variance = std.double().pow(2) * seen
    return (variance.flatten(1).sum(dim=1) / seen.flatten(1).sum(dim=1).clamp_min(1)).cpu()


def view_agreement(
    views: Tensor, reference: Tensor, valid: Tensor | None = None, fraction: float = 0.1
) -> tuple[Tensor, Tensor]:
    """Top-``fraction`` IoU and Spearman rho of each view ``(V, *spatial)`` with one ``reference``.

    Each view is compared over its own valid pixels. The reference is ranked once for
    all fully valid views (the common case: one sort of a 3D volume instead of V).
    Returns two ``(V,)`` float64 tensors; a view without valid pixels gets NaN and 0.
    """
    flat = views.detach().flatten(1)
    ref = reference.detach().to(flat.device).flatten().unsqueeze(0)
    mask = torch.ones_like(flat, dtype=torch.bool) if valid is None else valid.to(flat.device).bool().flatten(1)
    ious = torch.full((flat.shape[0],), math.nan, dtype=torch.float64)
    rhos = torch.zeros(flat.shape[0], dtype=torch.float64)

    def compare(rows: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        # one sort per map gives both its ranks and its top-k set
        ranks, top = ranks_and_top(rows, fraction)
        target_ranks, target_top = ranks_and_top(target, fraction)
        iou = (top & target_top).sum(1).double() / (top | target_top).sum(1).double()
        return iou.cpu(), pearson_rows(ranks, target_ranks.expand_as(ranks)).cpu()

    whole = mask.all(dim=1)
    if bool(whole.any()):
        ious[whole.cpu()], rhos[whole.cpu()] = compare(flat[whole], ref)
    for v in torch.nonzero(~whole & mask.any(dim=1)).flatten().tolist():
        seen = mask[v]
        ious[v : v + 1], rhos[v : v + 1] = compare(flat[v][seen].unsqueeze(0), ref[0][seen].unsqueeze(0))
    return ious, rhos
