"""Stability under held-out perturbations: does a map stay put when the input changes a little?

RobustCAM's own stability statistics compare its views with their fusion, which says
nothing about whether RobustCAM is steadier than its base method. Here any method is
re-run on perturbed copies of the input that are NOT among RobustCAM's fused views
(other rotation angles, blur and intensity strengths), each map is warped back to
the original frame, and compared with the same method's map of the clean input:

* variance: mean over voxels (valid in every view) of the per-voxel variance across
  the clean map and the warped-back maps (the RobustCAM paper's "mean variance");
  lower is steadier;
* Spearman rho of each warped-back map with the clean map, averaged; higher is steadier;
* top-k IoU with k = ``multiple`` x ``unit`` voxels (by default |M| of a segmentation
  target), averaged; a fixed share of a 3D volume (10 % ~ 100 x |M|) would compare
  mostly the ranking of background.

Run it for the base method and for RobustCAM on the same views to put the two side by side.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from medcam.core.agreement import view_agreement
from medcam.errors import UserError
from medcam.methods.robust.views import View, parse_view

# 3D: none of these is among RobustCAM's default views (rotations +/-10 deg, blur sigma 1,
# intensity scale / shift and gamma drawn from seed 0 / 1)
HELD_OUT_3D: tuple[str, ...] = (
    "rotate:5:1,2:fill=min",
    "rotate:-4:1,2:fill=min",
    "blur:0.6",
    "intensity:0.05,0.05:seed=17",
)
HELD_OUT_2D: tuple[str, ...] = ("rotate:7", "rotate:-5", "blur:0.6", "intensity:0.05,0.05:seed=17")


@dataclass(frozen=True)
class HeldOutStability:
    """Per-sample scores ``(N,)`` over ``views`` (their descriptions)."""

    views: tuple[str, ...]
    variance: Tensor
    spearman: Tensor
    top_k_iou: Tensor


def held_out_views(ndim: int, views: Sequence[str | View] | None = None) -> list[View]:
    """The held-out views for an input with ``ndim`` spatial axes (default: :data:`HELD_OUT_3D` / ``_2D``)."""
    if views is None:
        if ndim not in (2, 3):
            raise UserError(f"default held-out views exist for 2D and 3D inputs, got {ndim} spatial axes")
        views = HELD_OUT_3D if ndim == 3 else HELD_OUT_2D
    return [parse_view(v) for v in views]


def held_out_stability(
    explain_view: Callable[[Tensor, View], Tensor],
    x: Tensor,
    reference: Tensor,
    *,
    unit: int | Sequence[int],
    views: Sequence[str | View] | None = None,
    multiple: float = 1.0,
) -> HeldOutStability:
    """Stability of ``explain_view`` (view input ``(N, C, *S)``, the view -> maps ``(N, *S)``) around ``reference``.

    ``reference``: the method's maps of ``x`` itself. ``unit``: voxels per sample that
    ``multiple`` counts in (|M|), for the top-k IoU.
    """
    chosen = held_out_views(x.ndim - 2, views)
    if multiple <= 0:
        raise UserError(f"multiple must be positive, got {multiple}")
    units = [int(unit)] * x.shape[0] if isinstance(unit, int) else [int(u) for u in unit]
    maps, valid = [], []
    for view in chosen:
        view.check(x)
        back, seen = view.warp_back(explain_view(view.apply(x), view).detach().to(reference.device))
        maps.append(back.float())
        valid.append(seen.to(reference.device))
    stack, mask = torch.stack(maps, dim=1), torch.stack(valid, dim=1)  # (N, V, *S)
    variance = torch.zeros(x.shape[0], dtype=torch.float64)
    rho = torch.zeros(x.shape[0], dtype=torch.float64)
    iou = torch.zeros(x.shape[0], dtype=torch.float64)
    for n in range(x.shape[0]):
        everywhere = mask[n].all(dim=0)
        values = torch.cat([reference[n].unsqueeze(0).float(), stack[n]])[:, everywhere].double()
        variance[n] = values.var(dim=0, unbiased=False).mean().cpu()
        pixels = int(everywhere.sum())
        fraction = min(1.0, multiple * units[n] / max(1, pixels))
        ious, rhos = view_agreement(stack[n], reference[n], mask[n], fraction)
        iou[n], rho[n] = ious.nan_to_num(0.0).mean(), rhos.mean()
    return HeldOutStability(tuple(v.describe() for v in chosen), variance, rho, iou)
