"""Sliding-window prediction and the one sliding-window CAM loop, for volumes larger than the model's patch.

Prediction is MONAI's ``sliding_window_inference``: the stitched output is the
importance-weighted average of the window outputs (:mod:`medcam.core.windows`). A
segmentation target ``S = sum over p in M of f(Y(p))`` is explained window by window:
each window that meets M gets its exact share of ``S`` as a linear target
(:func:`~medcam.core.windows.window_weights`), one forward and one backward pass;
windows that miss M are skipped. How a method's per-window results add up is the
method's business (the window protocol, :class:`medcam.methods.base.WindowStitcher`):

* gradient methods: each window's raw map (channel sum) is upsampled to the window and
  summed on the model grid; HiResCAM is thereby stitched exactly; Grad-CAM, Grad-CAM++
  and XGrad-CAM use channel weights computed per window. ReLU and normalisation come
  after stitching. With one window covering the volume the raw map equals
  ``medcam.explain(..., relu=False, normalize=None)``.
* RobustCAM runs its augmentation views per window and stitches fused maps,
  uncertainties and valid-view counts (:mod:`medcam.methods.robust.windows`).
* a method without a stitcher (it scores whole inputs) runs once on the whole padded
  volume when it fits in one window, and otherwise stops with an error that says so.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor, nn

from medcam.core.hooks import OutputSelector, evaluation_mode
from medcam.core.ops import finalize
from medcam.core.probe import Probe
from medcam.core.targets import BoundTarget, Target
from medcam.core.windows import (
    Job,
    SlidingWindow,
    WeightedLogits,
    WindowError,
    WindowLayout,
    at,
    predict,
    window_target,
    window_weights,
)
from medcam.errors import UserError
from medcam.methods.base import CAMMethod, PostProcessing, WindowContext, WindowStitcher, window_combine

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class WindowCAMResult:
    """Maps ``(N, *spatial)`` per layer alias on ``x``'s grid, the bound target and the stitched output."""

    maps: dict[str, Tensor]
    target: BoundTarget
    output: Tensor
    extras: dict[str, dict[str, Tensor]] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)  # windows: counts, size, overlap, blending
    method_stats: dict[str, Any] = field(default_factory=dict)  # what the method reports


def window_stats(layout: WindowLayout, window: SlidingWindow, *, windows: int, with_backward: int) -> dict[str, Any]:
    """The ``stats`` of a decomposed (window by window) CAM: how many windows needed a backward pass."""
    return {
        "windows": windows,
        "windows_with_backward": with_backward,
        "roi_size": list(layout.roi),
        "overlap": window.overlap,
        "blend": window.mode,
        "decomposed": True,
    }


def sliding_window_cam(
    model: nn.Module,
    x: Tensor,
    method: CAMMethod,
    target: Target | BoundTarget,
    layers: Mapping[str, str],
    window: SlidingWindow,
    *,
    post: PostProcessing | None = None,
    output: OutputSelector = None,
    prediction: Tensor | None = None,
    progress: bool = False,
) -> WindowCAMResult:
    """Explain ``target`` on the stitched prediction of ``x`` ``(N, C, *spatial)`` window by window.

    ``prediction`` (the stitched output from :func:`predict`) is reused when given.
    Memory is bounded by one window batch plus what the method stitches on the model grid.
    """
    post = post or PostProcessing()
    if prediction is None:
        prediction = predict(model, x, window, output=output, progress=False)
    bound = target if isinstance(target, BoundTarget) else target.bind(prediction)
    if not bound.is_segmentation:
        raise UserError("sliding-window CAM explains segmentation targets; for a classifier use medcam.explain")
    layout = window.layout(tuple(x.shape[2:]))
    with evaluation_mode(model):
        probe = Probe(model, output)
        padded_x = layout.pad_input(x, window.padding_mode, window.cval)
        importance = layout.importance.to(prediction.device)
        norm = layout.norm().to(prediction.device)
        first = padded_x[(slice(0, 1), slice(None), *layout.slices[0])]
        context = WindowContext(layout, x.shape[0], bound, layers, post, importance, norm, first)
        stitcher = method.window_stitcher(context)
        if stitcher is None:
            return _whole_volume(probe, x, method, bound, layers, layout, post, prediction)
        return _windows(probe, padded_x, stitcher, bound, layout, window, context, prediction, progress)


