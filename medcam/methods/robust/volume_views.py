"""RobustCAM with a region base (Score-CAM, Group-CAM, Union-CAM, Fusion-CAM) on volumes larger than one window.

A region base scores whole masked volumes, so its maps do not add up window by window
and RobustCAM's per-window views (:mod:`medcam.methods.robust.windows`) do not apply.
Here each view transforms the whole volume, as RobustCAM does on an input that fits:
for every view ``v`` and sample, the base method explains ``v(X)`` with M warped into
the view, over sliding windows with the window loop's exact semantics (the sliding-window
predictor of the view; docs/methods-region-fusion.md, "Whole volumes"); the view's map
is normalised over its field, warped back, and the views are fused, with uncertainty,
valid-view counts and stability, exactly as :meth:`RobustCAM.run` fuses them. With one
window covering the volume this is RobustCAM on the volume.

Cost: one sliding-window run of the base per (sample, view). Memory: the views' maps on
the volume (views x volume per layer), as RobustCAM on a whole input keeps them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor

from medcam.core.agreement import mean_variance
from medcam.core.ops import Normalization, normalize
from medcam.core.probe import Probe
from medcam.core.windows import Job, WeightedLogits
from medcam.methods.base import CAMMethod, PostProcessing, WindowContext, WindowMaps, WindowPasses, WindowStitcher

Scale = Callable[[Tensor, Normalization], tuple[Tensor, Tensor]]


class ViewVolumeStitcher(WindowStitcher):
    """RobustCAM's views on the whole volume, each explained by the base method over windows.

    ``method`` is the :class:`~medcam.methods.robust.RobustCAM` (typed loosely: this module
    sits below it); ``scale`` its ``normalization_scale``.
    """

    label = "RobustCAM views"

    def __init__(self, method: Any, context: WindowContext, base: CAMMethod, scale: Scale) -> None:
        self.method = method
        self.context = context
        self.base = base
        self.scale = scale
        self.found = WindowMaps({})

    def add(self, probe: Probe, patches: Tensor, target: WeightedLogits, jobs: Sequence[Job]) -> None:
        raise RuntimeError("RobustCAM with a region base runs through run(), not add()")

    def run(self, passes: WindowPasses) -> None:
        method, context = self.method, self.context
        post, size, n = context.post, context.layout.spatial, context.samples
        raw = PostProcessing(post.relu, None)
        x = passes.padded_x[(slice(None), slice(None), *context.layout.crop)]
        views = method.resolve_views(x)
        bound = context.target
        rows, masks, dropped = method._rows(bound, views, n)
        aligned: dict[str, Tensor] = {}
        offsets: dict[str, Tensor] = {}
        scales: dict[str, Tensor] = {}
        valid = torch.zeros(n, len(views), *size, dtype=torch.bool)
        for i, j in rows:
            target = replace(bound.select(slice(i, i + 1)), mask=masks[(i, j)].bool())
            maps, _ = passes.explain(self.base, views[j].apply(x[i : i + 1]), target, raw)
            for alias, values in maps.items():
                if alias not in aligned:
                    aligned[alias] = torch.zeros(n, len(views), *size, dtype=values.dtype)
                    offsets[alias] = torch.zeros(n, len(views), dtype=torch.float64)
                    scales[alias] = torch.zeros(n, len(views), dtype=torch.float64)
                offset, scale = self.scale(values, post.normalization)
                back, ok = views[j].warp_back(normalize(values, post.normalization))
                aligned[alias][i, j] = back[0].cpu()
                valid[i, j] = ok[0].cpu()
                offsets[alias][i, j], scales[alias][i, j] = float(offset[0]), float(scale[0])
        fused_maps: dict[str, Tensor] = {}
        uncertainty: dict[str, Tensor] = {}
        valid_views: dict[str, Tensor] = {}
        stability: dict[str, Any] = {}
        for alias in list(aligned):
            stack = aligned.pop(alias)
            fused, std, seen = method.fuse_views(stack, valid)
            fused_maps[alias] = post.apply(fused, size)
            uncertainty[alias], valid_views[alias] = std, seen
            if method.stability:
                metrics = method.agreement(stack, valid, fused_maps[alias], rows)
                stability[alias] = {"mean_variance": [float(v) for v in mean_variance(std, seen)], **metrics}
            del stack
        stats = {
            "base": self.base.name,
            "fusion": method.fusion,
            "views": [v.describe() for v in views],
            "dropped_views": dropped,
            "stability": stability,
            "windowed": "each view of the whole volume explained by the base over windows (docs/robustcam.md)",
        }
        self.found = WindowMaps(fused_maps, {"uncertainty": uncertainty, "valid_views": valid_views}, stats)

    def finish(self) -> WindowMaps:
        return self.found
