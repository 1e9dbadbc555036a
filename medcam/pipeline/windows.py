"""Sliding-window prediction and the one sliding-window CAM loop, for volumes larger than the model's patch.

Prediction is MONAI's ``sliding_window_inference``: the stitched output is the
importance-weighted average of the window outputs (:mod:`medcam.core.windows`); when the
target's score is linear in the output and M is known without the prediction, the loop
stitches it from the CAM pass's own window outputs instead
(:mod:`medcam.pipeline.window_prediction`). A
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
  uncertainties and valid-view counts (:mod:`medcam.methods.robust.windows`); with a
  region base each view of the whole volume runs through this loop again
  (:mod:`medcam.methods.robust.volume_views`, :meth:`WindowPasses.explain`).
* region and ensemble methods score whole masked volumes with the sliding-window
  predictor restricted to the windows that meet M (:class:`MaskedVolumeScorer`), after a
  clean pass over every window (:mod:`medcam.methods.region_windows`).
* a method without a stitcher (it scores whole inputs) runs once on the whole padded
  volume when it fits in one window, and otherwise stops with an error that says so.

Why one module of this size: the loop, the passes it offers the stitchers and the
masked-volume scorer share one call's state (the padded input, M, the window jobs);
apart, each would reach into the others' internals.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Hashable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor, nn

from medcam.core.hooks import OutputSelector, evaluation_mode
from medcam.core.ops import finalize
from medcam.core.probe import Probe
from medcam.core.targets import BoundTarget, SegmentationTarget, Target
from medcam.core.windows import (
    Job,
    SlidingWindow,
    WeightedLogits,
    Window,
    WindowError,
    WindowLayout,
    at,
    predict,
    window_target,
    window_weights,
)
from medcam.errors import UserError
from medcam.methods.base import (
    COST_LOGGER,
    CAMMethod,
    PostProcessing,
    WindowContext,
    WindowPasses,
    WindowScorer,
    WindowStitcher,
    window_combine,
)
from medcam.pipeline.window_prediction import (
    FROM_CAM_WINDOWS,
    SEPARATE_PASS,
    OwnPrediction,
    WindowProbe,
    own_prediction,
)

logger = logging.getLogger(__name__)

# voxels of masked windows per forward pass of a region method (2^22: 4 windows of 96^3, 16 of 64^3)
MAX_BATCH_VOXELS = 1 << 22


@dataclass(frozen=True)
class WindowCAMResult:
    """Maps ``(N, *spatial)`` per layer alias on ``x``'s grid, the bound target and the stitched output."""

    maps: dict[str, Tensor]
    target: BoundTarget
    output: Tensor
    extras: dict[str, dict[str, Tensor]] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)  # windows: counts, size, overlap, blending
    method_stats: dict[str, Any] = field(default_factory=dict)  # what the method reports
    prediction_seconds: float = 0.0  # spent here on passes for the prediction alone


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
    Without it, the prediction is stitched from the CAM pass's own window outputs when
    that is exact (:func:`own_prediction`): the window weights of a score linear in the
    output do not depend on the output, so no separate prediction pass runs first; the
    windows that miss M run one forward without gradients. A stitcher that does not run
    the windows of M through :meth:`WindowPasses.target_batches` (region and ensemble
    methods) or a method without one gets a separate prediction pass, as with a
    prediction-dependent M. Both passes run in the caller's precision (autocast).
    Memory is bounded by one window batch plus what the method stitches on the model grid.
    """
    post = post or PostProcessing()
    layout = window.layout(tuple(x.shape[2:]))
    spent = 0.0
    with evaluation_mode(model):
        probe = WindowProbe(model, output)
        padded_x = layout.pad_input(x, window.padding_mode, window.cval)
        device = x.device if prediction is None else prediction.device
        importance = layout.importance.to(device)
        norm = layout.norm().to(device)
        first = padded_x[(slice(0, 1), slice(None), *layout.slices[0])]
        own = None
        on_grid = False
        if prediction is None and own_prediction(target):
            own = OwnPrediction(probe, layout, x.shape[0], norm, padded_x.dtype)
            if isinstance(target, BoundTarget):
                bound = target
            else:
                assert isinstance(target, SegmentationTarget)  # own_prediction says so
                bound = target.bind_on_grid(x.shape[0], layout.spatial, device)
                on_grid = True
        else:
            if prediction is None:
                start = time.perf_counter()
                prediction = predict(model, x, window, output=output, progress=False)
                spent += time.perf_counter() - start
            bound = target if isinstance(target, BoundTarget) else target.bind(prediction)
        if not bound.is_segmentation:
            raise UserError("sliding-window CAM explains segmentation targets; for a classifier use medcam.explain")
        context = WindowContext(layout, x.shape[0], bound, layers, post, importance, norm, first)
        stitcher = method.window_stitcher(context)
        if own is not None and (stitcher is None or type(stitcher).run is not WindowStitcher.run):
            # its passes are not one per batch of windows meeting M (target_batches): predict separately
            start = time.perf_counter()
            prediction = predict(model, x, window, output=output, progress=False)
            spent += time.perf_counter() - start
            own = None
        if stitcher is None:
            assert prediction is not None
            found = _whole_volume(probe, x, method, bound, layers, layout, post, prediction)
        else:
            found = _windows(probe, padded_x, stitcher, bound, layout, window, context, prediction, own, progress)
        if on_grid and own is None:  # bound without an output, predicted separately: bind's checks on it
            assert isinstance(target, SegmentationTarget)
            found = replace(found, target=target.bind(found.output))  # the same M: it is given
        return replace(found, prediction_seconds=found.prediction_seconds + spent)


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
    stats = {
        "windows": 1,
        "windows_with_backward": 1,
        "roi_size": list(layout.roi),
        "decomposed": False,
        "prediction": SEPARATE_PASS,
    }
    return WindowCAMResult(maps, bound, prediction, extras, stats, dict(raw.stats))


def _windows(
    probe: WindowProbe,
    padded_x: Tensor,
    stitcher: WindowStitcher,
    bound: BoundTarget,
    layout: WindowLayout,
    window: SlidingWindow,
    context: WindowContext,
    prediction: Tensor | None,
    own: OwnPrediction | None,
    progress: bool,
) -> WindowCAMResult:
    """The window loop: skip the windows that miss M, let the method run its passes over the others.

    With ``own`` (and no ``prediction``) the loop stitches the prediction: the windows
    that miss M run forward without gradients first, then each batch of windows meeting M
    gives the output of the stitcher's own pass on it (:mod:`medcam.pipeline.window_prediction`).
    """
    assert bound.mask is not None
    n = context.samples
    mask = layout.pad_like(bound.mask.to(context.norm.device).bool())  # bool: 1 byte per voxel
    jobs: list[Job] = []
    missing: list[Job] = []
    for b in range(n):
        for w in layout.slices:
            if bool(mask[at(b, w)].any()):
                jobs.append((b, w))
            else:
                stitcher.skip(b, w)
                missing.append((b, w))
    passes = _Passes(probe, padded_x, bound, layout, window, context, prediction, mask, jobs, progress, own)
    if own is not None:
        own.forward_only(missing, passes.patches, window.batch_size, progress)
    stitcher.run(passes)
    found = stitcher.finish()
    stats = window_stats(layout, window, windows=len(layout.slices) * n, with_backward=len(jobs))
    seconds = 0.0
    if own is not None:
        prediction = own.result()
        stats["prediction"] = FROM_CAM_WINDOWS
        stats["windows_forward_only"] = own.forwards
        seconds = own.seconds
    else:
        stats["prediction"] = SEPARATE_PASS
    logger.info("%s: %d of %d windows intersect M", stitcher.label, len(jobs), stats["windows"])
    out = padded_x.device
    assert prediction is not None
    return WindowCAMResult(
        {alias: m.to(out) for alias, m in found.maps.items()},
        bound,
        prediction,
        {name: {alias: t.to(out) for alias, t in per.items()} for name, per in found.extras.items()},
        stats,
        found.method_stats,
        seconds,
    )


class _Passes(WindowPasses):
    """The loop's passes over one call's windows (:class:`~medcam.methods.base.WindowPasses`)."""

    def __init__(
        self,
        probe: WindowProbe,
        padded_x: Tensor,
        bound: BoundTarget,
        layout: WindowLayout,
        window: SlidingWindow,
        context: WindowContext,
        prediction: Tensor | None,
        mask: Tensor,
        jobs: list[Job],
        progress: bool,
        own: OwnPrediction | None = None,
    ) -> None:
        self.probe = probe
        self.padded_x = padded_x
        self.bound = bound
        self.layout = layout
        self.window = window
        self.context = context
        self.prediction = prediction
        self.mask = mask
        self.jobs = jobs
        self.progress = progress
        self.meeting = [[w for b, w in jobs if b == sample] for sample in range(context.samples)]
        self.own = own  # the prediction stitched from the windows' own outputs

    def patches(self, batch: list[Job]) -> Tensor:
        """The padded input on windows ``batch``, one row per window."""
        return torch.cat([self.padded_x[(slice(b, b + 1), slice(None), *w)] for b, w in batch])

    def target_batches(self, rows: int | None, label: str) -> Iterator[tuple[Tensor, WeightedLogits, list[Job]]]:
        from tqdm.auto import tqdm

        bound, context, jobs, own = self.bound, self.context, self.jobs, self.own
        if not jobs:
            return
        if own is None:
            assert self.prediction is not None
            stitched = self.layout.pad_like(self.prediction.detach())
        else:  # the score is linear: df/dY is the same at every output
            stitched = own.shape_only(self.patches(jobs[:1]))
            bound.check_channels(stitched.shape[1])  # bound without an output: its classes checked here
        size = min(rows, self.window.batch_size) if rows else self.window.batch_size
        batches = [jobs[i : i + size] for i in range(0, len(jobs), size)]
        bar = tqdm(total=len(jobs), desc=label, unit="window", disable=not self.progress, leave=False)
        try:
            for batch in batches:
                patches = self.patches(batch)
                weights = torch.cat(
                    [
                        window_weights(bound, stitched, self.mask, context.importance, context.norm, b, w)
                        for b, w in batch
                    ]
                )
                classes = torch.stack([bound.classes[b] for b, _ in batch])
                target: WeightedLogits = window_target(bound, weights, classes)
                if own is not None:
                    own.watch(patches)
                yield patches, target, batch
                if own is not None:
                    own.take(patches, batch)
                bar.update(len(batch))
        finally:
            if own is not None:
                own.watch(None)
            bar.close()

    def clean_batches(self) -> Iterator[tuple[Tensor, list[Job]]]:
        every = [(b, w) for b in range(self.context.samples) for w in self.layout.slices]
        size = self.window.batch_size
        for i in range(0, len(every), size):
            batch = every[i : i + size]
            yield self.patches(batch), batch

    def explain(
        self, method: CAMMethod, x: Tensor, target: BoundTarget, post: PostProcessing
    ) -> tuple[dict[str, Tensor], dict[str, Any]]:
        probe = self.probe
        found = sliding_window_cam(
            probe.model, x, method, target, self.context.layers, self.window, post=post, output=probe.selector,
            progress=self.progress,
        )  # fmt: skip
        return found.maps, found.method_stats

    def pad(self, image: Tensor) -> Tensor:
        return self.layout.pad_input(image, self.window.padding_mode, self.window.cval)

    def scorer(self, *, batch_size: int, precision: str, total: int, label: str) -> WindowScorer:
        if self.window.padding_mode != "constant" and any(self.layout.pad):
            raise UserError(
                "region methods over sliding windows need padding_mode='constant' (a masked volume is padded "
                "like the input); use the default padding"
            )
        return MaskedVolumeScorer(self, batch_size=batch_size, precision=precision, total=total, label=label)


class MaskedVolumeScorer(WindowScorer):
    """The sliding-window predictor on masked volumes, restricted to the windows that meet M.

    For a masked volume X' the stitched logits on M are
    ``Y'(p) = sum over windows w meeting M of imp_w(p) y_w(X')(p) / norm(p)``: a window
    that misses M has no weight on M, so it is never run. Each window's voxels of M are
    indexed once (their place in M and their blending weight); rows of many masked
    volumes share batches of ``batch_size`` windows; each volume's logits on M are
    summed as its rows come back and turned into the target probability (mean over M)
    once all its windows have run.
    """

    def __init__(self, passes: _Passes, *, batch_size: int, precision: str, total: int, label: str) -> None:
        from tqdm.auto import tqdm

        from medcam.methods.region import autocast_dtype, check_region_options

        check_region_options(batch_size, precision, "auto")
        roi = math.prod(passes.layout.roi)
        # activation memory grows with the voxels of a batch: big windows (96^3) take fewer rows per forward
        self.batch_size = min(batch_size, max(1, MAX_BATCH_VOXELS // roi))
        if self.batch_size < batch_size:
            logger.info(
                "%s: %d masked windows per forward (batch_size=%d; windows of %d voxels)",
                label,
                self.batch_size,
                batch_size,
                roi,
            )
        self.passes = 0
        self.forwards = 0
        self.seconds = 0.0
        self._owner = passes
        self.dtype = autocast_dtype(passes.probe.device, precision)
        self._index: dict[Hashable, tuple[Tensor, Tensor, Tensor]] = {}
        self._everywhere: dict[int, Tensor] = {}
        self._sizes = [int(passes.mask[b].sum()) for b in range(passes.context.samples)]
        self._pending: list[tuple[int, Hashable, Window, Tensor]] = []
        self._sums: dict[Hashable, Tensor] = {}
        self._seen: dict[Hashable, int] = {}
        self._done: dict[Hashable, float] = {}
        self._label = label
        self._bar = tqdm(total=total, desc=label, unit="pass", disable=not passes.progress, leave=False)

    def _where(self, sample: int, window: Window) -> tuple[Tensor, Tensor, Tensor]:
        """Flat voxel indices of M inside ``window``, their positions in M's list, their blending weights."""
        key = (sample, *(int(s.start) for s in window))
        if key not in self._index:
            owner = self._owner
            inside = owner.mask[at(sample, window)].flatten().nonzero().flatten()
            spatial = owner.layout.padded
            coords = torch.stack(torch.unravel_index(inside, tuple(int(s.stop - s.start) for s in window)), dim=1)
            starts = torch.tensor([int(s.start) for s in window], device=coords.device)
            flat = torch.tensor(0, device=coords.device)
            for axis, size in enumerate(spatial):
                flat = flat * size + coords[:, axis] + starts[axis]
            everywhere = owner.mask[sample].flatten().nonzero().flatten()
            place = torch.searchsorted(everywhere, flat)
            share = (owner.context.importance / owner.context.norm[window]).flatten()[
                inside.to(owner.context.norm.device)
            ]
            self._index[key] = (inside, place, share.float())
        return self._index[key]

    def add(self, sample: int, key: Hashable, window: Window, patch: Tensor) -> None:
        self._pending.append((sample, key, window, patch))
        if len(self._pending) >= self.batch_size:
            self._run()

    def _run(self) -> None:
        import time
        from contextlib import nullcontext

        rows, self._pending = self._pending[: self.batch_size], self._pending[self.batch_size :]
        if not rows:
            return
        probe = self._owner.probe
        start = time.perf_counter()
        batch = torch.stack([patch for _, _, _, patch in rows]).to(probe.device)
        autocast = nullcontext() if self.dtype is None else torch.autocast(probe.device.type, dtype=self.dtype)
        with torch.inference_mode(), autocast:
            logits = probe.forward(batch).float()
        self.seconds += time.perf_counter() - start
        self.forwards += 1
        self.passes += len(rows)
        if self.forwards == 1 and self._bar.total:
            per_row = self.seconds / len(rows)
            logging.getLogger(COST_LOGGER).info(
                "%s: %.4f s per masked window on the first batch of %d; about %.0f s for %d passes",
                self._label,
                per_row,
                len(rows),
                per_row * self._bar.total,
                self._bar.total,
            )
        for row, (sample, key, window, _) in enumerate(rows):
            inside, place, share = self._where(sample, window)
            if key not in self._sums:
                self._sums[key] = torch.zeros(logits.shape[1], self._sizes[sample], device=logits.device)
                self._seen[key] = 0
            values = logits[row].flatten(1)[:, inside.to(logits.device)] * share.to(logits.device)
            self._sums[key].index_add_(1, place.to(logits.device), values)
            self._seen[key] += 1
            if self._seen[key] == len(self._owner.meeting[sample]):
                stitched = self._sums.pop(key)
                del self._seen[key]
                target = self._owner.bound.select(slice(sample, sample + 1))
                self._done[key] = float(target.probability_map(stitched[None]).mean())
        self._bar.update(len(rows))

    def scores(self) -> dict[Hashable, float]:
        while self._pending:
            self._run()
        done, self._done = self._done, {}
        return done

    def close(self) -> None:
        self._bar.close()


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