def _whole_volume(
    probe: Probe,
    x: Tensor,
    method: CAMMethod,
    bound: BoundTarget,
    layers: Mapping[str, str],
    layout: WindowLayout,
    post: PostProcessing,
    prediction: Tensor,
) -> WindowCAMResult:
    """Run a method that needs the whole input at once, if the volume fits in one window."""
    if len(layout.slices) > 1:
        raise WindowError(
            f"method {method.name!r} scores whole inputs, so it cannot be computed window by window, and the "
            f"volume {layout.spatial} is larger than the model's window {layout.roi}; use a gradient method "
            "(gradcam, hirescam, gradcam++, xgradcam) or a smaller volume"
        )
    padded_x = layout.pad_input(x)
    assert bound.mask is not None
    padded_target = replace(bound, mask=layout.pad_like(bound.mask))
    raw = method.run(probe, padded_x, padded_target, layers, PostProcessing(post.relu, None))
    crop = (slice(None), *layout.crop)
    maps = {
        alias: finalize(m[crop], layout.spatial, relu=False, normalization=post.normalization)
        for alias, m in raw.maps.items()
    }
    extras = {name: {alias: t[crop] for alias, t in per.items()} for name, per in raw.extras.items()}
    stats = {"windows": 1, "windows_with_backward": 1, "roi_size": list(layout.roi), "decomposed": False}
    return WindowCAMResult(maps, bound, prediction, extras, stats, dict(raw.stats))


def _windows(
    probe: Probe,
    padded_x: Tensor,
    stitcher: WindowStitcher,
    bound: BoundTarget,
    layout: WindowLayout,
    window: SlidingWindow,
    context: WindowContext,
    prediction: Tensor,
    progress: bool,
) -> WindowCAMResult:
    """The window loop: skip the windows that miss M, hand the others to the method in batches."""
    from tqdm.auto import tqdm

    assert bound.mask is not None
    n = context.samples
    stitched = layout.pad_like(prediction.detach())
    mask = layout.pad_like(bound.mask.to(prediction.device).bool())  # bool: 1 byte per voxel
    jobs: list[Job] = []
    for b in range(n):
        for w in layout.slices:
            if bool(mask[at(b, w)].any()):
                jobs.append((b, w))
            else:
                stitcher.skip(b, w)
    rows = min(stitcher.rows, window.batch_size) if stitcher.rows else window.batch_size
    batches = [jobs[i : i + rows] for i in range(0, len(jobs), rows)]
    bar = tqdm(total=len(jobs), desc=stitcher.label, unit="window", disable=not progress, leave=False)
    try:
        for batch in batches:
            patches = torch.cat([padded_x[(slice(b, b + 1), slice(None), *w)] for b, w in batch])
            weights = torch.cat(
                [window_weights(bound, stitched, mask, context.importance, context.norm, b, w) for b, w in batch]
            )
            classes = torch.stack([bound.classes[b] for b, _ in batch])
            target: WeightedLogits = window_target(bound, weights, classes)
            stitcher.add(probe, patches, target, batch)
            bar.update(len(batch))
    finally:
        bar.close()
    found = stitcher.finish()
    device = padded_x.device
    stats = window_stats(layout, window, windows=len(layout.slices) * n, with_backward=len(jobs))
    logger.info("%s: %d of %d windows intersect M", stitcher.label, len(jobs), stats["windows"])
    return WindowCAMResult(
        {alias: m.to(device) for alias, m in found.maps.items()},
        bound,
        prediction,
        {name: {alias: t.to(device) for alias, t in per.items()} for name, per in found.extras.items()},
        stats,
        found.method_stats,
    )


__all__ = [
    "SlidingWindow",
    "WindowCAMResult",
    "WindowError",
    "WindowLayout",
    "predict",
    "sliding_window_cam",
    "window_combine",
    "window_stats",
]
