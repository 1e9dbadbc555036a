"""Sliding-window RobustCAM: the augmentation views run per window on volumes larger than the model's window.

RobustCAM explains several views of the input; on a volume larger than the model's
window the views cannot run on the whole volume at once. Here they run per window, as
the gradient methods do (:mod:`medcam.inference`), and the per-window results are
stitched. What is computed, for every window ``w`` that intersects the pixel set M:

1. The window's target is its share of the stitched score (``WeightedLogits``: the
   blending weight over the normalisation, on M, times df/dY at the stitched output).
   RobustCAM runs on the window patch with that target; each view transforms the patch
   and carries the target's per-pixel weights with it (nearest neighbour, exactly like
   M), so every view of the window explains the same anatomy. Geometric views act on
   the window: a rotation turns about the window's centre and fills with the window's
   minimum (or its own fill value) where it shows nothing.
2. Each view's map is post-processed like a map of the base method (ReLU, upsampling,
   normalisation over the view's field with offset ``o_wv`` and scale ``s_wv``), warped
   back with its validity mask, and fused over the valid views: ``f_w`` (mean or
   median), ``u_w`` (standard deviation), ``c_w`` (count).
3. Stitching on the model grid:

   * fused: ``F = sum_w (o_w + s_w f_w)``, with ``o_w``, ``s_w`` the means of the
     window's per-view offsets and scales: each window's fused map returns to the raw
     units of its views, and the windows are added like the raw window maps of the
     gradient methods (the blending weights are already in each window's target).
     ReLU and the normalisation then run once, on the whole volume.
   * uncertainty: ``U = sum_w s_w u_w / max_w s_w``: the windows' standard deviations
     in raw units, added (an upper bound of the standard deviation of the added views,
     by Minkowski's inequality), expressed in the per-view normalised units of the
     window with the largest scale.
   * valid views: ``sum_w imp_w c_w / norm``, the blending-weighted mean count; a window
     that misses M counts the views its geometry leaves valid.

   Windows that miss M have a zero map in every view and are skipped.
4. Stability: ``mean_variance`` from ``U`` and the stitched count, as RobustCAM
   computes it from its own uncertainty; each view's top-fraction IoU and Spearman rho
   are computed per window (against that window's fused map) and averaged over the
   windows, weighted by each window's share of the score (the sum of its target
   weights).

With one window covering the volume every step reduces to RobustCAM on the volume
(``medcam.explain(..., "robustcam")``), which the tests check. Memory: one window's
views at a time (``batch_size`` rows per pass), plus three volume-sized accumulators per
layer; ``--window-batch`` does not apply (the views of a window are the batch).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor

from medcam.core.ops import finalize
from medcam.core.probe import Probe
from medcam.core.targets import BoundTarget
from medcam.inference import (
    SlidingWindow,
    WeightedLogits,
    WindowCAMResult,
    WindowError,
    WindowLayout,
    _at,
    _window_weights,
    window_combine,
    window_stats,
)
from medcam.methods.base import PostProcessing
from medcam.methods.robust import RobustCAM
from medcam.methods.views import View
from medcam.metrics.stability import mean_variance

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class WindowViewTarget(WeightedLogits):
    """The window target of the sliding-window CAM, carried into RobustCAM's views with the image."""

    def in_views(self, rows: Sequence[tuple[int, View]]) -> BoundTarget:
        if self.weights is None:  # pragma: no cover - always constructed with weights
            raise ValueError("a window target needs its weights")
        weights = torch.cat([view.warp_field(self.weights[i : i + 1]) for i, view in rows])
        index = torch.tensor([i for i, _ in rows], device=self.classes.device)
        return replace(self, classes=self.classes[index], mask=weights.abs().sum(dim=1) > 0, weights=weights)


@dataclass
class _Accumulators:
    """Volume-sized sums of one layer on the padded model grid."""

    fused: Tensor
    spread: Tensor
    views: list[list[_ViewAgreement]]  # per sample, per view


@dataclass
class _ViewAgreement:
    """Score-weighted sums of one view's per-window agreement with the fused map."""

    iou: float = 0.0
    iou_weight: float = 0.0
    rho: float = 0.0
    rho_weight: float = 0.0

    def add(self, iou: float | None, rho: float | None, weight: float) -> None:
        if iou is not None:
            self.iou += weight * iou
            self.iou_weight += weight
        if rho is not None:
            self.rho += weight * rho
            self.rho_weight += weight

    def mean(self) -> tuple[float | None, float | None]:
        iou = self.iou / self.iou_weight if self.iou_weight > 0 else None
        rho = self.rho / self.rho_weight if self.rho_weight > 0 else None
        return iou, rho


