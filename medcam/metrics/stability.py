"""Stability of a map across augmented views (the RobustCAM metrics, docs/robustcam.md).

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

from dataclasses import dataclass

import torch
from torch import Tensor

from medcam.core.agreement import mean_variance, view_agreement
from medcam.errors import UserError


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


__all__ = ["Stability", "fuse_mean", "mean_variance", "per_pixel_variance", "stability", "view_agreement"]
