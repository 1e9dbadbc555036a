"""Sliding-window RobustCAM: the augmentation views run per window on volumes larger than the model's window.

RobustCAM explains several views of the input; on a volume larger than the model's
window the views cannot run on the whole volume at once. Here they run per window, as
the gradient methods do (:mod:`medcam.pipeline.windows`, the one window loop), and the per-window results are
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
layer; ``--window-batch`` does not apply (the views of a window are the batch), so the
stitcher takes one window per pass.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

import torch
from torch import Tensor

from medcam.core.agreement import mean_variance
from medcam.core.ops import finalize
from medcam.core.probe import Probe
from medcam.core.targets import BoundTarget
from medcam.core.windows import Job, WeightedLogits, WindowError, at
from medcam.methods.base import WindowContext, WindowMaps, WindowStitcher, window_combine
from medcam.methods.robust.views import View

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


class RobustStitcher(WindowStitcher):
    """RobustCAM's window protocol: its views run inside each window; fused maps, spreads and counts add up.

    ``method`` is the :class:`~medcam.methods.robust.RobustCAM` that made this stitcher
    (typed loosely: this module sits below the method's own module).
    """

    rows = 1  # the views of one window are the batch
    label = "RobustCAM windows"

    def __init__(self, method: Any, context: WindowContext) -> None:
        layout = context.layout
        self.method = method
        self.context = context
        self.base = method.resolve_base(context.target)
        if len(layout.slices) > 1 and window_combine(self.base) is None:
            raise WindowError(
                f"RobustCAM's base method {self.base.name!r} scores whole inputs, so it cannot run window by "
                f"window, and the volume {layout.spatial} is larger than the model's window {layout.roi}; use "
                "a gradient base (hirescam, gradcam, gradcam++, xgradcam)"
            )
        self.views: list[View] = method.resolve_views(context.first_patch)
        # what each view's geometry leaves valid in a window: the count of a window without M
        self.template = _valid_count(self.views, layout.roi)
        n = context.samples
        self.count = torch.zeros((n, *layout.padded), dtype=torch.float32)
        self.accumulators: dict[str, _Accumulators] = {}
        self.largest_scale: dict[str, float] = {}
        self.dropped: dict[tuple[int, str], int] = {}

    def _share(self, window: tuple[slice, ...]) -> Tensor:
        return (self.context.importance / self.context.norm[window]).cpu()

    def skip(self, sample: int, window: tuple[slice, ...]) -> None:
        self.count[at(sample, window)] += self.template * self._share(window)

    def add(self, probe: Probe, patches: Tensor, target: WeightedLogits, jobs: Sequence[Job]) -> None:
        method, layout, post = self.method, self.context.layout, self.context.post
        ((b, w),) = jobs
        assert target.weights is not None
        view_target = WindowViewTarget(**{f.name: getattr(target, f.name) for f in fields(target)})
        found = method.view_maps(probe, patches, view_target, self.context.layers, post)
        share = float(target.weights.abs().sum())
        for item in found.dropped:
            self.dropped[(b, item["view"])] = self.dropped.get((b, item["view"]), 0) + 1
        window_count: Tensor | None = None
        n = self.context.samples
        for alias, stack in found.maps.items():
            fused, spread, seen = method.fuse_views(stack, found.valid)
            ran = [j for _, j in found.rows]
            offset = float(found.offsets[alias][0, ran].mean())
            scale = float(found.scales[alias][0, ran].mean())
            raw = torch.where(seen > 0, offset + scale * fused.double(), 0.0).float()
            if alias not in self.accumulators:
                self.accumulators[alias] = _Accumulators(
                    torch.zeros((n, *layout.padded), dtype=torch.float32),
                    torch.zeros((n, *layout.padded), dtype=torch.float32),
                    [[_ViewAgreement() for _ in self.views] for _ in range(n)],
                )
            acc = self.accumulators[alias]
            acc.fused[at(b, w)] += raw[0].cpu()
            acc.spread[at(b, w)] += (scale * spread[0]).cpu()
            self.largest_scale[alias] = max(self.largest_scale.get(alias, 0.0), scale)
            window_count = seen[0].cpu()
            if method.stability:
                valid = found.valid.to(stack.device)
                agreement = method.agreement(stack, valid, post.apply(fused, layout.roi), found.rows)
                for j, (iou, rho) in enumerate(
                    zip(agreement["top_iou_per_view"][0], agreement["spearman_per_view"][0], strict=True)
                ):
                    acc.views[b][j].add(iou, rho, share)
        if window_count is not None:
            self.count[at(b, w)] += window_count * self._share(w)

    def finish(self) -> WindowMaps:
        method, layout, post = self.method, self.context.layout, self.context.post
        crop = (slice(None), *layout.crop)
        count = self.count[crop].contiguous()
        maps: dict[str, Tensor] = {}
        uncertainty: dict[str, Tensor] = {}
        stability: dict[str, Any] = {}
        for alias in list(self.accumulators):
            acc = self.accumulators.pop(alias)
            maps[alias] = finalize(acc.fused[crop], layout.spatial, relu=post.relu, normalization=post.normalization)
            scale = self.largest_scale[alias]
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
            "base": self.base.name,
            "fusion": method.fusion,
            "views": [v.describe() for v in self.views],
            "dropped_views": [{"sample": b, "view": v, "windows": k} for (b, v), k in self.dropped.items()],
            "stability": stability,
            "windowed": "views run per window; fused maps, uncertainties and counts stitched (docs/robustcam.md)",
        }
        extras = {"uncertainty": uncertainty, "valid_views": {alias: count for alias in maps}}
        return WindowMaps(maps, extras, method_stats)


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