def robust_sliding_window_cam(
    probe: Probe,
    x: Tensor,
    method: RobustCAM,
    bound: BoundTarget,
    layers: Mapping[str, str],
    layout: WindowLayout,
    window: SlidingWindow,
    post: PostProcessing,
    prediction: Tensor,
    progress: bool = False,
) -> WindowCAMResult:
    """RobustCAM on ``x`` ``(N, C, *spatial)`` window by window (see the module docstring).

    ``bound`` is the target bound on the stitched ``prediction``; the caller keeps the
    model in eval mode.
    """
    from tqdm.auto import tqdm

    assert bound.mask is not None
    n = x.shape[0]
    base = method.resolve_base(bound)
    if len(layout.slices) > 1 and window_combine(base) is None:
        raise WindowError(
            f"RobustCAM's base method {base.name!r} scores whole inputs, so it cannot run window by window, and "
            f"the volume {layout.spatial} is larger than the model's window {layout.roi}; use a gradient base "
            "(hirescam, gradcam, gradcam++, xgradcam)"
        )
    padded_x = layout.pad_input(x, window.padding_mode, window.cval)
    stitched = layout.pad_like(prediction.detach())
    mask = layout.pad_like(bound.mask.to(prediction.device).bool())
    importance = layout.importance.to(prediction.device)
    norm = layout.norm().to(prediction.device)
    views = method.resolve_views(padded_x[(slice(0, 1), slice(None), *layout.slices[0])])
    # what each view's geometry leaves valid in a window: the count of a window without M
    template = _valid_count(views, layout.roi)

    accumulators: dict[str, _Accumulators] = {}
    count = torch.zeros((n, *layout.padded), dtype=torch.float32)
    largest_scale: dict[str, float] = {}
    dropped: dict[tuple[int, str], int] = {}
    jobs: list[tuple[int, tuple[slice, ...]]] = []
    for b in range(n):
        for w in layout.slices:
            if bool(mask[_at(b, w)].any()):
                jobs.append((b, w))
            else:
                count[_at(b, w)] += template * (importance / norm[w]).cpu()
    bar = tqdm(total=len(jobs), desc="RobustCAM windows", unit="window", disable=not progress, leave=False)
    try:
        for b, w in jobs:
            weights = _window_weights(bound, stitched, mask, importance, norm, b, w)
            target = WindowViewTarget(
                classes=bound.classes[b : b + 1],
                activation=bound.activation,
                mask=weights.abs().sum(dim=1) > 0,
                description=bound.description,
                region=bound.region,
                weights=weights,
            )
            patch = padded_x[(slice(b, b + 1), slice(None), *w)]
            found = method.view_maps(probe, patch, target, layers, post)
            share = float(weights.abs().sum())
            for item in found.dropped:
                dropped[(b, item["view"])] = dropped.get((b, item["view"]), 0) + 1
            window_count: Tensor | None = None
            for alias, stack in found.maps.items():
                fused, spread, seen = method.fuse_views(stack, found.valid)
                ran = [j for _, j in found.rows]
                offset = float(found.offsets[alias][0, ran].mean())
                scale = float(found.scales[alias][0, ran].mean())
                raw = torch.where(seen > 0, offset + scale * fused.double(), 0.0).float()
                if alias not in accumulators:
                    accumulators[alias] = _Accumulators(
                        torch.zeros((n, *layout.padded), dtype=torch.float32),
                        torch.zeros((n, *layout.padded), dtype=torch.float32),
                        [[_ViewAgreement() for _ in views] for _ in range(n)],
                    )
                acc = accumulators[alias]
                acc.fused[_at(b, w)] += raw[0].cpu()
                acc.spread[_at(b, w)] += (scale * spread[0]).cpu()
                largest_scale[alias] = max(largest_scale.get(alias, 0.0), scale)
                window_count = seen[0].cpu()
                if method.stability:
                    valid = found.valid.to(stack.device)
                    agreement = method.agreement(stack, valid, post.apply(fused, layout.roi), found.rows)
                    for j, (iou, rho) in enumerate(
                        zip(agreement["top_iou_per_view"][0], agreement["spearman_per_view"][0], strict=True)
                    ):
                        acc.views[b][j].add(iou, rho, share)
            if window_count is not None:
                count[_at(b, w)] += window_count * (importance / norm[w]).cpu()
            bar.update(1)
    finally:
        bar.close()

    crop = (slice(None), *layout.crop)
    count = count[crop].contiguous()
    maps: dict[str, Tensor] = {}
    uncertainty: dict[str, Tensor] = {}
    stability: dict[str, Any] = {}
    for alias in list(accumulators):
        acc = accumulators.pop(alias)
        maps[alias] = finalize(acc.fused[crop], layout.spatial, relu=post.relu, normalization=post.normalization)
        scale = largest_scale[alias]
        spread = acc.spread[crop] / scale if scale > 0 else torch.zeros_like(acc.spread[crop])
        uncertainty[alias] = spread.contiguous()
        if method.stability:
            per_view = [[agreement.mean() for agreement in sample] for sample in acc.views]
            ious = [[iou for iou, _ in sample] for sample in per_view]
            rhos = [[rho for _, rho in sample] for sample in per_view]
            stability[alias] = {
                "mean_variance": [float(v) for v in mean_variance(uncertainty[alias], count)],
                "top_iou": [_average(v) for v in ious],
                "spearman": [_average(v) for v in rhos],
                "top_fraction": method.top_fraction,
                "top_iou_per_view": ious,
                "spearman_per_view": rhos,
            }
        del acc
    method_stats = {
        "base": base.name,
        "fusion": method.fusion,
        "views": [v.describe() for v in views],
        "dropped_views": [{"sample": b, "view": v, "windows": k} for (b, v), k in dropped.items()],
        "stability": stability,
        "windowed": "views run per window; fused maps, uncertainties and counts stitched (docs/robustcam.md)",
    }
    stats = window_stats(layout, window, windows=len(layout.slices) * n, with_backward=len(jobs))
    logger.info("sliding-window RobustCAM: %d of %d windows intersect M", len(jobs), stats["windows"])
    return WindowCAMResult(
        {alias: m.to(x.device) for alias, m in maps.items()},
        bound,
        prediction,
        {
            "uncertainty": {alias: u.to(x.device) for alias, u in uncertainty.items()},
            "valid_views": {alias: count.to(x.device) for alias in maps},
        },
        stats,
        method_stats,
    )


def _valid_count(views: list[View], roi: tuple[int, ...]) -> Tensor:
    """How many views see each voxel of a window, from their geometry alone."""
    total = torch.zeros(roi, dtype=torch.float32)
    for view in views:
        _, valid = view.warp_back(torch.zeros(1, *roi))
        total += valid[0].float()
    return total


def _average(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None
